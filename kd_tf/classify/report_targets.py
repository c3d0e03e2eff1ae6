"""The targets of a run report: quality with its uncertainty, size and speed like for like.

* teacher accuracy >= 0.85 and student / teacher accuracy >= 0.97: met only when the whole bootstrap
  interval is at or above the threshold, missed when it is wholly below, undecided otherwise;
* the distilled student beats the label-only student: met only with a significant exact McNemar test;
* the student's dynamic-int8 `.tflite` is at most `SIZE_TARGET` of the teacher's bytes and runs
  at least `SPEED_TARGET` times faster at batch 1, 1 thread, in LiteRT: measured, so met or missed.
"""

from __future__ import annotations

from kd_tf.classify import statistics

SIZE_TARGET = 0.25
"""The student's dynamic-int8 `.tflite` must be at most this share of the teacher's."""
SPEED_TARGET = 4.0
"""The student's dynamic-int8 `.tflite` must run at least this many times faster at batch 1, 1 thread."""
TARGET_VARIANT = "dynamic_int8"


def _mcnemar(comparison, name):
    test = comparison["tests"].get(name)
    if test is None:
        return None
    return statistics.McNemarResult(test["only_a_right"], test["only_b_right"], test["p_value"])


def targets(models, comparison, settings):
    """The demo's targets, decided with their uncertainty (no tuning on the test set: they are only read).

    Args:
        models: the report's `models`.
        comparison: the report's `comparison` (with `like_for_like`).
        settings: `kd_tf.classify.report.statistics_settings(config)`.

    Returns:
        The report's `targets` rows: teacher accuracy, retention, distilled against label-only, and the
        size and speed targets of `measured_targets`.

    Example:
    ```python
    [t["verdict"] for t in targets(report["models"], report["comparison"], report["statistics"])]
    ```

    A threshold target (teacher accuracy >= 0.85, student / teacher accuracy >= 0.97) is met when its
    whole bootstrap interval is at or above the threshold, missed when the whole interval is below, and
    undecided when the interval straddles it (the test set is too small to tell). "The distilled
    student beats the label-only student" is met only when the McNemar test on the same examples is
    significant and the student is ahead, missed when it is significant the other way, and undecided
    (not significant) otherwise.
    """
    level = settings["significance_level"]
    teacher = models.get("teacher", {})
    targets = []
    for name, value, interval, threshold in (
        ("teacher accuracy", teacher.get("accuracy"), teacher.get("accuracy_interval"), 0.85),
        (
            "student accuracy / teacher accuracy",
            comparison.get("student_accuracy_ratio"),
            comparison.get("student_accuracy_ratio_interval"),
            0.97,
        ),
    ):
        verdict = statistics.threshold_verdict(value, interval, threshold)
        evidence = {
            "met": "the whole interval is at or above the threshold",
            "missed": "the whole interval is below the threshold",
            "undecided": "the interval straddles the threshold: the test set cannot tell",
            "not measured": "not measured",
        }[verdict]
        targets.append((name, value, interval, threshold, verdict, evidence))
    if "baseline" in models:
        value = comparison.get("student_minus_baseline_accuracy")
        test = _mcnemar(comparison, "student_vs_baseline")
        verdict = statistics.difference_verdict(value, test, level)
        evidence = "not measured"
        if test is not None:
            significance = "significant" if test.significant(level) else "not significant"
            evidence = (
                f"exact McNemar p = {test.p_value:.3g}, {significance} at {level:g}; {test.only_a_right} "
                f"examples only the distilled student gets right, {test.only_b_right} only the label-only one"
            )
        targets.append(
            (
                "student accuracy - label-only student accuracy",
                value,
                comparison.get("student_minus_baseline_accuracy_interval"),
                0.0,
                verdict,
                evidence,
            )
        )
    rows = [
        {
            "name": name,
            "value": value,
            "interval": interval,
            "threshold": threshold,
            "direction": ">" if threshold == 0.0 else ">=",
            "verdict": verdict,
            "evidence": evidence,
        }
        for name, value, interval, threshold, verdict, evidence in targets
    ]
    rows += measured_targets((comparison.get("like_for_like") or {}).get("student"))
    for row in rows:
        row["met"] = {"met": True, "missed": False}.get(row["verdict"])
    return rows


def measured_targets(ratios):
    """The size and speed targets of a student, from its like-for-like ratios with the teacher.

    Sizes and latencies need no test-set statistics: a file's bytes are exact, and a latency is the best
    round median with the models taking turns (`kd_tf.export.litert.interleaved_latency_ms`). The speed
    target reads the CPU time of the interpreter thread at 1 thread (wall time when it was not measured),
    which other processes on a shared machine do not inflate.

    Args:
        ratios: `kd_tf.classify.evaluate.like_for_like(teacher, student)` figures, or None.

    Returns:
        Two target rows (see the module docstring): int8 bytes (`<=` `SIZE_TARGET`) and int8 speed-up
        (`>=` `SPEED_TARGET`), "not measured" without figures.

    Example:
    ```python
    [t["verdict"] for t in measured_targets(report["comparison"]["like_for_like"]["student"])]
    ```
    """
    int8 = (ratios or {}).get(TARGET_VARIANT) or {}
    size = int8.get("size_ratio")
    cpu = (int8.get("cpu_speedup") or {}).get("1")
    speed = cpu if cpu is not None else (int8.get("speedup") or {}).get("1")
    clock = "CPU time of the interpreter thread" if cpu is not None else "wall time"
    rows = []
    for name, value, threshold, direction, evidence in (
        (
            "student int8 .tflite bytes / teacher int8 .tflite bytes",
            size,
            SIZE_TARGET,
            "<=",
            "file sizes, both dynamic-range int8 without metadata",
        ),
        (
            "teacher int8 LiteRT latency / student int8 LiteRT latency (batch 1, 1 thread)",
            speed,
            SPEED_TARGET,
            ">=",
            f"{clock}, best round median, the models taking turns",
        ),
    ):
        if value is None:
            verdict = "not measured"
        else:
            verdict = "met" if (value <= threshold if direction == "<=" else value >= threshold) else "missed"
        rows.append(
            {
                "name": name,
                "value": value,
                "interval": None,
                "threshold": threshold,
                "direction": direction,
                "verdict": verdict,
                "evidence": evidence if value is not None else "not measured",
            }
        )
    return rows


__all__ = ["SIZE_TARGET", "SPEED_TARGET", "TARGET_VARIANT", "measured_targets", "targets"]
