"""The report of a compression sweep: every student against the teacher, like for like, and the Pareto plot.

`build_sweep_report(run_dir)` reads what the sweep's steps wrote (`kd_tf.pipeline.sweep`): the teacher's
test predictions and `.tflite` files (`sweep/teacher/`), and for each student of the config's
`sweep.students` its shape, its distilled and label-only students' test predictions, histories and
`.tflite` figures, with the teacher's latencies measured in the same turns (`sweep/<name>/`). Every
quality figure is recomputed from the predictions, with bootstrap intervals and exact McNemar tests
(`kd_tf.classify.report.score_test_set`); every size and speed ratio compares two files of the same format
(`kd_tf.classify.evaluate.like_for_like`).

`sweep/report.json` (schema version 1):

```
schema_version 1
run_name, run_dir, created, statistics (as in report.json), data {label_names, sizes, seq_length}
teacher        {role, accuracy, accuracy_interval, f1, f1_interval, parameters, layers, hidden_size,
                vocab_size, tflite {float32|dynamic_int8: {size_bytes, latency_ms, cpu_ms}}}
students       [{name, status ("done" or why not), spec, init_layers, hidden_size, num_heads,
                 vocab_size, vocabulary {kept_tokens, coverage_of_training_wordpieces, ...} or null,
                 student|baseline {role, accuracy, accuracy_interval, f1, f1_interval, parameters,
                                   agreement_with_teacher, training_seconds, best_val_accuracy, tflite},
                 teacher_tflite (the teacher's figures of the same turns),
                 like_for_like {student|baseline: {variant: {size_ratio, speedup, cpu_speedup}}},
                 comparison (as report.json's, on the same test examples), targets (as report.json's,
                 but the teacher's own accuracy)}]
pareto         {size|latency: names of the distilled students no other beats (at least as accurate,
                at most as large or slow)}
plots          {name: file name in sweep/}
```
"""

from __future__ import annotations

import datetime
import json
import os

from kd_tf.classify import evaluate, report, report_plots, report_render, report_targets
from kd_tf.json_files import strict_json, write_json

SWEEP_DIR = "sweep"
REPORT_FILES = ("report.json", "report.md", "pareto.png")
SCHEMA_VERSION = 1
ROLES = ("student", "baseline")


def _read_json(path, default=None):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return default


def _predictions(folder, role):
    path = os.path.join(folder, "predictions", f"{role}.npz")
    return evaluate.load_predictions(path) if os.path.exists(path) else None


def _student_row(run_dir, name, teacher_predictions, label_names, settings):
    folder = os.path.join(run_dir, SWEEP_DIR, name)
    record = _read_json(os.path.join(folder, "student.json"))
    measured = _read_json(os.path.join(folder, "evaluation.json"))
    if not record or not measured:
        return {"name": name, "status": "not run yet: kd-tf sweep --config ... trains it"}
    student = record["student"]
    row = {
        "name": name,
        "status": "done",
        "spec": record["spec"],
        "init_layers": student["init_layers"],
        "hidden_size": measured["student"].get("hidden_size"),
        "num_heads": student.get("num_heads"),
        "vocab_size": measured["student"].get("vocab_size"),
        "vocabulary": _read_json(os.path.join(folder, "student_init", "vocabulary.json")),
    }
    if row["vocabulary"]:
        row["vocabulary"].pop("kept_ids", None)
    logits = {"teacher": teacher_predictions["logits"]}
    for role in ROLES:
        predictions = _predictions(folder, role)
        if predictions is not None and role in measured:
            if list(predictions["ids"]) != list(teacher_predictions["ids"]):
                raise ValueError(
                    f"{folder}/predictions/{role}.npz is not on the teacher's test examples; run the sweep "
                    f"again with --force."
                )
            logits[role] = predictions["logits"]
    models, comparison = report.score_test_set(teacher_predictions["labels"], logits, label_names, settings)
    for role in ROLES:
        if role not in models:
            continue
        history = _read_json(os.path.join(folder, role, "history.json"), {})
        keep = (
            "parameters",
            "layers",
            "hidden_size",
            "vocab_size",
            "latency_ms",
            "tflite",
            "tflite_seq_length",
        )
        row[role] = {
            **{k: v for k, v in models[role].items() if k not in ("per_class", "confusion_matrix")},
            **{k: measured[role].get(k) for k in keep},
            "training_seconds": history.get("seconds"),
            "best_val_accuracy": history.get("best_val_accuracy"),
        }
    teacher_tflite = (measured.get("timed_with") or {}).get("teacher") or {}
    row["teacher_tflite"] = teacher_tflite
    row["like_for_like"] = {
        role: evaluate.like_for_like(teacher_tflite, row[role]["tflite"]) for role in ROLES if role in row
    }
    comparison["like_for_like"] = row["like_for_like"]
    row["comparison"] = comparison
    targets = report_targets.targets({**models, "teacher": {}}, comparison, settings)
    row["targets"] = [t for t in targets if t["name"] != "teacher accuracy"]
    return row


def build_sweep_report(run_dir):
    """Builds the sweep report of a run folder (see the module docstring).

    Args:
        run_dir: the folder of a sweep (`kd-tf sweep`).

    Returns:
        The report as a JSON-ready dict; students the sweep has not run yet have a `status` saying so.

    Raises:
        FileNotFoundError: if the sweep's teacher has not been measured yet.

    Example:
    ```python
    sweep = build_sweep_report("saved_models/sweep_demo")
    [s["name"] for s in sweep["students"]]  # ['2L_H384_8k', '2L_H256_8k', ...]
    ```
    """
    import yaml

    teacher_dir = os.path.join(run_dir, SWEEP_DIR, "teacher")
    measured = _read_json(os.path.join(teacher_dir, "evaluation.json"))
    predictions = _predictions(teacher_dir, "teacher")
    if not measured or predictions is None:
        raise FileNotFoundError(
            f"{teacher_dir}/evaluation.json not found: run the sweep's teacher first "
            f"(kd-tf sweep --config ...)."
        )
    with open(os.path.join(run_dir, "config.yaml")) as f:
        config = yaml.safe_load(f)
    settings = report.statistics_settings(config)
    splits = _read_json(os.path.join(run_dir, "data", "splits.json"), {})
    label_names = splits.get("label_names")
    models, _ = report.score_test_set(
        predictions["labels"], {"teacher": predictions["logits"]}, label_names, settings
    )
    teacher = {
        **{k: v for k, v in models["teacher"].items() if k not in ("per_class", "confusion_matrix")},
        **{
            k: measured["teacher"].get(k)
            for k in ("parameters", "layers", "hidden_size", "vocab_size", "tflite")
        },
    }
    names = [s["name"] for s in (config.get("sweep") or {}).get("students") or []]
    students = [_student_row(run_dir, name, predictions, label_names, settings) for name in names]
    done = [s for s in students if s["status"] == "done"]
    pareto = {}
    for key in ("size", "latency"):
        points = [(report_plots.int8_figure(s["student"], key), s["student"]["accuracy"]) for s in done]
        pareto[key] = [done[i]["name"] for i in report_plots.pareto_front(points)]
    return strict_json(
        {
            "schema_version": SCHEMA_VERSION,
            "run_name": config.get("run_name"),
            "run_dir": os.path.abspath(run_dir),
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "statistics": settings,
            "data": {
                "label_names": label_names,
                "sizes": splits.get("sizes", {}),
                "seq_length": (config.get("data") or {}).get("seq_length"),
            },
            "teacher": teacher,
            "students": students,
            "pareto": pareto,
            "plots": {},
        }
    )


_fmt = report_render.format_value


def _retention(row):
    c = row["comparison"]
    return report_render.with_interval(
        c.get("student_accuracy_ratio"), c.get("student_accuracy_ratio_interval")
    )


def _gain(row):
    c = row["comparison"]
    test = c.get("tests", {}).get("student_vs_baseline")
    value = report_render.with_interval(
        c.get("student_minus_baseline_accuracy"),
        c.get("student_minus_baseline_accuracy_interval"),
        signed=True,
    )
    return value if test is None else f"{value}, p = {test['p_value']:.3g}"


def _shape(row):
    layers = ",".join(str(i) for i in row["init_layers"])
    vocabulary = f"{row['vocab_size']:,}" if row.get("vocab_size") else "–"
    return f"{len(row['init_layers'])}L [{layers}] | H{row['hidden_size']} | {vocabulary}"


def table_rows(sweep):
    """The sweep's table: one row per student (header first), like-for-like ratios, accuracy, targets.

    Example:
    ```python
    table_rows(build_sweep_report("saved_models/sweep_demo"))[1][0]  # '2L_H256_8k'
    ```
    """
    ci = f"{round(100 * sweep['statistics']['confidence'])}% CI"
    header = [
        "student", "blocks", "width", "vocabulary", "parameters", "int8 MB", "int8 bytes / teacher",
        "int8 speed-up (CPU, 1 thread)", "float32 bytes / teacher", "float32 speed-up (CPU, 1 thread)",
        f"accuracy ({ci})", f"student / teacher accuracy ({ci})", f"label-only accuracy ({ci})",
        "distilled − label-only", "targets met",
    ]  # fmt: skip
    rows = [header]
    for row in sweep["students"]:
        if row["status"] != "done":
            rows.append([row["name"], row["status"]] + [""] * (len(header) - 2))
            continue
        s, ratios = row["student"], row["like_for_like"]["student"]
        int8, f32 = ratios.get("dynamic_int8", {}), ratios.get("float32", {})
        baseline = row.get("baseline") or {}
        met = [t for t in row["targets"] if t["verdict"] == "met"]
        rows.append(
            [row["name"], *_shape(row).split(" | "), _fmt(s["parameters"], "int"),
             _fmt(report_render.lookup(s, "tflite.dynamic_int8.size_bytes"), "mb2"),
             _fmt(int8.get("size_ratio"), "ratio"), _fmt(report_render.lookup(int8, "cpu_speedup.1"), "x"),
             _fmt(f32.get("size_ratio"), "ratio"), _fmt(report_render.lookup(f32, "cpu_speedup.1"), "x"),
             report_render.with_interval(s["accuracy"], s["accuracy_interval"]), _retention(row),
             report_render.with_interval(baseline.get("accuracy"), baseline.get("accuracy_interval")),
             _gain(row), f"{len(met)} of {len(row['targets'])}"]
        )  # fmt: skip
    return rows


def render_markdown(sweep):
    """`sweep/report.md`: the teacher, the students' table, the targets, the Pareto fronts and plot.

    Example:
    ```python
    open("sweep/report.md", "w").write(render_markdown(build_sweep_report("saved_models/sweep_demo")))
    ```
    """
    t = sweep["teacher"]
    ci = f"{round(100 * sweep['statistics']['confidence'])}% CI"
    rows = table_rows(sweep)
    lines = [
        f"# Compression sweep: {sweep['run_name']}",
        "",
        f"Created {sweep['created']}. Test set: {sweep['data']['sizes'].get('test', '?')} held-out examples "
        f"(sequence length {sweep['data']['seq_length']}). Every student was distilled from the same "
        f"teacher's cached logits and trained on labels alone with the same budget; every accuracy is "
        f"recomputed from the saved predictions ({ci}, bootstrap over the test examples; distilled "
        f"against label-only: exact McNemar p).",
        "",
        f"Teacher: {t['layers']} layers, H{t['hidden_size']}, {_fmt(t['parameters'], 'int')} parameters, "
        f"accuracy {report_render.with_interval(t['accuracy'], t['accuracy_interval'], label=ci)}; "
        f"int8 .tflite {_fmt(report_render.lookup(t, 'tflite.dynamic_int8.size_bytes'), 'mb2')}, "
        f"float32 {_fmt(report_render.lookup(t, 'tflite.float32.size_bytes'), 'mb2')}.",
        "",
        "Sizes and speed-ups are like for like: each ratio compares two `.tflite` files of the same format "
        "(dynamic int8 with dynamic int8, float32 with float32), converted at the same sequence length "
        "without metadata and timed at batch 1 in LiteRT at 1 thread, the student's files and the teacher's "
        "taking turns in the same process (CPU time of the interpreter thread; wall time and 2 threads are "
        "in report.json).",
        "",
        "| " + " | ".join(rows[0]) + " |",
        "|" + "|".join("---" for _ in rows[0]) + "|",
    ]
    lines += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    lines += ["", "## Targets", ""]
    for row in sweep["students"]:
        if row["status"] == "done":
            lines.append(f"- **{row['name']}**")
            lines += [f"  - {report_render.target_line(x, ci)}" for x in row["targets"]]
    lines += [
        "",
        "## Pareto fronts",
        "",
        "Distilled students no other distilled student beats (at least as accurate, and at most as large or "
        "as slow, in dynamic int8):",
        "",
        f"- against int8 size: {', '.join(sweep['pareto'].get('size') or ['–'])}",
        f"- against int8 latency: {', '.join(sweep['pareto'].get('latency') or ['–'])}",
    ]
    if sweep["plots"]:
        lines += [""] + [f"![{name}]({file})" for name, file in sweep["plots"].items()]
    return "\n".join(lines) + "\n"


def write_sweep_report(sweep, run_dir):
    """Writes `sweep/pareto.png`, `sweep/report.json` and `sweep/report.md`; returns their paths.

    Example:
    ```python
    write_sweep_report(build_sweep_report("saved_models/sweep_demo"), "saved_models/sweep_demo")["markdown"]
    ```
    """
    folder = os.path.join(run_dir, SWEEP_DIR)
    done = [s for s in sweep["students"] if s["status"] == "done"]
    ci = f"{round(100 * sweep['statistics']['confidence'])}% CI"
    report_plots.plot_pareto(done, sweep["teacher"], ci, os.path.join(folder, "pareto.png"))
    sweep["plots"] = {"accuracy against int8 size and latency": "pareto.png"}
    paths = {"json": write_json(os.path.join(folder, "report.json"), sweep)}
    paths["markdown"] = os.path.join(folder, "report.md")
    with open(paths["markdown"], "w") as f:
        f.write(render_markdown(sweep))
    paths["pareto"] = os.path.join(folder, "pareto.png")
    return paths


def shapes_rows(shapes):
    """The table of `kd_tf.pipeline.shapes.measure_shapes` (header first): bytes and speed-ups, untrained.

    Example:
    ```python
    shapes_rows(measure_shapes(config))[0][:3]  # ['shape', 'blocks', 'width']
    ```
    """
    header = [
        "shape", "blocks", "width", "heads", "vocabulary", "parameters", "int8 MB", "int8 bytes / teacher",
        "int8 ms, 1 thread (CPU)", "int8 speed-up, 1 thread (CPU)", "int8 speed-up, 2 threads",
        "float32 MB", "float32 bytes / teacher", "float32 speed-up, 1 thread (CPU)",
        f"int8 <= {report_targets.SIZE_TARGET} and >= {report_targets.SPEED_TARGET:g}x",
    ]  # fmt: skip
    rows = [header]
    for row in [shapes["teacher"], *shapes["students"]]:
        int8, f32 = row["tflite"]["dynamic_int8"], row["tflite"]["float32"]
        ratios = row.get("like_for_like") or {}
        r8, r32 = ratios.get("dynamic_int8", {}), ratios.get("float32", {})
        targets = report_targets.measured_targets(ratios) if ratios else []
        layers = row["init_layers"] or list(range(row["layers"]))
        rows.append(
            [row["name"], f"{len(layers)}L {layers}", f"H{row['hidden_size']}", str(row["num_heads"]),
             f"{row['vocab_size']:,}", _fmt(row["parameters"], "int"), _fmt(int8["size_bytes"], "mb2"),
             _fmt(r8.get("size_ratio", 1.0), "ratio"), _fmt(report_render.lookup(int8, "cpu_ms.1"), "ms2"),
             _fmt(report_render.lookup(r8, "cpu_speedup.1") or 1.0, "x"),
             _fmt(report_render.lookup(r8, "speedup.2") or 1.0, "x"), _fmt(f32["size_bytes"], "mb2"),
             _fmt(r32.get("size_ratio", 1.0), "ratio"),
             _fmt(report_render.lookup(r32, "cpu_speedup.1") or 1.0, "x"),
             ("yes" if all(t["verdict"] == "met" for t in targets) else "no") if targets else "–"]
        )  # fmt: skip
    return rows


def render_shapes(shapes):
    """`sweep_shapes/shapes.md`: the untrained shapes' bytes and speed-ups, like for like.

    Example:
    ```python
    open("shapes.md", "w").write(render_shapes(measure_shapes(config)))
    ```
    """
    rows = shapes_rows(shapes)
    lines = [
        "# Student shapes before training: size and speed, like for like",
        "",
        f"Every student cut from the pretrained teacher as the sweep cuts it from the fine-tuned one, "
        f"with an untrained head, and the teacher itself, converted to float32 and dynamic-int8 `.tflite` "
        f"at sequence length {shapes['seq_length']} (no metadata) and timed at batch 1 in LiteRT, all "
        f"models taking turns (best round median; CPU time of the interpreter thread at 1 thread, wall "
        f"time at 2). Each ratio compares two files of the same format. Accuracy needs training: "
        f"`kd-tf sweep`.",
        "",
        "| " + " | ".join(rows[0]) + " |",
        "|" + "|".join("---" for _ in rows[0]) + "|",
    ]
    lines += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    return "\n".join(lines) + "\n"


def print_rows(rows):
    """Prints a table (header first) in aligned columns.

    Example:
    ```python
    print_rows(shapes_rows(measure_shapes(config)))
    ```
    """
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for i, row in enumerate(rows):
        print("  ".join(c.rjust(w) if j else c.ljust(w) for j, (c, w) in enumerate(zip(row, widths))))
        if i == 0:
            print("  ".join("-" * w for w in widths))


def print_sweep_summary(sweep):
    """Prints the sweep's table and Pareto fronts to the terminal.

    Example:
    ```python
    print_sweep_summary(build_sweep_report("saved_models/sweep_demo"))
    ```
    """
    print_rows([[r[0], r[5], r[6], r[7], r[10], r[11], r[13], r[14]] for r in table_rows(sweep)])
    for key, names in sweep["pareto"].items():
        print(f"Pareto front against int8 {key}: {', '.join(names) or '–'}")


__all__ = [
    "REPORT_FILES",
    "build_sweep_report",
    "print_rows",
    "print_sweep_summary",
    "render_markdown",
    "render_shapes",
    "shapes_rows",
    "table_rows",
    "write_sweep_report",
]
