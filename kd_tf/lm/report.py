"""The report of a causal-LM distillation run: `report.json`, `report.md`, the perplexity plot.

`build_report` reads only what the run wrote (`config.yaml`, `steps/*.json`, `evaluation.json`,
`student/` and `baseline/` `curve.json` and `history.json`), so the report can be rendered again at any
time. The run and its steps are described in `kd_tf.pipeline.causal_lm`.

`report.json` schema (version 1):

```
schema_version   1
task             "causal_lm"
run_name, run_dir, created (ISO time)
config           the run's causal_lm section, and its seed
data             {source, documents {train, heldout}, sequence_length, windows, tokens (read per epoch),
                  learnt_tokens (labels with weight 1 per epoch), epochs, batch_size}
texts            {wikitext|heldout: {which, path (WikiText-2), tokens_available, tokens_scored}}: what
                 the evaluation scored
perplexity       {window, stride}: how (kd_tf.lm.perplexity's sliding window; every token after the first
                 is scored once, with at least window - stride + 1 tokens of context after the first window)
cache            {key, bytes_per_token, k, mode, samples, temperature, seconds}: the sparse teacher targets,
                 or null when the teacher ran live
models           {teacher|student|baseline: {
                    role, title, blocks, parameters, float32_bytes, weight_bytes,
                    perplexity {wikitext, heldout}, nll {wikitext, heldout} (nats per token),
                    accuracy {wikitext, heldout} (top-1 next token), agreement {wikitext, heldout} (top-1
                    next token equal to the teacher's; students only),
                    generation {tokens_per_s (new tokens / whole generate call, batch 1, greedy, KV cache),
                                decode_tokens_per_s, prefill_s, compile_s, prompt_tokens, new_tokens,
                                rounds_tokens_per_s (every round; the best one counts)},
                    training {targets ("sparse"/"live": distilled, "none": cross-entropy alone), steps,
                              tokens (tokens read), training_seconds (evaluations excluded),
                              evaluation_seconds, stopped_by ("tokens", "steps" or "time budget"),
                              planned_steps, history {metric: [per epoch]}} (students only)}}
curves           {student|baseline: [{steps, tokens, seconds, perplexity {wikitext, heldout}}]}: each
                 student at its checkpoints (the first before training), on the first curve_tokens tokens
                 of each text with stride = window; teacher_curve_perplexity {wikitext, heldout}: the
                 teacher on the same tokens
comparison       {perplexity_reduction {wikitext, heldout}: 1 - distilled / cross-entropy perplexity,
                  block_ratio (student / teacher blocks), parameter_ratio, generation_speedup
                  {student|baseline: student / teacher tokens_per_s}, equal_tokens (both students read
                  the same tokens), training_seconds_ratio (cross-entropy / distilled)}
targets          [{name, value, threshold, direction ("<=" or ">="), met, evidence}]
generations      [{prompt, teacher, student, baseline}]: greedy continuations of the fixed prompts
steps            {step: seconds}
plots            {perplexity_vs_tokens: file name}
```
Figures that were not measured are null; `report.json` is strict JSON (a non-finite number is written as
null). Every figure comes from one training run with the run's seed.
"""

from __future__ import annotations

import datetime
import json
import math
import os

import yaml

from kd_tf.json_files import write_json

__all__ = [
    "PERPLEXITY_REDUCTION_TARGET",
    "REPORT_FILES",
    "SPEEDUP_TARGET",
    "BLOCK_RATIO_TARGET",
    "build_report",
    "print_summary",
    "render_markdown",
    "write_report",
]

REPORT_FILES = ("report.json", "report.md", "perplexity_vs_tokens.png")
PERPLEXITY_REDUCTION_TARGET = 0.10
"""The distilled student's perplexity must be at least this much below the cross-entropy student's."""
BLOCK_RATIO_TARGET = 1 / 3
"""The student keeps at most this share of the teacher's blocks."""
SPEEDUP_TARGET = 2.5
"""The student generates at least this many times the teacher's tokens per second at batch 1."""
TEXTS = {"wikitext": "WikiText-2 test", "heldout": "held-out domain text"}
TITLES = {"teacher": "teacher", "student": "distilled student", "baseline": "cross-entropy student"}
COLORS = {"teacher": "tab:blue", "student": "tab:orange", "baseline": "tab:green"}


def _read(path, default=None):
    try:
        with open(path, encoding="utf-8") as f:
            return yaml.safe_load(f) if path.endswith(".yaml") else json.load(f)
    except FileNotFoundError:
        return default


def _ratio(a, b):
    return None if a is None or b in (None, 0) else a / b


def _model_entry(role, measured, record, history):
    quality = measured.get("quality", {})
    entry = {
        "role": role,
        "title": TITLES[role],
        "blocks": measured.get("blocks"),
        "parameters": measured.get("parameters"),
        "float32_bytes": measured.get("float32_bytes"),
        "weight_bytes": measured.get("weight_bytes"),
    }
    for key in ("perplexity", "nll", "accuracy", "agreement"):
        if role != "teacher" or key != "agreement":
            entry[key] = {text: quality.get(text, {}).get(key) for text in TEXTS}
    entry["generation"] = measured.get("generation")
    if role != "teacher":
        entry["training"] = {
            key: (record or {}).get(key)
            for key in (
                "targets",
                "steps",
                "tokens",
                "training_seconds",
                "evaluation_seconds",
                "stopped_by",
                "planned_steps",
            )
        }
        entry["training"]["history"] = history
    return entry


def _targets(models, comparison):
    student, teacher = models["student"], models["teacher"]
    rows = []
    for text, words in TEXTS.items():
        value = comparison["perplexity_reduction"][text]
        rows.append(
            dict(
                name=f"distilled perplexity below the cross-entropy student's on {words}",
                value=value,
                threshold=PERPLEXITY_REDUCTION_TARGET,
                direction=">=",
                evidence=f"{_number(student['perplexity'][text])} against "
                f"{_number(models['baseline']['perplexity'][text])}, same tokens (one run)",
            )
        )
    rows.append(
        dict(
            name="student blocks / teacher blocks",
            value=comparison["block_ratio"],
            threshold=BLOCK_RATIO_TARGET,
            direction="<=",
            evidence=f"{student['blocks']} of {teacher['blocks']} blocks",
        )
    )
    speed = (teacher.get("generation") or {}).get("tokens_per_s")
    rows.append(
        dict(
            name="student / teacher batch-1 generation speed",
            value=comparison["generation_speedup"]["student"],
            threshold=SPEEDUP_TARGET,
            direction=">=",
            evidence=f"{_number((student.get('generation') or {}).get('tokens_per_s'))} against "
            f"{_number(speed)} tokens/s, greedy with the KV cache, best of the rounds",
        )
    )
    for row in rows:
        value, threshold = row["value"], row["threshold"]
        row["met"] = (
            None
            if value is None
            else (value >= threshold if row["direction"] == ">=" else value <= threshold)
        )
    return rows


def build_report(run_dir):
    """Builds the report dict of a finished causal-LM run (schema in the module docstring).

    Args:
        run_dir: the run folder (`<output_dir>/<run_name>`).

    Returns:
        The report as a dict of plain JSON data.

    Raises:
        FileNotFoundError: if the run has no `evaluation.json` (run its evaluate step first).

    Example:
    ```python
    report = build_report("saved_models/lm_demo")
    report["comparison"]["perplexity_reduction"]  # {'wikitext': ..., 'heldout': ...}
    ```
    """
    evaluation = _read(os.path.join(run_dir, "evaluation.json"))
    if evaluation is None:
        raise FileNotFoundError(
            f"{run_dir}/evaluation.json does not exist: run the evaluate step of the run first "
            "(kd-tf run --config C.yaml)."
        )
    config = _read(os.path.join(run_dir, "config.yaml"), {}) or {}
    section = config.get("causal_lm", {})
    records = {}
    steps_dir = os.path.join(run_dir, "steps")
    names = [n for n in os.listdir(steps_dir) if n.endswith(".json")] if os.path.isdir(steps_dir) else []
    for name in sorted(names, key=lambda n: os.path.getmtime(os.path.join(steps_dir, n))):  # run order
        record = _read(os.path.join(steps_dir, name), {})
        records[record.get("step", name[:-5])] = record
    trained = {"student": records.get("distill"), "baseline": records.get("baseline")}
    models = {
        role: _model_entry(
            role,
            evaluation["models"].get(role, {}),
            trained.get(role),
            _read(os.path.join(run_dir, role, "history.json")),
        )
        for role in TITLES
    }
    student, baseline, teacher = models["student"], models["baseline"], models["teacher"]
    speed = {role: (m.get("generation") or {}).get("tokens_per_s") for role, m in models.items()}
    comparison = {
        "perplexity_reduction": {
            text: None
            if _ratio(student["perplexity"][text], baseline["perplexity"][text]) is None
            else 1 - _ratio(student["perplexity"][text], baseline["perplexity"][text])
            for text in TEXTS
        },
        "block_ratio": _ratio(student["blocks"], teacher["blocks"]),
        "parameter_ratio": _ratio(student["parameters"], teacher["parameters"]),
        "generation_speedup": {
            role: _ratio(speed[role], speed["teacher"]) for role in ("student", "baseline")
        },
        "equal_tokens": student["training"]["tokens"] == baseline["training"]["tokens"],
        "training_seconds_ratio": _ratio(
            baseline["training"]["training_seconds"], student["training"]["training_seconds"]
        ),
    }
    windows = records.get("windows", {})
    cache = records.get("cache")
    report = {
        "schema_version": 1,
        "task": "causal_lm",
        "run_name": os.path.basename(os.path.normpath(run_dir)),
        "run_dir": run_dir,
        "created": datetime.datetime.now().isoformat(timespec="seconds"),
        "config": {"seed": config.get("seed"), "causal_lm": section},
        "data": {
            "source": windows.get("source"),
            "documents": windows.get("documents"),
            "sequence_length": windows.get("sequence_length"),
            "windows": windows.get("windows"),
            "tokens": windows.get("tokens"),
            "learnt_tokens": windows.get("learnt_tokens"),
            "epochs": section.get("train", {}).get("epochs"),
            "batch_size": section.get("data", {}).get("batch_size"),
        },
        "texts": windows.get("texts"),
        "perplexity": {
            "window": evaluation["settings"].get("window"),
            "stride": evaluation["settings"].get("stride"),
        },
        "cache": None
        if cache is None
        else {
            k: cache.get(k)
            for k in ("key", "bytes_per_token", "k", "mode", "samples", "temperature", "seconds")
        },
        "models": models,
        "curves": {
            role: _read(os.path.join(run_dir, role, "curve.json"), []) for role in ("student", "baseline")
        },
        "teacher_curve_perplexity": evaluation.get("teacher_curve_perplexity"),
        "comparison": comparison,
        "targets": _targets(models, comparison),
        "generations": evaluation.get("generations", []),
        "steps": {step: record.get("seconds") for step, record in records.items()},
        "plots": {},
    }
    return report


def _number(value, digits=1):
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{value:,.{digits}f}"


def _percent(value):
    return "–" if value is None else f"{100 * value:.1f}%"


def table_rows(report):
    """The comparison table: a header row and one row per model, as strings.

    Example:
    ```python
    table_rows(build_report("saved_models/lm_demo"))[0][:3]  # ['model', 'blocks', 'parameters']
    ```
    """
    header = [
        "model",
        "blocks",
        "parameters",
        "float32 MB",
        "ppl WikiText-2",
        "ppl held-out",
        "agreement W / H",
        "gen tokens/s",
        "speed-up",
        "tokens read",
        "training s",
    ]
    rows = [header]
    speedup = report["comparison"]["generation_speedup"]
    for role, m in report["models"].items():
        training = m.get("training") or {}
        agreement = m.get("agreement")
        rows.append(
            [
                m["title"],
                str(m["blocks"]),
                "–" if m["parameters"] is None else f"{m['parameters'] / 1e6:.1f} M",
                "–" if m["float32_bytes"] is None else f"{m['float32_bytes'] / 1e6:.0f}",
                _number(m["perplexity"]["wikitext"]),
                _number(m["perplexity"]["heldout"]),
                "–"
                if agreement is None
                else f"{_number(agreement['wikitext'], 3)} / {_number(agreement['heldout'], 3)}",
                _number((m.get("generation") or {}).get("tokens_per_s")),
                "1.00x" if role == "teacher" else f"{_number(speedup.get(role), 2)}x",
                "–" if training.get("tokens") is None else f"{training['tokens']:,}",
                _number(training.get("training_seconds"), 0) if training else "–",
            ]
        )
    return rows


def _target_line(target):
    verdict = {True: "met", False: "**missed**", None: "not measured"}[target["met"]]
    value = target["value"]
    shown = _percent(value) if "perplexity" in target["name"] else _number(value, 3)
    limit = (
        _percent(target["threshold"]) if "perplexity" in target["name"] else _number(target["threshold"], 3)
    )
    return (
        f"{target['name']}: {shown} (target {target['direction']} {limit}): {verdict}; {target['evidence']}"
    )


def render_markdown(report):
    """`report.md`: the table, the targets, the setup, the generations, the plot, the time per step.

    Example:
    ```python
    open("report.md", "w").write(render_markdown(build_report("saved_models/lm_demo")))
    ```
    """
    rows = table_rows(report)
    data, texts, p = report["data"], report["texts"] or {}, report["perplexity"]
    lines = [
        f"# Causal-LM distillation report: {report['run_name']}",
        "",
        f"Created {report['created']}. Both students are cut from the teacher's blocks and read the same "
        f"{data['windows']} windows of {data['sequence_length']} tokens ({data['tokens']:,} tokens, "
        f"{data['source']}) for {data['epochs']} epoch(s) in the same order; the distilled student learns "
        "the teacher's next-token distribution, the cross-entropy student the next token alone. Perplexity: "
        f"sliding window of {p['window']} tokens, stride {p['stride']} (`kd_tf.lm.perplexity`).",
        "",
    ]
    for text, words in TEXTS.items():
        t = texts.get(text, {})
        lines.append(
            f"- {words}: {t.get('which', '?')}; {_number(t.get('tokens_scored'), 0)} tokens scored of "
            f"{_number(t.get('tokens_available'), 0)}."
        )
    lines += ["", "| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    lines += [
        "",
        "Agreement W / H: share of scored tokens whose top-1 next token is the teacher's, on WikiText-2 / "
        "the held-out text. Generation: batch 1, greedy, KerasHub's KV cache, new tokens per second of the "
        "whole call (prompt included), best of the rounds in which the models took turns. Tokens read: "
        "window positions over all epochs; training s excludes the evaluations during training.",
        "",
        "## Targets",
        "",
    ]
    lines += [f"- {_target_line(t)}" for t in report["targets"]]
    c = report["comparison"]
    lines += [
        "",
        "## Students against each other and the teacher",
        "",
        f"- same tokens for both students: {'yes' if c['equal_tokens'] else '**no**'}",
        f"- training seconds, cross-entropy / distilled: {_number(c['training_seconds_ratio'], 2)}",
        f"- parameters kept (student / teacher): {_number(c['parameter_ratio'], 3)}",
    ]
    for role in ("student", "baseline"):
        training = report["models"][role]["training"]
        lines.append(
            f"- {TITLES[role]}: {training['steps']} of {training['planned_steps']} steps, stopped by "
            f"{training['stopped_by']}"
        )
    cache = report.get("cache")
    if cache:
        lines.append(
            f"- teacher cache: {cache['mode']} k={cache['k']}"
            + (f" + {cache['samples']} tail samples" if cache.get("samples") else "")
            + f", {_number(cache['bytes_per_token'])} bytes per token, built in "
            f"{_number(report['steps'].get('cache'), 0)} s"
        )
    if report["generations"]:
        lines += ["", "## Greedy continuations", ""]
        lines += ["| prompt | teacher | distilled | cross-entropy |", "|---|---|---|---|"]
        for g in report["generations"]:
            cells = [g.get(k, "") for k in ("prompt", "teacher", "student", "baseline")]
            lines.append("| " + " | ".join(repr(c).replace("|", "\\|") for c in cells) + " |")
    if report["plots"]:
        lines += ["", "## Plots", ""] + [f"![{name}]({file})" for name, file in report["plots"].items()]
    lines += ["", "## Time per step", ""]
    lines += [f"- {step}: {_number(seconds, 0)} s" for step, seconds in report["steps"].items()]
    return "\n".join(lines) + "\n"


def plot_curves(report, path):
    """Draws each student's perplexity against the tokens it read, on both texts, with the teacher's.

    Args:
        report: a `build_report` dict.
        path: the `.png` file to write.

    Returns:
        `path`.

    Example:
    ```python
    plot_curves(build_report("saved_models/lm_demo"), "perplexity_vs_tokens.png")
    ```
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(TEXTS), figsize=(11, 4))
    reference = report.get("teacher_curve_perplexity") or {}
    train = (report["config"].get("causal_lm") or {}).get("train") or {}
    window = report["perplexity"].get("window")
    scored = (
        f"first {train['curve_tokens']:,} tokens, windows of {window}" if train.get("curve_tokens") else ""
    )
    for ax, (text, words) in zip(axes, TEXTS.items()):
        for role, points in report["curves"].items():
            values = [(p["tokens"], p["perplexity"].get(text)) for p in points]
            values = [(x, y) for x, y in values if y is not None and math.isfinite(y)]
            if values:
                ax.plot(*zip(*values), "o-", color=COLORS[role], label=TITLES[role])
        if reference.get(text) is not None:
            ax.axhline(reference[text], color=COLORS["teacher"], linestyle="--", label="teacher")
        ax.set(
            title=f"{words}: {scored}", xlabel="tokens read", ylabel="perplexity (log scale)", yscale="log"
        )
        ax.grid(alpha=0.3, which="both")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(report, run_dir):
    """Writes `report.json`, `report.md` and the plot into `run_dir`.

    Returns:
        `{"json": path, "markdown": path, "plot": path}`.

    Example:
    ```python
    write_report(build_report("saved_models/lm_demo"), "saved_models/lm_demo")
    ```
    """
    plot = plot_curves(report, os.path.join(run_dir, REPORT_FILES[2]))
    report["plots"] = {"perplexity_vs_tokens": os.path.basename(plot)}
    paths = {
        "json": os.path.join(run_dir, REPORT_FILES[0]),
        "markdown": os.path.join(run_dir, REPORT_FILES[1]),
    }
    write_json(paths["json"], report)
    with open(paths["markdown"], "w", encoding="utf-8") as f:
        f.write(render_markdown(report))
    return {**paths, "plot": plot}


def print_summary(report):
    """Prints the comparison table and the targets to the terminal.

    Example:
    ```python
    print_summary(build_report("saved_models/lm_demo"))
    ```
    """
    rows = table_rows(report)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for i, row in enumerate(rows):
        print("  ".join(c.rjust(w) if j else c.ljust(w) for j, (c, w) in enumerate(zip(row, widths))))
        if i == 0:
            print("  ".join("-" * w for w in widths))
    for target in report["targets"]:
        print("target: " + _target_line(target).replace("**", ""))
