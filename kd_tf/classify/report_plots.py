"""The plots of the run report, from a `build_report` dict.

* `training_curves.png`: the hard-label training loss and the validation accuracy of every model.
* `accuracy_vs_size.png`: test accuracy (with its bootstrap interval) against parameters and latency.
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


def _accuracy_vs_size(plt, models, ci, path):
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for role, entry in models.items():
        if entry.get("accuracy") is None:
            continue
        for ax, key, scale in ((axes[0], "parameters", 1e6), (axes[1], "latency_ms", 1.0)):
            if entry.get(key) is not None:
                x = entry[key] / scale
                ax.errorbar(
                    x, entry["accuracy"], yerr=_error(entry), fmt="o", capsize=4, color=COLORS.get(role)
                )
                ax.annotate(entry["role"], (x, entry["accuracy"]), textcoords="offset points", xytext=(6, 4))
    axes[0].set(
        title=f"accuracy against size (bars: {ci})", xlabel="parameters (millions)", ylabel="test accuracy"
    )
    axes[1].set(title="accuracy against CPU latency", xlabel="batch-1 latency (ms)", ylabel="test accuracy")
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


__all__ = ["plot_report"]
