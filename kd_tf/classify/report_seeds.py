"""The students over seeds, for the run report: mean, standard deviation and per-seed tests.

A run with `distill.seeds: N` trained the distilled and the label-only student N times (the first time is
the run's own `student/` and `baseline/`, the others are in `seeds/seed<S>/`, see
`kd_tf.pipeline.seeds`). `seed_summary` reads their test-split predictions and says how much the
students move from seed to seed, and in how many seeds the distilled student is ahead.
"""

from __future__ import annotations

import os

import numpy as np

from kd_tf.classify import evaluate, statistics

STUDENTS = ("student", "baseline")


def _seed_predictions(run_dir, seed):
    folder = os.path.join(run_dir, "seeds", f"seed{seed}")
    return {
        role: evaluate.load_predictions(os.path.join(folder, f"{role}.npz"))
        for role in STUDENTS
        if os.path.exists(os.path.join(folder, f"{role}.npz"))
    }


def seed_summary(run_dir, config, record, predictions):
    """The `seeds` entry of `report.json`.

    Args:
        run_dir: the run folder.
        config: the run's config as a dict (`distill.seeds`).
        record: the seeds step's record (`steps/seeds.json`), or None.
        predictions: `{role: load_predictions(...)}` of the run's own models on the test split.

    Returns:
        None for a one-seed run; else `{count, status}` when the seeds step has not run for that count,
        or `{count, seed_values, status, models {student|baseline: {accuracy|f1: spread}},
        student_minus_baseline_accuracy, student_accuracy_ratio (spreads), student_wins, per_seed}`.

    Example:
    ```python
    seed_summary("saved_models/demo", config, record, predictions)["models"]["student"]["accuracy"]["sd"]
    ```
    """
    count = int(((config.get("distill") or {}).get("seeds")) or 1)
    if count == 1:
        return None
    if not record or record.get("seeds") != count:
        return {
            "count": count,
            "status": f"the seeds step has not run for {count} seeds: kd-tf run --config ... trains them",
        }
    values = record["seed_values"]
    runs = [{role: p for role, p in predictions.items() if role in STUDENTS}]
    runs += [_seed_predictions(run_dir, seed) for seed in values[1:]]
    teacher = predictions.get("teacher")
    teacher_accuracy = None
    if teacher is not None and np.isfinite(teacher["logits"]).all():
        teacher_accuracy = float(np.mean(teacher["logits"].argmax(1) == teacher["labels"]))
    per_seed, figures = [], {role: {"accuracy": [], "f1": []} for role in STUDENTS}
    for seed, run in zip(values, runs):
        row = {"seed": seed, "p_value": None}
        for role in STUDENTS:
            p = run.get(role)
            scores = {"accuracy": None, "f1": None}
            if p is not None and np.isfinite(p["logits"]).all():
                scores = evaluate.classification_metrics(p["labels"], p["logits"])
            row[role] = scores["accuracy"]
            for metric in ("accuracy", "f1"):
                figures[role][metric].append(scores[metric])
        if row["student"] is not None and row["baseline"] is not None:
            s, b = run["student"], run["baseline"]
            row["p_value"] = statistics.mcnemar_test(s["labels"], s["logits"], b["logits"]).p_value
        per_seed.append(row)
    paired = [r for r in per_seed if r["student"] is not None and r["baseline"] is not None]
    expected = count if any(r["baseline"] is not None for r in per_seed) else 0
    complete = all(r["student"] is not None for r in per_seed) and len(paired) >= expected
    return {
        "count": count,
        "seed_values": values,
        "status": "complete"
        if complete
        else "some seeds have no results (a model diverged or files are missing)",
        "models": {role: {m: statistics.spread(v) for m, v in figures[role].items()} for role in STUDENTS},
        "student_minus_baseline_accuracy": statistics.spread([r["student"] - r["baseline"] for r in paired]),
        "student_accuracy_ratio": statistics.spread(
            [
                r["student"] / teacher_accuracy
                for r in per_seed
                if r["student"] is not None and teacher_accuracy
            ]
        ),
        "student_wins": int(sum(r["student"] > r["baseline"] for r in paired)),
        "per_seed": per_seed,
    }


__all__ = ["seed_summary"]
