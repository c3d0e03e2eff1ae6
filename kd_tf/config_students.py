"""The shape of a student cut from its teacher, checked before anything trains; the students of a sweep.

`check_student_shape` holds the rules of `kd_tf.bert.narrow` and `write_student_from_teacher` (distinct
blocks that exist, sizes no larger than the teacher's, heads that divide the width and are no wider than
the teacher's). `kd_tf.config` applies it when a config is read, for teachers whose shape it knows; the run
applies it again to a local teacher's recorded shape before the teacher trains. `sweep_student` resolves one
student of a sweep over the `student` section, and `check_sweep` checks them all.
"""

from __future__ import annotations

import dataclasses

from kd_tf.config_parse import ConfigError

SHAPE_KEYS = ("init_layers", "hidden_size", "num_heads", "intermediate_size", "vocabulary")
"""The student keys a sweep student sets (the others come from the `student` section)."""
_NAME_CHARACTERS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


def fail(key, message):
    """Raises `ConfigError("<key>: <message>")`."""
    raise ConfigError(f"{key}: {message}")


def check_student_shape(shape, teacher_shape=None, teacher="the teacher", key="student", num_layers=None):
    """Raises ConfigError for a student shape that cannot be cut or sliced from the teacher.

    The rules of `kd_tf.bert.narrow` and `write_student_from_teacher`, checked before anything trains:
    distinct blocks that exist, sizes no larger than the teacher's, heads that divide the width and are no
    wider than the teacher's heads.

    Args:
        shape: a `StudentConfig` (its `init_layers`, `hidden_size`, `num_heads`, `intermediate_size`).
        teacher_shape: the teacher's `num_layers`, `hidden_size`, `num_heads`, `intermediate_size`, or None
            when unknown (then only what needs no teacher is checked).
        teacher: the teacher's name, for messages.
        key: the config key of `shape`, for messages (`"sweep.students[2]"`).
        num_layers: a sweep student's depth instead of `init_layers`.

    Raises:
        ConfigError: naming the key, the value and what would work.

    Example:
    ```python
    check_student_shape(config.student, TEACHER_SHAPES["kd-tf:all-MiniLM-L6-v2"])  # None, or raises
    ```
    """
    t = teacher_shape or {}
    layers = shape.init_layers
    if layers and len(set(layers)) != len(layers):
        repeated = sorted({i for i in layers if layers.count(i) > 1})
        fail(f"{key}.init_layers", f"{layers} repeats {repeated}; give each teacher block once.")
    depth = t.get("num_layers")
    if layers and depth is not None and max(layers) >= depth:
        fail(
            f"{key}.init_layers",
            f"{layers} names block {max(layers)}, but the teacher {teacher} has {depth} blocks "
            f"(0..{depth - 1}).",
        )
    if num_layers is not None and depth is not None and num_layers > depth:
        fail(f"{key}.num_layers", f"{num_layers} is more than the {depth} blocks of the teacher {teacher}.")
    width, heads = t.get("hidden_size"), t.get("num_heads")
    head_size = width // heads if width and heads else None
    hidden = shape.hidden_size if shape.hidden_size is not None else width
    for name, limit in (
        ("hidden_size", width),
        ("num_heads", heads),
        ("intermediate_size", t.get("intermediate_size")),
    ):
        value = getattr(shape, name)
        if value is not None and limit is not None and value > limit:
            fail(
                f"{key}.{name}",
                f"{value} is more than the teacher {teacher}'s {limit}: a student sliced from it needs 1 "
                f"to {limit}.",
            )
    if shape.num_heads is not None and hidden is not None and hidden % shape.num_heads:
        fail(
            f"{key}.num_heads",
            f"{shape.num_heads} heads do not divide hidden_size {hidden}; choose a divisor.",
        )
    if shape.num_heads is None and shape.hidden_size is not None and head_size:
        whole = hidden % head_size == 0 and hidden // head_size <= heads
        if not whole and hidden % heads:
            fail(
                f"{key}.num_heads",
                f"choose it for hidden_size {hidden}: {hidden} divides neither by the teacher's head size "
                f"{head_size} nor by its {heads} heads.",
            )
    if (
        shape.num_heads is not None
        and hidden is not None
        and head_size
        and hidden // shape.num_heads > head_size
    ):
        fail(
            f"{key}.num_heads",
            f"{shape.num_heads} heads of {hidden // shape.num_heads} dimensions are wider than the "
            f"teacher's heads of {head_size}; use at least {-(-hidden // head_size)} heads.",
        )


def check_vocabulary(vocabulary, key):
    """Raises ConfigError unless a `VocabularyConfig` (or None) gives exactly one of top_k and coverage.

    Example:
    ```python
    check_vocabulary(config.student.vocabulary, "student.vocabulary")
    ```
    """
    if vocabulary is not None and (vocabulary.top_k is None) == (vocabulary.coverage is None):
        fail(
            key,
            "give exactly one of top_k (a number of wordpieces) and coverage (a fraction), e.g. "
            "{top_k: 8000}.",
        )


def sweep_student(config, spec):
    """The student section of one sweep student: its shape keys over the `student` section's.

    Args:
        config: a `RunConfig`.
        spec: one of `config.sweep.students`.

    Returns:
        A `StudentConfig`; `init_layers` is None when the spec gives `num_layers` (the run spreads them
        over the teacher's blocks once it knows the teacher's depth).

    Example:
    ```python
    sweep_student(config, config.sweep.students[0]).hidden_size  # 256
    ```
    """
    values = {k: getattr(spec, k) for k in SHAPE_KEYS if getattr(spec, k) is not None}
    if spec.num_layers is not None:
        values["init_layers"] = None
    return dataclasses.replace(config.student, **values)


def check_sweep(config, teacher_shape=None):
    """Raises ConfigError for a sweep student without a plain unique name or with an impossible shape.

    Args:
        config: a `RunConfig`.
        teacher_shape: the teacher's shape if known (see `check_student_shape`).

    Example:
    ```python
    check_sweep(config, TEACHER_SHAPES.get(config.teacher.encoder))
    ```
    """
    names = set()
    teacher = config.teacher.encoder
    for i, spec in enumerate(config.sweep.students):
        key = f"sweep.students[{i}]"
        name = spec.name
        if not name or name in (".", "..", "teacher") or not set(name) <= _NAME_CHARACTERS or len(name) > 64:
            fail(
                f"{key}.name",
                f"{name!r}: give each student a plain name (1 to 64 letters, digits, '.', '_' or '-'; not "
                f"'teacher'): it names its folder sweep/<name>.",
            )
        if name in names:
            fail(f"{key}.name", f"{name!r} names two students; give each its own name.")
        names.add(name)
        if config.student.encoder is not None:
            fail(
                "sweep.students", "the sweep's students are cut from the teacher: set student.encoder: null."
            )
        if spec.init_layers is not None and spec.num_layers is not None:
            fail(key, "give init_layers or num_layers, not both.")
        check_vocabulary(spec.vocabulary, f"{key}.vocabulary")
        check_student_shape(
            sweep_student(config, spec), teacher_shape, teacher, key, num_layers=spec.num_layers
        )


__all__ = ["SHAPE_KEYS", "check_student_shape", "check_sweep", "check_vocabulary", "fail", "sweep_student"]
