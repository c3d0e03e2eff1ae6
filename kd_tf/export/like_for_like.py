"""A teacher beside an export, like for like: its `.tflite` files timed in turns with the student's.

`export_student(..., teacher=...)` reports how much smaller and faster the student is than its teacher, and
only between files of the same variant: the teacher is converted to the float32 and dynamic-int8 variants
the export writes (or its files are given), both are timed at batch 1 in LiteRT at the same thread counts,
taking turns (`interleaved_latency_ms`), and the sizes compare the files without the MediaPipe metadata
only the student's carry.
"""

from __future__ import annotations

import os
import shutil

from kd_tf.classify.evaluate import LIKE_FOR_LIKE_VARIANTS, like_for_like
from kd_tf.export.checks import load_student
from kd_tf.export.litert import convert_variants, interleaved_latency_ms, tokenize
from kd_tf.export.report import VARIANTS, ExportError


def check_teacher(teacher, teacher_preprocessor, preprocessor, num_labels, seq_length, variants):
    """Step 1 for the teacher: its Keras classifier or `{variant: .tflite path}`, and its preprocessor.

    Args:
        teacher: None, a Keras classifier, the path of its `.keras` file (loaded with
            `kd_tf.export.checks.load_student`: safe mode, no remote handles) or `{variant: .tflite path}`.
        teacher_preprocessor: its preprocessor (handle, folder or `HubPreprocessor`), or None for the
            student's.
        preprocessor: the student's `HubPreprocessor`.
        num_labels: the student's number of labels.
        seq_length: the export's sequence length.
        variants: the export's variants.

    Returns:
        `(teacher, HubPreprocessor)`, or `(None, None)` without a teacher.

    Raises:
        ExportError: for missing files, an unknown variant, another label count or another kind of object.

    Example:
    ```python
    check_teacher("teacher/model.keras", None, pre, 2, 128, ("float32", "dynamic_int8"))
    ```
    """
    import keras

    from kd_tf.bert import HubPreprocessor

    if teacher is None:
        return None, None
    if isinstance(teacher, (str, os.PathLike)):
        teacher = load_student(teacher)
    if isinstance(teacher, dict):
        missing = [f"{v}: {p}" for v, p in teacher.items() if not os.path.isfile(p)]
        unknown = [v for v in teacher if v not in VARIANTS]
        if missing or unknown:
            raise ExportError(
                f"teacher files {missing or unknown} not found or not a variant of {list(VARIANTS)}; pass "
                f"the teacher's .tflite files as {{variant: path}}, or its Keras model."
            )
    elif isinstance(teacher, keras.Model):
        if tuple(teacher.outputs[0].shape)[-1] != num_labels:
            raise ExportError(
                f"the teacher has {tuple(teacher.outputs[0].shape)[-1]} outputs but the student "
                f"{num_labels}: pass the teacher of this student."
            )
    else:
        raise ExportError(
            f"teacher is a {type(teacher).__name__}; pass its Keras classifier, the path of its .keras file, "
            f"or its .tflite files as {{variant: path}}."
        )
    if teacher_preprocessor is None:
        return teacher, preprocessor
    handle = getattr(teacher_preprocessor, "handle", teacher_preprocessor)
    return teacher, HubPreprocessor(os.fspath(handle), seq_length=seq_length)


def time_tflite(plan, tmp, first, report, limits):
    """Step 5b of `export_student`: LiteRT latency of every variant and of the teacher's files, in turns.

    Fills each `report.tflite[variant]` with `latency_ms` and `cpu_ms` and, with a teacher,
    `report.teacher` and `report.like_for_like` (ratios between files of the same variant only).

    Args:
        plan: the export's plan (`plan.teacher`, `plan.teacher_preprocessor`, `plan.sample_texts`, ...).
        tmp: the folder being written (the student's files; a Keras teacher is converted into
            `tmp/.teacher_tflite`, removed afterwards).
        first: the student's inputs of the first sample text (`[1, seq_length]` each).
        report: the `ExportReport`.
        limits: `latency_runs` and `latency_rounds`.

    Example:
    ```python
    time_tflite(plan, tmp, first, report, limits)
    report.like_for_like["dynamic_int8"]["speedup"]["1"]  # 4.3
    ```
    """
    plan.log("LiteRT latency ...")
    timed = {("student", v): (os.path.join(tmp, r["path"]), first) for v, r in report.tflite.items()}
    teacher_files, source = _teacher_files(plan, tmp)
    if teacher_files:
        row = tokenize(plan.teacher_preprocessor, plan.sample_texts[:1])
        timed.update({("teacher", v): (path, row) for v, path in teacher_files.items()})
    times = interleaved_latency_ms(
        {f"{who}/{v}": value for (who, v), value in timed.items()},
        rounds=limits.latency_rounds,
        runs=limits.latency_runs,
    )
    for variant, result in report.tflite.items():
        result.update(times[f"student/{variant}"])
    if teacher_files:
        report.teacher = {
            "source": source,
            "tflite": {
                v: {"size_bytes": os.path.getsize(p), **times[f"teacher/{v}"]}
                for v, p in teacher_files.items()
            },
        }
        student = {v: {**r, "size_bytes": r["model_bytes"]} for v, r in report.tflite.items()}
        report.like_for_like = like_for_like(report.teacher["tflite"], student)
    shutil.rmtree(os.path.join(tmp, ".teacher_tflite"), ignore_errors=True)


def _teacher_files(plan, tmp):
    """The teacher's `.tflite` files by variant (a Keras teacher converted into `tmp`), and their source."""
    if plan.teacher is None:
        return {}, None
    if isinstance(plan.teacher, dict):
        return {v: os.fspath(p) for v, p in plan.teacher.items() if v in plan.variants}, "files given"
    folder = os.path.join(tmp, ".teacher_tflite")
    variants = [v for v in LIKE_FOR_LIKE_VARIANTS if v in plan.variants]
    plan.log(f"teacher TFLite {', '.join(variants)} ...")
    files = {}
    for variant, model in convert_variants(plan.teacher, plan.seq_length, variants, folder):
        files[variant] = os.path.join(folder, f"teacher_{variant}.tflite")
        with open(files[variant], "wb") as f:
            f.write(model)
    return files, f"converted from the Keras model {plan.teacher.name!r}"


__all__ = ["check_teacher", "time_tflite"]
