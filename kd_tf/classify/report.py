"""The teacher-versus-student report of a run: `report.json`, `report.md`, plots.

`build_report` reads only what a run wrote (its config, step records,
evaluation file, saved test-set predictions and training histories) and
recomputes every quality figure from the predictions, so `kd-tf report` can
re-render a run at any time.

`report.json` schema (version 1; benchmarks and notebooks read it):

```
schema_version   1
run_name, run_dir, created (ISO time)
config           the resolved run config (nested dict)
data             {label_names, sizes: {train, validation, test, transfer}, seq_length, source}
models           {teacher|student|baseline: {
                    role, encoder, layers, hidden_size, parameters,
                    savedmodel_bytes, tflite_bytes (float32 .tflite at export.seq_length),
                    latency_ms (batch 1, median, CPU), latency_ms_p90, examples_per_s,
                    training_seconds, best_val_accuracy,
                    accuracy, precision, recall, f1 (macro, test set),
                    per_class {name: {precision, recall, f1, support}}, confusion_matrix,
                    agreement_with_teacher, history {metric: [per epoch]}}}
comparison       {student_accuracy_ratio (student / teacher), student_minus_baseline_accuracy,
                  size_ratio (teacher / student parameters), speedup (teacher / student latency),
                  layer_ratio (student / teacher layers)}
targets          [{name, value, threshold, met}]
steps            {step: seconds}
export           the export report of the student, or null
plots            {name: file name}
```
Keys whose value could not be measured are null. `report.json` is strict JSON: a non-finite number is
never written (it becomes null). A model whose saved test logits are not all finite gets
`status: "non-finite logits: ..."` and null quality figures, so no target counts as met on them; a
model whose training diverged and kept an earlier epoch carries its training `status`.
"""

from __future__ import annotations

import datetime
import json
import os

import numpy as np

from kd_tf.classify import evaluate
from kd_tf.json_files import strict_json, write_json

SCHEMA_VERSION = 1
ROLE_TITLES = {"teacher": "teacher", "student": "distilled student", "baseline": "label-only student"}


def _read_json(path, default=None):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return default


def build_report(run_dir):
    """Builds the report dict of a run folder (see the module docstring).

    Args:
        run_dir: a run folder written by `kd_tf.pipeline`.

    Returns:
        The report as a JSON-ready dict.

    Raises:
        FileNotFoundError: if the run has no evaluated models yet.

    Example:
    ```python
    report = build_report("saved_models/demo")
    report["models"]["student"]["accuracy"]
    ```
    """
    import yaml

    path = lambda *p: os.path.join(run_dir, *p)  # noqa: E731
    evaluation = _read_json(path("evaluation.json"))
    if not evaluation:
        raise FileNotFoundError(
            f"{path('evaluation.json')} not found: run the evaluate step "
            f"(kd-tf distill ... or kd-tf evaluate) first."
        )
    with open(path("config.yaml")) as f:
        config = yaml.safe_load(f)
    splits = _read_json(path("data", "splits.json"), {})
    label_names = splits.get("label_names")
    steps = {}
    if os.path.isdir(path("steps")):
        order = ("teacher", "cache", "distill", "baseline", "evaluate", "export", "report")
        names = sorted(
            os.listdir(path("steps")), key=lambda n: order.index(n[:-5]) if n[:-5] in order else len(order)
        )
        for name in names:
            if name.endswith(".json"):
                record = _read_json(path("steps", name), {})
                steps[record.get("step", name[:-5])] = record
    export = _read_json(path("export", "export_report.json"))
    predictions = {
        role: evaluate.load_predictions(path("predictions", f"{role}.npz"))
        for role in evaluation
        if os.path.exists(path("predictions", f"{role}.npz"))
    }
    teacher_logits = predictions.get("teacher", {}).get("logits")

    if teacher_logits is not None and not np.isfinite(teacher_logits).all():
        teacher_logits = None
    models = {}
    for role, measured in evaluation.items():
        entry = {"role": ROLE_TITLES.get(role, role), **measured}
        preds = predictions.get(role)
        if preds is not None and not np.isfinite(preds["logits"]).all():
            bad = int(np.sum(~np.isfinite(preds["logits"]).all(axis=-1)))
            entry["status"] = (
                f"non-finite logits: {bad} of {len(preds['logits'])} test examples; its training "
                f"diverged, so no quality figure is reported"
            )
            entry.update({k: None for k in ("accuracy", "precision", "recall", "f1")})
            entry["agreement_with_teacher"] = None
        elif preds is not None:
            entry.update(evaluate.classification_metrics(preds["labels"], preds["logits"], label_names))
            entry["agreement_with_teacher"] = (
                evaluate.agreement(preds["logits"], teacher_logits) if teacher_logits is not None else None
            )
        history = _read_json(path(role, "history.json"), {})
        entry["history"] = history.get("history", {})
        entry["training_seconds"] = history.get("seconds")
        if history.get("status") not in (None, "completed"):
            entry.setdefault("status", f"training {history['status']}")
        entry["best_val_accuracy"] = steps.get(role if role != "student" else "distill", {}).get(
            "best_val_accuracy"
        )
        entry.setdefault("tflite_bytes", None)
        models[role] = entry

    report = {
        "schema_version": SCHEMA_VERSION,
        "run_name": config.get("run_name"),
        "run_dir": os.path.abspath(run_dir),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "config": config,
        "data": {
            "label_names": label_names,
            "sizes": splits.get("sizes", {}),
            "seq_length": config.get("data", {}).get("seq_length"),
            "source": config.get("data", {}).get("source"),
        },
        "models": models,
        "comparison": _comparison(models),
        "steps": {k: v.get("seconds") for k, v in steps.items()},
        "export": export,
        "plots": {},
    }
    report["targets"] = _targets(report)
    return strict_json(report)


def _ratio(a, b):
    return None if a is None or b in (None, 0) else float(a) / float(b)


def _comparison(models):
    t, s, b = models.get("teacher", {}), models.get("student", {}), models.get("baseline", {})
    return {
        "student_accuracy_ratio": _ratio(s.get("accuracy"), t.get("accuracy")),
        "student_minus_baseline_accuracy": (
            None if s.get("accuracy") is None or b.get("accuracy") is None else s["accuracy"] - b["accuracy"]
        ),
        "size_ratio": _ratio(t.get("parameters"), s.get("parameters")),
        "speedup": _ratio(t.get("latency_ms"), s.get("latency_ms")),
        "layer_ratio": _ratio(s.get("layers"), t.get("layers")),
    }


def _targets(report):
    """The demo's targets, measured (no tuning on the test set: they are only read)."""
    m, c = report["models"], report["comparison"]
    targets = [
        ("teacher accuracy", m.get("teacher", {}).get("accuracy"), 0.85),
        ("student accuracy / teacher accuracy", c["student_accuracy_ratio"], 0.97),
    ]
    if c["student_minus_baseline_accuracy"] is not None:
        targets.append(
            ("student accuracy - label-only student accuracy", c["student_minus_baseline_accuracy"], 0.0)
        )
    return [
        {
            "name": name,
            "value": value,
            "threshold": threshold,
            "met": None
            if value is None or not np.isfinite(value)
            else bool(value > threshold if threshold == 0.0 else value >= threshold),
        }
        for name, value, threshold in targets
    ]


# ----------------------------------------------------------------------------
# Rendering.
# ----------------------------------------------------------------------------
def _fmt(value, kind="float"):
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "–"
    if kind == "int":
        return f"{int(value):,}"
    if kind == "mb":
        return f"{value / 1e6:.1f} MB"
    if kind == "ms":
        return f"{value:.1f}"
    if kind == "s":
        return f"{value:.0f}"
    return f"{value:.4f}"


TABLE_COLUMNS = [
    ("model", None, None),
    ("accuracy", "accuracy", "float"),
    ("precision", "precision", "float"),
    ("recall", "recall", "float"),
    ("F1", "f1", "float"),
    ("layers", "layers", "int"),
    ("parameters", "parameters", "int"),
    ("SavedModel", "savedmodel_bytes", "mb"),
    ("TFLite f32", "tflite_bytes", "mb"),
    ("latency ms (b=1)", "latency_ms", "ms"),
    ("examples/s", "examples_per_s", "ms"),
    ("train s", "training_seconds", "s"),
]


def table_rows(report):
    """The comparison table as rows of strings (header first)."""
    rows = [[name for name, _, _ in TABLE_COLUMNS]]
    for role, entry in report["models"].items():
        rows.append([entry["role"]] + [_fmt(entry.get(key), kind) for _, key, kind in TABLE_COLUMNS[1:]])
    return rows


def print_summary(report):
    """Prints the comparison table and the targets to the terminal."""
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
    for target in report["targets"]:
        status = {True: "met", False: "MISSED", None: "not measured"}[target["met"]]
        print(f"target: {target_text(target)}: {_fmt(target['value'])} ({status})")


def target_text(target):
    """`name >= threshold` (`>` for a gain that must be positive)."""
    sign = ">" if target["threshold"] == 0.0 else ">="
    return f"{target['name']} {sign} {target['threshold']}"


def render_markdown(report):
    """`report.md`: the table, the targets, the comparison, the plots, the timings."""
    rows = table_rows(report)
    lines = [
        f"# Distillation report: {report['run_name']}",
        "",
        f"Created {report['created']}. Test set: {report['data']['sizes'].get('test', '?')} "
        f"held-out examples ({report['data']['source']}, sequence length "
        f"{report['data']['seq_length']}); every quality figure is recomputed from "
        f"`predictions/*.npz`.",
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
    for t in report["targets"]:
        status = {True: "met", False: "**missed**", None: "not measured"}[t["met"]]
        lines.append(f"- {target_text(t)}: {_fmt(t['value'])}: {status}")
    lines += [
        "",
        "## Student against teacher",
        "",
        f"- accuracy ratio (student / teacher): {_fmt(c['student_accuracy_ratio'])}",
        f"- accuracy gained by distillation over the label-only student: "
        f"{_fmt(c['student_minus_baseline_accuracy'])}",
        f"- parameters: teacher / student = {_fmt(c['size_ratio'])}",
        f"- batch-1 CPU latency: teacher / student = {_fmt(c['speedup'])}",
        f"- layers kept: {_fmt(c['layer_ratio'])}",
    ]
    agree = {r: e.get("agreement_with_teacher") for r, e in report["models"].items() if r != "teacher"}
    if agree:
        lines.append(
            "- agreement with the teacher's labels: "
            + ", ".join(f"{ROLE_TITLES.get(r, r)} {_fmt(v)}" for r, v in agree.items())
        )
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


def plot_report(report, run_dir):
    """Writes the plots (training curves, accuracy against size and latency); returns names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = {}
    models = report["models"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for role, entry in models.items():
        history = entry.get("history") or {}
        label = entry["role"]
        # The hard-label part of a distiller's loss is comparable with the others' loss.
        key = "student_loss" if "student_loss" in history else "loss"
        for ax, name in ((axes[0], key), (axes[1], "val_accuracy")):
            if name in history:  # null (a diverged epoch) is a gap in the curve
                values = [np.nan if v is None else v for v in history[name]]
                ax.plot(range(1, len(values) + 1), values, "o-", label=label)
    axes[0].set(title="training cross-entropy on the labels", xlabel="epoch")
    axes[1].set(title="validation accuracy", xlabel="epoch")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(run_dir, "training_curves.png"), dpi=110)
    plt.close(fig)
    files["training curves"] = "training_curves.png"

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for role, entry in models.items():
        if entry.get("accuracy") is None:
            continue
        for ax, key, scale in ((axes[0], "parameters", 1e6), (axes[1], "latency_ms", 1.0)):
            if entry.get(key) is not None:
                ax.scatter(entry[key] / scale, entry["accuracy"], s=60)
                ax.annotate(
                    entry["role"],
                    (entry[key] / scale, entry["accuracy"]),
                    textcoords="offset points",
                    xytext=(6, 4),
                )
    axes[0].set(title="accuracy against size", xlabel="parameters (millions)", ylabel="test accuracy")
    axes[1].set(title="accuracy against CPU latency", xlabel="batch-1 latency (ms)", ylabel="test accuracy")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(os.path.join(run_dir, "accuracy_vs_size.png"), dpi=110)
    plt.close(fig)
    files["accuracy against size and latency"] = "accuracy_vs_size.png"
    return files


def write_report(report, run_dir):
    """Writes the plots, `report.json` and `report.md` into `run_dir`; returns their paths."""
    report["plots"] = plot_report(report, run_dir)
    json_path = write_json(os.path.join(run_dir, "report.json"), report)
    md_path = os.path.join(run_dir, "report.md")
    with open(md_path, "w") as f:
        f.write(render_markdown(report))
    return {
        "json": json_path,
        "markdown": md_path,
        **{k: os.path.join(run_dir, v) for k, v in report["plots"].items()},
    }
