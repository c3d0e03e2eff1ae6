"""The teacher-versus-student report of a run: `report.json`, `report.md`, plots.

`build_report` reads only what a run wrote (its config, step records, evaluation file, saved test-set
predictions, training histories, the seeds' predictions and the other test sets scored with
`kd-tf evaluate RUN_DIR --test-file`) and recomputes every quality figure from the predictions, so
`kd-tf report` can re-render a run at any time. Every accuracy and F1 carries a percentile bootstrap
interval, and the students are compared with the teacher and with each other by exact McNemar tests
on the same examples (`kd_tf.classify.statistics`; docs/evaluation.md says how to read them).

`report.json` schema (version 3; benchmarks and notebooks read it):

```
schema_version   3
run_name, run_dir, created (ISO time)
config           the resolved run config (nested dict)
data             {label_names, sizes: {train, validation, test, transfer}, seq_length, source}
statistics       {method, resamples, seed, confidence, test, significance_level}: how intervals and
                 p-values were computed
models           {teacher|student|baseline: {
                    role, encoder, preprocessor, layers, hidden_size, vocab_size, parameters,
                    savedmodel_bytes, latency_ms (Keras, batch 1, median, CPU), latency_ms_p90,
                    examples_per_s,
                    tflite {float32|dynamic_int8: {path, size_bytes, latency_ms {"1", "2": LiteRT batch-1
                            ms at 1 and 2 threads}, cpu_ms {"1": CPU time of the interpreter thread}}}:
                            the same files for every model, at tflite_seq_length (export.seq_length),
                            timed in turns (kd_tf.pipeline.measure),
                    training_seconds, best_val_accuracy,
                    accuracy, precision, recall, f1 (macro), on the run's test split,
                    accuracy_interval, f1_interval ([low, high] bootstrap intervals),
                    per_class {name: {precision, recall, f1, support}}, confusion_matrix,
                    agreement_with_teacher, history {metric: [per epoch]}}}
comparison       on the run's test split: {
                  student_accuracy_ratio (student / teacher), student_accuracy_ratio_interval,
                  student_minus_baseline_accuracy, student_minus_baseline_accuracy_interval,
                  student_minus_teacher_accuracy, student_minus_teacher_accuracy_interval,
                  tests {student_vs_baseline|student_vs_teacher: {test, a, b, only_a_right,
                         only_b_right, p_value, significance_level, significant}},
                  parameter_ratio (student / teacher parameters), keras_speedup (teacher / student
                  Keras latency, both float32), layer_ratio (student / teacher layers),
                  like_for_like {student|baseline: {float32|dynamic_int8: {size_ratio (student / teacher
                                 bytes), speedup {"1", "2"} and cpu_speedup {"1"} (teacher / student
                                 latency)}}}: ratios between files of the same format only}
targets          [{name, value, interval, threshold, direction (">=", ">" or "<="), verdict, met, evidence}]
                 verdict: "met", "missed", "undecided" or "not measured" (see
                 `kd_tf.classify.report_targets`);
                 met: true for "met", false for "missed", null otherwise
seeds            null (one seed), or {count, seed_values, status,
                  models {student|baseline: {accuracy|f1: {mean, sd, min, max, n, values}}},
                  student_minus_baseline_accuracy {mean, sd, ...}, student_accuracy_ratio {mean, sd, ...},
                  student_wins (seeds where the distilled student is more accurate),
                  per_seed [{seed, student, baseline (test accuracy), p_value (McNemar)}]}
test_sets        other labelled files scored with `kd-tf evaluate RUN_DIR --test-file` (the run's own
                 test split is `models` above): {name: {name, file, format, examples, columns, clean,
                  label_mapping {file label: {label, examples, by}}, created,
                  models {role: {role, accuracy, accuracy_interval, precision, recall, f1, f1_interval,
                         agreement_with_teacher, status}},
                  comparison {the comparison keys above but size, speed and layers; on this file,
                              student_accuracy_ratio is the cross-domain retention}}}
steps            {step: seconds}
export           the export report of the student, or null
plots            {name: file name}
```
Keys whose value could not be measured are null. `report.json` is strict JSON: a non-finite number is
never written (it becomes null). A model whose saved test logits are not all finite gets
`status: "non-finite logits: ..."` and null quality figures, so no target counts as met on them; a
model whose training diverged and kept an earlier epoch carries its training `status`; a model of
another test set that was trained again after that set was scored is `status: "stale: ..."`.
Version 1 had no intervals, tests, seeds or test sets, and `met` was decided on the point estimate. Version
2 had one float32 `tflite_bytes` per model and compared parameters and Keras latency only (`size_ratio`,
`speedup`, teacher / student).
"""

from __future__ import annotations

import datetime
import json
import os

import numpy as np

from kd_tf.classify import evaluate, report_seeds, report_targets, statistics
from kd_tf.json_files import strict_json, write_json

SCHEMA_VERSION = 3
ROLE_TITLES = {"teacher": "teacher", "student": "distilled student", "baseline": "label-only student"}
TRAINING_STEPS = {"teacher": "teacher", "student": "distill", "baseline": "baseline"}
STEP_ORDER = ("teacher", "cache", "distill", "baseline", "evaluate", "export", "seeds", "report")
TEST_SETS_DIR = "test_sets"
TEST_SET_RECORD = "test_set.json"
QUALITY_KEYS = ("accuracy", "precision", "recall", "f1", "accuracy_interval", "f1_interval")


def _read_json(path, default=None):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return default


def statistics_settings(config):
    """How a run's intervals and tests are computed, from its config dict (`evaluate.*`, `seed`).

    Example:
    ```python
    statistics_settings({"seed": 42, "evaluate": {"bootstrap_resamples": 5000}})["resamples"]  # 5000
    ```
    """
    e = (config or {}).get("evaluate") or {}
    return {
        "method": "percentile bootstrap over the test examples, the same resamples for every model",
        "resamples": int(e.get("bootstrap_resamples", statistics.DEFAULT_RESAMPLES)),
        "seed": int((config or {}).get("seed", 0)),
        "confidence": float(e.get("confidence", statistics.DEFAULT_CONFIDENCE)),
        "test": "exact McNemar: two-sided binomial test on the examples exactly one of two models gets right",
        "significance_level": float(e.get("significance_level", statistics.DEFAULT_SIGNIFICANCE)),
    }


def _non_finite_status(logits):
    bad = int(np.sum(~np.isfinite(logits).all(axis=-1)))
    return (
        f"non-finite logits: {bad} of {len(logits)} test examples; its training diverged, so no quality "
        f"figure is reported"
    )


def score_test_set(labels, logits, label_names, settings, statuses=None):
    """Quality of every model on one test set, with bootstrap intervals and paired tests.

    Args:
        labels: true label ids `[N]`.
        logits: `{role: logits [N, C]}` of the models, on the same examples.
        label_names: the label names, in id order.
        settings: `statistics_settings(config)`.
        statuses: `{role: reason}` for models whose figures must not be reported (e.g. stale ones).

    Returns:
        `(models, comparison)`: `models[role]` holds accuracy, precision, recall, F1 (macro), their
        intervals, per-class figures, the confusion matrix and the agreement with the teacher (or a
        `status` and null figures); `comparison` the students' ratios and differences with intervals,
        and McNemar tests (`tests`).

    Example:
    ```python
    models, comparison = score_test_set(labels, {"teacher": t, "student": s}, ["neg", "pos"],
                                        statistics_settings(config))
    comparison["student_accuracy_ratio_interval"]  # [0.951, 1.004]
    ```
    """
    statuses = dict(statuses or {})
    for role, values in logits.items():
        if role not in statuses and not np.isfinite(values).all():
            statuses[role] = _non_finite_status(values)
    scored = {role: values for role, values in logits.items() if role not in statuses}
    boot = None
    if scored:
        boot = statistics.PairedBootstrap(
            labels,
            scored,
            num_classes=len(label_names),
            resamples=settings["resamples"],
            seed=settings["seed"],
            confidence=settings["confidence"],
        )
    teacher = scored.get("teacher")
    models = {}
    for role in logits:
        entry = {"role": ROLE_TITLES.get(role, role)}
        if role in statuses:
            entry.update({k: None for k in QUALITY_KEYS}, agreement_with_teacher=None, status=statuses[role])
        else:
            entry.update(evaluate.classification_metrics(labels, scored[role], label_names))
            entry["accuracy_interval"] = boot.interval(role, "accuracy")
            entry["f1_interval"] = boot.interval(role, "f1")
            entry["agreement_with_teacher"] = (
                evaluate.agreement(scored[role], teacher) if teacher is not None else None
            )
        models[role] = entry
    return models, _paired_comparison(labels, scored, boot, settings["significance_level"])


def _paired_comparison(labels, scored, boot, level):
    s = scored.get("student")
    out = {
        "student_accuracy_ratio": None,
        "student_accuracy_ratio_interval": None,
        "student_minus_baseline_accuracy": None,
        "student_minus_baseline_accuracy_interval": None,
        "student_minus_teacher_accuracy": None,
        "student_minus_teacher_accuracy_interval": None,
        "tests": {},
    }
    if s is None:
        return out
    accuracy = {role: boot.estimates[role]["accuracy"] for role in scored}
    if "teacher" in scored:
        out["student_accuracy_ratio"] = (
            accuracy["student"] / accuracy["teacher"] if accuracy["teacher"] > 0 else None
        )
        out["student_accuracy_ratio_interval"] = boot.ratio_interval("student", "teacher")
    for other in ("baseline", "teacher"):
        if other not in scored:
            continue
        out[f"student_minus_{other}_accuracy"] = accuracy["student"] - accuracy[other]
        out[f"student_minus_{other}_accuracy_interval"] = boot.difference_interval("student", other)
        test = statistics.mcnemar_test(labels, s, scored[other])
        out["tests"][f"student_vs_{other}"] = {"a": "student", "b": other, **test.to_dict(level)}
    return out


def _steps(path):
    steps = {}
    if os.path.isdir(path("steps")):
        names = sorted(
            (n for n in os.listdir(path("steps")) if n.endswith(".json")),
            key=lambda n: STEP_ORDER.index(n[:-5]) if n[:-5] in STEP_ORDER else len(STEP_ORDER),
        )
        for name in names:
            record = _read_json(path("steps", name), {})
            steps[record.get("step", name[:-5])] = record
    return steps


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
    report["models"]["student"]["accuracy_interval"]  # [0.759, 0.81]
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
    settings = statistics_settings(config)
    splits = _read_json(path("data", "splits.json"), {})
    label_names = splits.get("label_names")
    steps = _steps(path)
    predictions = {
        role: evaluate.load_predictions(path("predictions", f"{role}.npz"))
        for role in evaluation
        if os.path.exists(path("predictions", f"{role}.npz"))
    }
    models, comparison = {}, _paired_comparison(None, {}, None, settings["significance_level"])
    if predictions:
        labels = next(iter(predictions.values()))["labels"]
        logits = {role: p["logits"] for role, p in predictions.items()}
        models, comparison = score_test_set(labels, logits, label_names, settings)
    for role, measured in evaluation.items():
        entry = {"role": ROLE_TITLES.get(role, role), **measured, **models.get(role, {})}
        history = _read_json(path(role, "history.json"), {})
        entry["history"] = history.get("history", {})
        entry["training_seconds"] = history.get("seconds")
        if history.get("status") not in (None, "completed"):
            entry.setdefault("status", f"training {history['status']}")
        entry["best_val_accuracy"] = steps.get(TRAINING_STEPS.get(role, role), {}).get("best_val_accuracy")
        entry.setdefault("tflite", None)
        models[role] = entry
    t, s = models.get("teacher", {}), models.get("student", {})
    comparison.update(
        parameter_ratio=_ratio(s.get("parameters"), t.get("parameters")),
        keras_speedup=_ratio(t.get("latency_ms"), s.get("latency_ms")),
        layer_ratio=_ratio(s.get("layers"), t.get("layers")),
        like_for_like={
            role: evaluate.like_for_like(t.get("tflite"), models[role].get("tflite"))
            for role in ("student", "baseline")
            if role in models and t.get("tflite")
        },
    )
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
        "statistics": settings,
        "models": models,
        "comparison": comparison,
        "targets": report_targets.targets(models, comparison, settings),
        "seeds": report_seeds.seed_summary(run_dir, config, steps.get("seeds"), predictions),
        "test_sets": {
            name: read_test_set(run_dir, name, settings, steps) for name in test_set_names(run_dir)
        },
        "steps": {k: v.get("seconds") for k, v in steps.items()},
        "export": _read_json(path("export", "export_report.json")),
        "plots": {},
    }
    return strict_json(report)


def _ratio(a, b):
    return None if a is None or b in (None, 0) else float(a) / float(b)


# ----------------------------------------------------------------------------
# Other test sets (kd-tf evaluate RUN_DIR --test-file FILE).
# ----------------------------------------------------------------------------
def test_set_names(run_dir):
    """Names of the other test sets scored for a run (folders of `test_sets/`), sorted.

    Example:
    ```python
    test_set_names("saved_models/demo")  # ['sst2-dev']
    ```
    """
    root = os.path.join(run_dir, TEST_SETS_DIR)
    if not os.path.isdir(root):
        return []
    return sorted(
        n for n in os.listdir(root) if not n.startswith(".") and os.path.isdir(os.path.join(root, n))
    )


def read_test_set(run_dir, name, settings, steps=None):
    """The scores of the models of a run on another test set (`test_sets/<name>/`), with intervals.

    A model trained again since that set was scored (its training step's token changed) is reported
    as stale, with null figures.

    Args:
        run_dir: the run folder.
        name: the test set's name.
        settings: `statistics_settings(config)`.
        steps: the run's step records by step name (read from the folder when None).

    Returns:
        The `test_sets[name]` entry of `report.json` (see the module docstring).

    Example:
    ```python
    read_test_set("saved_models/demo", "sst2-dev", statistics_settings(config))["comparison"]
    ```
    """
    folder = os.path.join(run_dir, TEST_SETS_DIR, name)
    record = _read_json(os.path.join(folder, TEST_SET_RECORD), {})
    if steps is None:
        steps = _steps(lambda *p: os.path.join(run_dir, *p))
    statuses, logits, labels = {}, {}, None
    for role, stamp in (record.get("models") or {}).items():
        current = steps.get(stamp.get("step"), {}).get("token")
        if current is None or current != stamp.get("token"):
            statuses[role] = (
                f"stale: the {ROLE_TITLES.get(role, role)} was trained again after this test set was scored; "
                f"score it again with kd-tf evaluate {run_dir} --test-file {record.get('file')} --name {name}"
            )
        predictions = evaluate.load_predictions(os.path.join(folder, "predictions", f"{role}.npz"))
        labels, logits[role] = predictions["labels"], predictions["logits"]
    entry = {
        "name": name,
        **{k: record.get(k) for k in ("file", "format", "examples", "columns", "clean", "created")},
    }
    entry["label_mapping"] = record.get("label_mapping")
    entry["models"], entry["comparison"] = {}, _paired_comparison(None, {}, None, 0.05)
    if logits:
        entry["models"], entry["comparison"] = score_test_set(
            labels, logits, record["label_names"], settings, statuses
        )
    return entry


# ----------------------------------------------------------------------------
# Writing.
# ----------------------------------------------------------------------------
def write_report(report, run_dir):
    """Writes the plots, `report.json` and `report.md` into `run_dir`; returns their paths.

    Example:
    ```python
    paths = write_report(build_report("saved_models/demo"), "saved_models/demo")
    paths["markdown"]  # 'saved_models/demo/report.md'
    ```
    """
    from kd_tf.classify import report_plots, report_render

    report["plots"] = report_plots.plot_report(report, run_dir)
    json_path = write_json(os.path.join(run_dir, "report.json"), report)
    md_path = os.path.join(run_dir, "report.md")
    with open(md_path, "w") as f:
        f.write(report_render.render_markdown(report))
    return {
        "json": json_path,
        "markdown": md_path,
        **{k: os.path.join(run_dir, v) for k, v in report["plots"].items()},
    }


def print_summary(report):
    """Prints the comparison table, the targets and the other test sets to the terminal.

    Example:
    ```python
    print_summary(build_report("saved_models/demo"))
    ```
    """
    from kd_tf.classify import report_render

    report_render.print_summary(report)


__all__ = [
    "SCHEMA_VERSION",
    "build_report",
    "print_summary",
    "read_test_set",
    "score_test_set",
    "statistics_settings",
    "test_set_names",
    "write_report",
]
