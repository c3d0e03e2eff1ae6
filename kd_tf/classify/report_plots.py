"""The plots of the run report, from a `build_report` dict.

* `training_curves.png`: the hard-label training loss and the validation accuracy of every model.
* `accuracy_vs_size.png`: test accuracy (with its bootstrap interval) against the dynamic-int8 `.tflite`
  size and its LiteRT batch-1 latency (the same format for every model).
* `accuracy_intervals.png`: every model's accuracy with its interval, on the run's test split and on
  every other test set (`kd-tf evaluate RUN_DIR --test-file`): what the test sets can and cannot tell.
* `seeds.png` (runs with `distill.seeds` > 1): each seed's test accuracy of the two students, their mean
  and standard deviation, against the teacher's accuracy and interval.
"""

from __future__ import annotations

import os

import numpy as np

COLORS = {"teacher": "tab:blue", "student": "tab:orange", "baseline": "tab:green"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _error(entry):
    """Matplotlib's `yerr` of an accuracy and its interval (distances below and above)."""
    interval = entry.get("accuracy_interval")
    if not interval or interval[0] is None:
        return None
    return [[entry["accuracy"] - interval[0]], [interval[1] - entry["accuracy"]]]


def _training_curves(plt, models, path):
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for entry in models.values():
        history = entry.get("history") or {}
        # The hard-label part of a distiller's loss is comparable with the others' loss.
        key = "student_loss" if "student_loss" in history else "loss"
        for ax, name in ((axes[0], key), (axes[1], "val_accuracy")):
            if name in history:  # null (a diverged epoch) is a gap in the curve
                values = [np.nan if v is None else v for v in history[name]]
                ax.plot(range(1, len(values) + 1), values, "o-", label=entry["role"])
    axes[0].set(title="training cross-entropy on the labels", xlabel="epoch")
    axes[1].set(title="validation accuracy", xlabel="epoch")
    for ax in axes:
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def int8_figure(entry, key):
    """An entry's dynamic-int8 `.tflite` size in MB (`key="size"`) or LiteRT latency in ms at 1 thread
    (`key="latency"`), or None.

    Example:
    ```python
    int8_figure({"tflite": {"dynamic_int8": {"size_bytes": 5_190_000}}}, "size")  # 5.19
    ```
    """
    int8 = (entry.get("tflite") or {}).get("dynamic_int8") or {}
    value = int8.get("size_bytes") if key == "size" else (int8.get("latency_ms") or {}).get("1")
    return None if value is None else value / (1e6 if key == "size" else 1.0)


AXES = (
    ("size", "dynamic-int8 .tflite (MB)", "accuracy against int8 size"),
    ("latency", "int8 LiteRT latency, batch 1, 1 thread (ms)", "accuracy against int8 latency"),
)


def _accuracy_vs_size(plt, models, ci, path):
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for role, entry in models.items():
        if entry.get("accuracy") is None:
            continue
        for ax, (key, _, _) in zip(axes, AXES):
            x = int8_figure(entry, key)
            if x is not None:
                ax.errorbar(
                    x, entry["accuracy"], yerr=_error(entry), fmt="o", capsize=4, color=COLORS.get(role)
                )
                ax.annotate(entry["role"], (x, entry["accuracy"]), textcoords="offset points", xytext=(6, 4))
    for ax, (_, label, title) in zip(axes, AXES):
        ax.set(title=f"{title} (bars: {ci})", xlabel=label, ylabel="test accuracy")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _accuracy_intervals(plt, report, ci, path):
    sets = [("test split", report["models"])] + [
        (name, entry["models"]) for name, entry in (report.get("test_sets") or {}).items()
    ]
    rows = [
        (name, role, e)
        for name, models in sets
        for role, e in models.items()
        if e.get("accuracy") is not None
    ]
    fig, ax = plt.subplots(figsize=(8, 1.0 + 0.4 * max(1, len(rows))))
    labels = []
    for y, (name, role, entry) in enumerate(reversed(rows)):
        err = _error(entry)
        ax.errorbar(entry["accuracy"], y, xerr=err, fmt="o", capsize=4, color=COLORS.get(role))
        labels.append(f"{name}: {entry['role']}")
    ax.set_yticks(range(len(labels)), labels)
    ax.set(title=f"test accuracy with its {ci} (bootstrap over the examples)", xlabel="accuracy")
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _seeds(plt, report, ci, path):
    seeds = report["seeds"]
    fig, ax = plt.subplots(figsize=(7, 4))
    teacher = report["models"].get("teacher", {})
    if teacher.get("accuracy") is not None:
        ax.axhline(teacher["accuracy"], color=COLORS["teacher"], label=f"teacher ({ci} shaded)")
        if teacher.get("accuracy_interval"):
            ax.axhspan(*teacher["accuracy_interval"], color=COLORS["teacher"], alpha=0.12)
    for x, role, title in ((0, "student", "distilled student"), (1, "baseline", "label-only student")):
        spread = seeds["models"].get(role, {}).get("accuracy") or {}
        values = [v for v in spread.get("values") or [] if v is not None]
        if not values:
            continue
        jitter = np.linspace(-0.08, 0.08, len(values)) if len(values) > 1 else [0.0]
        ax.scatter(
            x + np.asarray(jitter), values, color=COLORS[role], alpha=0.7, label=f"{title}, one seed each"
        )
        if spread.get("sd") is not None:
            ax.errorbar(x + 0.22, spread["mean"], yerr=spread["sd"], fmt="s", capsize=6, color=COLORS[role])
    ax.set_xticks([0, 1], ["distilled", "label-only"])
    ax.set_xlim(-0.5, 1.5)
    ax.set(title=f"test accuracy over {seeds['count']} seeds (squares: mean ± sd)", ylabel="test accuracy")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def pareto_front(points):
    """Indices of the points no other point beats: at least as accurate and at most as large, one strictly.

    Args:
        points: `(x, accuracy)` pairs (x: a size or a latency; smaller is better).

    Returns:
        The indices of the front, by increasing x.

    Example:
    ```python
    pareto_front([(5.0, 0.80), (4.0, 0.82), (3.0, 0.78)])  # [2, 1]
    ```
    """
    front = [
        i
        for i, (x, y) in enumerate(points)
        if not any((x2 <= x and y2 >= y) and (x2 < x or y2 > y) for x2, y2 in points)
    ]
    return sorted(front, key=lambda i: points[i][0])


def plot_pareto(rows, teacher, ci, path):
    """The sweep's Pareto plot: accuracy against int8 size and against int8 latency.

    Args:
        rows: one dict per student: `name`, and `student` / `baseline` entries (`accuracy`,
            `accuracy_interval`, `tflite`), as `kd_tf.classify.report_sweep` builds them.
        teacher: the teacher's entry, drawn as a reference line and point.
        ci: the interval's name, for the title.
        path: the `.png` to write.

    Example:
    ```python
    plot_pareto(sweep["students"], sweep["teacher"], "95% CI", "sweep/pareto.png")
    ```
    """
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, (key, label, title) in zip(axes, AXES):
        for role, marker, name in (("student", "o", "distilled"), ("baseline", "s", "label-only")):
            points = []
            for row in rows:
                entry = row.get(role) or {}
                x = int8_figure(entry, key)
                if x is None or entry.get("accuracy") is None:
                    continue
                ax.errorbar(
                    x,
                    entry["accuracy"],
                    yerr=_error(entry),
                    fmt=marker,
                    capsize=3,
                    color=COLORS[role],
                    alpha=0.9 if role == "student" else 0.6,
                )
                points.append((x, entry["accuracy"]))
                if role == "student":
                    ax.annotate(
                        row["name"],
                        (x, entry["accuracy"]),
                        textcoords="offset points",
                        xytext=(5, 4),
                        fontsize=8,
                    )
            front = pareto_front(points)
            if front:
                ax.plot(
                    [points[i][0] for i in front],
                    [points[i][1] for i in front],
                    "-",
                    color=COLORS[role],
                    alpha=0.5,
                    label=f"{name} (line: Pareto front)",
                )
        if teacher and teacher.get("accuracy") is not None:
            ax.axhline(
                teacher["accuracy"],
                color=COLORS["teacher"],
                ls="--",
                lw=1,
                label=f"teacher accuracy ({teacher['accuracy']:.3f})",
            )
            ax.axhline(
                0.97 * teacher["accuracy"], color=COLORS["teacher"], ls=":", lw=1, label="97% of the teacher"
            )
        ax.set(title=f"{title} (bars: {ci})", xlabel=label, ylabel="test accuracy")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_report(report, run_dir):
    """Writes the report's plots into `run_dir` (see the module docstring).

    Args:
        report: a `kd_tf.classify.report.build_report` dict.
        run_dir: the run folder.

    Returns:
        `{plot name: file name}` of the plots written.

    Example:
    ```python
    plot_report(build_report("saved_models/demo"), "saved_models/demo")["seeds"]  # 'seeds.png'
    ```
    """
    plt = _pyplot()
    ci = f"{round(100 * report['statistics']['confidence'])}% CI"
    files = {
        "training curves": "training_curves.png",
        "accuracy against size and latency": "accuracy_vs_size.png",
        "accuracy with intervals": "accuracy_intervals.png",
    }
    _training_curves(plt, report["models"], os.path.join(run_dir, files["training curves"]))
    _accuracy_vs_size(
        plt, report["models"], ci, os.path.join(run_dir, files["accuracy against size and latency"])
    )
    _accuracy_intervals(plt, report, ci, os.path.join(run_dir, files["accuracy with intervals"]))
    if (report.get("seeds") or {}).get("seed_values"):
        files["seeds"] = "seeds.png"
        _seeds(plt, report, ci, os.path.join(run_dir, files["seeds"]))
    return files


__all__ = ["int8_figure", "pareto_front", "plot_pareto", "plot_report"]
