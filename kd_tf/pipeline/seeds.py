"""The seeds step: the distilled and the label-only student again with more seeds.

One training run of a student is one draw: its head's initialisation, dropout and the order of its
examples move its test accuracy by about a point. With `distill.seeds: N` (or `kd-tf run --seeds N`) the
seeds step trains both students N - 1 more times (`kd_tf.pipeline.students.seed_values`) from the same
teacher (its cached logits are reused, never recomputed) and the same encoder initialisation, and scores
each on the run's test split. The run's own `student/` and `baseline/` are the first seed; the report
gives the mean and standard deviation over all N.

Each seed keeps its test predictions and training histories, not its model (a demo student is 60 MB):

```
seeds/seed<S>/student.npz, baseline.npz         test-split logits, labels and ids (like predictions/)
seeds/seed<S>/student_history.json, baseline_history.json
seeds/seed<S>/seed.json                         the seed, what it was trained from, its test accuracy
```

Asking for more (or fewer) seeds on a finished run trains only the new ones: a seed whose teacher and
training settings are unchanged is kept. `--force` trains every seed again.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil

import numpy as np

from kd_tf.json_files import write_json
from kd_tf.pipeline import students
from kd_tf.pipeline.classification_data import data_fingerprint

SEEDS_DIR = "seeds"


def _log(message):
    print(message, flush=True)


def seed_folder(seed):
    """The folder of a seed's results inside the run folder (`seeds/seed<S>`).

    Example:
    ```python
    seed_folder(1042)  # 'seeds/seed1042'
    ```
    """
    return os.path.join(SEEDS_DIR, f"seed{seed}")


def _trained_from(run, seed):
    """What a seed's students depend on: the teacher, the training settings and data, the seed."""
    from kd_tf import config as config_lib

    values = config_lib.config_to_dict(run.config)
    values["distill"] = {k: v for k, v in values["distill"].items() if k != "seeds"}
    settings = {k: values[k] for k in ("seed", "data", "teacher", "student", "distill")}
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:32]
    return {
        "seed": seed,
        "teacher_token": (run.folder.record("teacher") or {}).get("token"),
        "settings": digest,
        "train_data": data_fingerprint(run.train_set()),
    }


def _reusable(previous, trained_from):
    """Whether a seed folder set aside holds finished results trained from `trained_from`."""
    try:
        with open(os.path.join(previous, "seed.json")) as f:
            record = json.load(f)
    except (OSError, ValueError, TypeError):
        return False
    return isinstance(record, dict) and record.get("trained_from") == trained_from


def train_seeds(run):
    """Trains and scores the students of `run` for every seed after the first (the seeds step).

    Args:
        run: a `kd_tf.pipeline.ClassificationRun` whose teacher, students and evaluation have finished.

    Returns:
        The step's record details: `seeds` (N), `seed_values`, `trained` and `reused` seeds, and the test
        accuracy of each seed's students (`accuracy`: {seed: {role: value}}).

    Raises:
        kd_tf.pipeline.training.TrainingDiverged: if a seed's student diverges (the seeds trained before
            it in this step are discarded with it; the previous results stay).

    Example:
    ```python
    run = ClassificationRun(load_config("configs/demo.yaml", ["distill.seeds=3"]), folder)
    train_seeds(run)["seed_values"]  # [42, 1042, 2042]
    ```
    """
    from kd_tf.classify import evaluate

    folder, config = run.folder, run.config
    values = students.seed_values(config)
    previous_record = folder.record("seeds")
    # A finished seeds step of another count is extended; the same count again means --force.
    reuse = previous_record is not None and previous_record.get("seeds") != config.distill.seeds
    folder.set_aside([SEEDS_DIR])
    os.makedirs(folder.path(SEEDS_DIR))
    test = run.splits["test"]
    test_ds = run.dataset(test, bucketing=False, role="student")  # both students read the student's tokens
    trainers = [("student", students.train_distilled)]
    if config.distill.baseline:
        trainers.append(("baseline", students.train_baseline))
    details = {"seeds": len(values), "seed_values": values, "trained": [], "reused": [], "accuracy": {}}
    for seed in values[1:]:
        out = folder.path(seed_folder(seed))
        trained_from = _trained_from(run, seed)
        previous = folder.previous(SEEDS_DIR)
        previous = previous and os.path.join(previous, f"seed{seed}")
        if reuse and previous and _reusable(previous, trained_from):
            shutil.copytree(previous, out)
            with open(os.path.join(out, "seed.json")) as f:
                details["accuracy"][str(seed)] = json.load(f)["accuracy"]
            details["reused"].append(seed)
            _log(f"  seed {seed}: trained before, reusing")
            continue
        os.makedirs(out)
        accuracy = {}
        for role, train in trainers:
            model, result = train(run, seed)
            logits, labels = evaluate.predict_logits(model, test_ds)
            evaluate.save_predictions(os.path.join(out, f"{role}.npz"), logits, labels, ids=test.ids)
            result.save(os.path.join(out, f"{role}_history.json"))
            accuracy[role] = float(np.mean(logits.argmax(1) == labels))
            _log(f"  seed {seed}: {role} test accuracy {accuracy[role]:.4f}")
            del model
        write_json(
            os.path.join(out, "seed.json"), {"seed": seed, "trained_from": trained_from, "accuracy": accuracy}
        )
        details["accuracy"][str(seed)] = accuracy
        details["trained"].append(seed)
    return details


__all__ = ["SEEDS_DIR", "seed_folder", "train_seeds"]
