"""The run report in words: `report.md` and the terminal summary, from a `build_report` dict.

Every quality figure is shown with its bootstrap interval, and every claim with its evidence: a target
says met, missed or undecided (the interval straddles the threshold; a difference that is not
significant), never only the sign of a point estimate.
"""

from __future__ import annotations

import numpy as np

VERDICT_WORDS = {
    "met": "met",
    "missed": "**missed**",
    "undecided": "undecided",
    "not measured": "not measured",
}
DIFFERENCE_WORDS = {
    "met": "met: significantly better",
    "missed": "**missed**: significantly worse",
    "undecided": "not significant",
    "not measured": "not measured",
}


def format_value(value, kind="float"):
    """A report figure as text: `kind` is float, int, mb, mb2, ms, ms2, s, signed, x or ratio; `–` for None.

    Example:
    ```python
    format_value(5_190_000, "mb2"), format_value(3.875, "x")  # ('5.19 MB', '3.88x')
    ```
    """
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "–"
    if kind == "int":
        return f"{int(value):,}"
    if kind == "mb":
        return f"{value / 1e6:.1f} MB"
    if kind == "mb2":
        return f"{value / 1e6:.2f} MB"
    if kind == "ms":
        return f"{value:.1f}"
    if kind == "ms2":
        return f"{value:.2f}"
    if kind == "x":
        return f"{value:.2f}x"
    if kind == "ratio":
        return f"{value:.3f}"
    if kind == "s":
        return f"{value:.0f}"
    if kind == "signed":
        return f"{value:+.4f}"
    return f"{value:.4f}"


_fmt = format_value


def _ci_name(report):
    return f"{round(100 * report['statistics']['confidence'])}% CI"


def _interval(interval, signed=False):
    """`0.759–0.810` (three decimals), or `–`."""
    if not interval or interval[0] is None:
        return "–"
    f = "{:+.3f}" if signed else "{:.3f}"
    return f"{f.format(interval[0])}–{f.format(interval[1])}"


def with_interval(value, interval, signed=False, label=None):
    """`0.7850 (0.759–0.810)`, or with `label` `0.7850 (95% CI 0.759–0.810)`; `–` without a value.

    Example:
    ```python
    with_interval(0.785, (0.759, 0.81), label="95% CI")  # '0.7850 (95% CI 0.759–0.810)'
    ```
    """
    if value is None:
        return "–"
    prefix = f"{label} " if label and interval else ""
    return f"{_fmt(value, 'signed' if signed else 'float')} ({prefix}{_interval(interval, signed)})"


def _spread(s, signed=False):
    if not s or s.get("mean") is None:
        return "–"
    mean = f"{s['mean']:+.4f}" if signed else f"{s['mean']:.4f}"
    return f"{mean} ± {s['sd']:.4f}" if s.get("sd") is not None else mean


COLUMNS = [
    ("precision", "precision", "float"),
    ("recall", "recall", "float"),
    ("layers", "layers", "int"),
    ("parameters", "parameters", "int"),
    ("SavedModel", "savedmodel_bytes", "mb"),
    ("int8 .tflite", "tflite.dynamic_int8.size_bytes", "mb2"),
    ("int8 LiteRT ms (b=1, 1 thread)", "tflite.dynamic_int8.latency_ms.1", "ms2"),
    ("Keras ms (b=1)", "latency_ms", "ms"),
    ("examples/s", "examples_per_s", "ms"),
    ("train s", "training_seconds", "s"),
]
"""The comparison table: (header, dotted key of a model entry, format). Sizes and latencies of the same
format in every row (the dynamic-int8 `.tflite` of every model; Keras float32)."""


def lookup(entry, key):
    """The value at a dotted key of a report entry (`"tflite.dynamic_int8.size_bytes"`), or None.

    Example:
    ```python
    lookup({"tflite": {"float32": {"size_bytes": 9}}}, "tflite.float32.size_bytes")  # 9
    ```
    """
    value = entry
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def table_rows(report):
    """The comparison table as rows of strings (header first); intervals and seeds in their cells.

    Example:
    ```python
    table_rows(build_report("saved_models/demo"))[0][:3]  # ['model', 'accuracy (95% CI)', 'F1 (95% CI)']
    ```
    """
    ci = _ci_name(report)
    seeds = report.get("seeds") or {}
    spread = (seeds.get("models") or {}) if seeds.get("seed_values") else {}
    header = ["model", f"accuracy ({ci})", f"F1 ({ci})"]
    if spread:
        header.append(f"accuracy, {seeds['count']} seeds (mean ± sd)")
    rows = [header + [name for name, _, _ in COLUMNS]]
    for role, entry in report["models"].items():
        row = [
            entry["role"],
            with_interval(entry.get("accuracy"), entry.get("accuracy_interval")),
            with_interval(entry.get("f1"), entry.get("f1_interval")),
        ]
        if spread:
            row.append(_spread(spread.get(role, {}).get("accuracy")) if role in spread else "one run")
        rows.append(row + [_fmt(lookup(entry, key), kind) for _, key, kind in COLUMNS])
    return rows


def target_text(target):
    """`name >= threshold` (its `direction`: `>` for a gain that must be positive, `<=` for a size)."""
    sign = target.get("direction") or (">" if target["threshold"] == 0.0 else ">=")
    return f"{target['name']} {sign} {target['threshold']}"


def target_line(target, ci):
    """One target with its value, interval, verdict and evidence.

    Example:
    ```python
    target_line(report["targets"][0], "95% CI")  # 'teacher accuracy >= 0.85: 0.8030 (95% CI ...): ...'
    ```
    """
    difference = target["threshold"] == 0.0
    words = (DIFFERENCE_WORDS if difference else VERDICT_WORDS)[target.get("verdict") or "not measured"]
    if target.get("interval"):
        value = with_interval(target["value"], target.get("interval"), signed=difference, label=ci)
    else:
        value = _fmt(target["value"], "ratio")
    return f"{target_text(target)}: {value}: {words} ({target.get('evidence')})"


def _test_line(test, a, b):
    if not test:
        return None
    verdict = "significant" if test["significant"] else "not significant"
    return (
        f"exact McNemar p = {test['p_value']:.3g}, {verdict} at {test['significance_level']:g} "
        f"({test['only_a_right']} examples only the {a} gets right, {test['only_b_right']} only the {b})"
    )


def _comparison_lines(c, ci, retention="accuracy ratio (student / teacher)"):
    ratio = with_interval(c.get("student_accuracy_ratio"), c.get("student_accuracy_ratio_interval"), label=ci)
    lines = [f"- {retention}: {ratio}"]
    for other, title in (("baseline", "label-only student"), ("teacher", "teacher")):
        value = c.get(f"student_minus_{other}_accuracy")
        if value is None:
            continue
        interval = c.get(f"student_minus_{other}_accuracy_interval")
        line = f"- distilled student minus {title} accuracy: {with_interval(value, interval, True, ci)}"
        test = _test_line(c.get("tests", {}).get(f"student_vs_{other}"), "distilled student", title)
        lines.append(line + (f"; {test}" if test else ""))
    return lines


def _seed_lines(seeds):
    if not seeds:
        return []
    lines = ["", f"## Seeds ({seeds['count']})", ""]
    if not seeds.get("seed_values"):
        return lines + [f"- {seeds['status']}"]
    values = ", ".join(str(s) for s in seeds["seed_values"])
    lines += [
        f"The distilled and the label-only student were each trained with {seeds['count']} seeds "
        f"({values}; the first is the run's own) from the same teacher and encoder initialisation; "
        f"test-split figures, mean ± sample standard deviation:",
        "",
        "| model | accuracy | F1 | accuracy per seed |",
        "|---|---|---|---|",
    ]
    for role, title in (("student", "distilled student"), ("baseline", "label-only student")):
        m = seeds["models"].get(role, {})
        if not (m.get("accuracy") or {}).get("n"):
            continue
        per_seed = ", ".join(_fmt(v) for v in m["accuracy"]["values"])
        lines.append(f"| {title} | {_spread(m['accuracy'])} | {_spread(m['f1'])} | {per_seed} |")
    diff = seeds["student_minus_baseline_accuracy"]
    if diff.get("n"):
        ps = ", ".join("–" if r["p_value"] is None else f"{r['p_value']:.3g}" for r in seeds["per_seed"])
        lines += [
            "",
            f"- distilled minus label-only accuracy: {_spread(diff, signed=True)}; the distilled student is "
            f"ahead in {seeds['student_wins']} of {diff['n']} seeds (McNemar p per seed: {ps})",
        ]
    ratio = seeds.get("student_accuracy_ratio") or {}
    if ratio.get("n"):
        lines.append(f"- distilled student / teacher accuracy: {_spread(ratio)}")
    if seeds.get("status") != "complete":
        lines.append(f"- {seeds['status']}")
    return lines


def _mapping_text(mapping):
    return ", ".join(f"{k} → {v['label']} ({v['examples']})" for k, v in (mapping or {}).items())


def _test_set_lines(report, ci):
    sets = report.get("test_sets") or {}
    if not sets:
        return []
    lines = [
        "",
        "## Other test sets",
        "",
        "Labelled files scored with `kd-tf evaluate RUN_DIR --test-file FILE`; on text from another source, "
        "the student / teacher accuracy ratio is the cross-domain retention.",
    ]
    for name, entry in sets.items():
        lines += [
            "",
            f"### {name}",
            "",
            f"`{entry.get('file')}` ({entry.get('format')}, {entry.get('examples')} examples; labels "
            f"{_mapping_text(entry.get('label_mapping'))}"
            + (f"; scored {entry['created']})" if entry.get("created") else ")"),
            "",
            f"| model | accuracy ({ci}) | F1 ({ci}) | agreement with teacher |",
            "|---|---|---|---|",
        ]
        statuses = []
        for model in entry["models"].values():
            accuracy = with_interval(model.get("accuracy"), model.get("accuracy_interval"))
            f1 = with_interval(model.get("f1"), model.get("f1_interval"))
            agreement = _fmt(model.get("agreement_with_teacher"))
            lines.append(f"| {model['role']} | {accuracy} | {f1} | {agreement} |")
            if model.get("status"):
                statuses.append(f"- **{model['role']}**: {model['status']}")
        lines += [""] + statuses
        lines += _comparison_lines(
            entry["comparison"], ci, "cross-domain retention (student / teacher accuracy)"
        )
    return lines


def like_for_like_lines(report):
    """The "Size and speed, like for like" section: every model's `.tflite` files, ratios of equal formats.

    Example:
    ```python
    print("\n".join(like_for_like_lines(build_report("saved_models/demo"))))
    ```
    """
    models = {r: e for r, e in report["models"].items() if e.get("tflite")}
    if not models:
        return []
    seq = next(iter(models.values())).get("tflite_seq_length")
    lines = [
        "",
        "## Size and speed, like for like",
        "",
        f"Every model converted to the same `.tflite` formats (sequence length {seq}, builtin ops, no "
        f"metadata) and timed at batch 1 in LiteRT, the models taking turns (each figure the best round "
        f"median). A ratio only ever compares two files of the same format: float32 with float32, "
        f"dynamic int8 with dynamic int8.",
        "",
        "| model | float32 .tflite | int8 .tflite | float32 ms (1 / 2 threads) | int8 ms (1 / 2 threads) | "
        "int8 CPU ms (1 thread) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for entry in models.values():
        f32, int8 = entry["tflite"].get("float32", {}), entry["tflite"].get("dynamic_int8", {})
        lines.append(
            f"| {entry['role']} | {_fmt(f32.get('size_bytes'), 'mb2')} | "
            f"{_fmt(int8.get('size_bytes'), 'mb2')} | {_threads(f32)} | {_threads(int8)} | "
            f"{_fmt(lookup(int8, 'cpu_ms.1'), 'ms2')} |"
        )
    ratios = report["comparison"].get("like_for_like") or {}
    if ratios:
        lines += [
            "",
            "| teacher against | format | bytes (student / teacher) | speed-up (1 / 2 threads) | "
            "speed-up, CPU time (1 thread) |",
            "|---|---|---:|---:|---:|",
        ]
        for role, by_variant in ratios.items():
            for variant, r in by_variant.items():
                speedup = r.get("speedup") or {}
                lines.append(
                    f"| {report['models'][role]['role']} | {variant} | "
                    f"{_fmt(r.get('size_ratio'), 'ratio')} | "
                    f"{_fmt(speedup.get('1'), 'x')} / {_fmt(speedup.get('2'), 'x')} | "
                    f"{_fmt(lookup(r, 'cpu_speedup.1'), 'x')} |"
                )
    return lines


def _threads(figures):
    latency = figures.get("latency_ms") or {}
    return f"{_fmt(latency.get('1'), 'ms2')} / {_fmt(latency.get('2'), 'ms2')}"


def render_markdown(report):
    """`report.md`: the table, the targets, the comparison, seeds, other test sets, plots, timings.

    Example:
    ```python
    open("report.md", "w").write(render_markdown(build_report("saved_models/demo")))
    ```
    """
    rows = table_rows(report)
    st, ci = report["statistics"], _ci_name(report)
    lines = [
        f"# Distillation report: {report['run_name']}",
        "",
        f"Created {report['created']}. Test set: {report['data']['sizes'].get('test', '?')} "
        f"held-out examples ({report['data']['source']}, sequence length "
        f"{report['data']['seq_length']}); every quality figure is recomputed from "
        f"`predictions/*.npz`. Intervals: {ci}, percentile bootstrap over the test examples "
        f"({st['resamples']:,} resamples, seed {st['seed']}, the same resamples for every model). "
        f"Differences between two models: exact McNemar test on the same examples, significant when "
        f"p < {st['significance_level']:g}.",
        "",
        "| " + " | ".join(rows[0]) + " |",
        "|" + "|".join("---" for _ in rows[0]) + "|",
    ]
    lines += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    statuses = [(e["role"], e["status"]) for e in report["models"].values() if e.get("status")]
    if statuses:
        lines += [""] + [f"- **{role}**: {status}" for role, status in statuses]
    c = report["comparison"]
    lines += ["", "## Targets", ""]
    lines += [f"- {target_line(t, ci)}" for t in report["targets"]]
    lines += ["", "## Student against teacher", ""] + _comparison_lines(c, ci)
    lines += [
        f"- parameters kept (student / teacher): {_fmt(c.get('parameter_ratio'), 'ratio')}",
        f"- Keras batch-1 CPU speed-up (teacher / student latency, both float32): "
        f"{_fmt(c.get('keras_speedup'), 'x')}",
        f"- layers kept: {_fmt(c.get('layer_ratio'))}",
    ]
    agree = {
        e["role"]: e.get("agreement_with_teacher") for r, e in report["models"].items() if r != "teacher"
    }
    if agree:
        lines.append(
            "- agreement with the teacher's labels: " + ", ".join(f"{r} {_fmt(v)}" for r, v in agree.items())
        )
    lines += like_for_like_lines(report)
    lines += _seed_lines(report.get("seeds"))
    lines += _test_set_lines(report, ci)
    if report["plots"]:
        lines += ["", "## Plots", ""]
        lines += [f"![{name}]({file})" for name, file in report["plots"].items()]
    if report.get("export"):
        lines += [
            "",
            "## Export",
            "",
            "See `export/export_report.md` for every exported "
            "file, its size, latency and agreement with the Keras student.",
        ]
    lines += ["", "## Time per step", ""]
    lines += [f"- {step}: {_fmt(sec, 's')} s" for step, sec in report["steps"].items() if sec is not None]
    return "\n".join(lines) + "\n"


def print_summary(report):
    """Prints the comparison table, the targets, the seeds and the other test sets to the terminal."""
    rows = table_rows(report)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for i, row in enumerate(rows):
        print(
            "  ".join(cell.rjust(w) if j else cell.ljust(w) for j, (cell, w) in enumerate(zip(row, widths)))
        )
        if i == 0:
            print("  ".join("-" * w for w in widths))
    for entry in report["models"].values():
        if entry.get("status"):
            print(f"{entry['role']}: {entry['status']}")
    ci = _ci_name(report)
    for target in report["targets"]:
        print("target: " + target_line(target, ci).replace("**", ""))
    seeds = report.get("seeds") or {}
    diff = seeds.get("student_minus_baseline_accuracy") or {}
    if diff.get("n"):
        print(
            f"seeds: distilled minus label-only accuracy {_spread(diff, signed=True)} over {diff['n']} "
            f"seeds, distilled ahead in {seeds['student_wins']}"
        )
    for name, entry in (report.get("test_sets") or {}).items():
        print_test_set(name, entry)


def print_test_set(name, entry):
    """Prints one other test set of a report (`report["test_sets"][name]`): each model's accuracy and F1
    with intervals, the retention and the McNemar tests.

    Example:
    ```python
    print_test_set("sst2-dev", build_report("saved_models/demo")["test_sets"]["sst2-dev"])
    ```
    """
    print(f"test set {name} ({entry.get('examples')} examples, {entry.get('file')}):")
    for model in entry["models"].values():
        accuracy = with_interval(model.get("accuracy"), model.get("accuracy_interval"), label="CI")
        f1 = with_interval(model.get("f1"), model.get("f1_interval"), label="CI")
        status = f" [{model['status']}]" if model.get("status") else ""
        print(f"  {model['role']}: accuracy {accuracy}, F1 {f1}{status}")
    c = entry["comparison"]
    if c.get("student_accuracy_ratio") is not None:
        ratio = with_interval(c["student_accuracy_ratio"], c["student_accuracy_ratio_interval"], label="CI")
        print(f"  retention (distilled / teacher accuracy): {ratio}")
    for test_name, test in c.get("tests", {}).items():
        verdict = "significant" if test["significant"] else "not significant"
        print(f"  {test_name.replace('_', ' ')}: exact McNemar p = {test['p_value']:.3g} ({verdict})")


__all__ = [
    "COLUMNS",
    "format_value",
    "like_for_like_lines",
    "lookup",
    "print_summary",
    "print_test_set",
    "render_markdown",
    "table_rows",
    "target_line",
    "target_text",
    "with_interval",
]
