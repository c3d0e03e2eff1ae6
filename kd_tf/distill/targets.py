"""What a training batch carries: labels, cached teacher outputs, unlabelled examples.

Targets are the label tensor, or a dict `{"labels": y, "teacher_outputs": {"logits": t, ...}}` when the
teacher's outputs travel with the batch (`with_teacher_outputs` builds it; `labels` may be absent for an
unlabeled transfer set).

One rule for unlabelled examples: an example is unlabelled when its batch has no labels, or when its
sparse label is negative (`UNLABELED`, -1). It learns from the teacher alone: it adds nothing to the
hard-label loss (which is averaged over the labelled examples only, as Keras's `ignore_class` does) or to
the label metrics, and counts in the distillation and feature losses like any other example.
"""

import tensorflow as tf

LABELS = "labels"
TEACHER_OUTPUTS = "teacher_outputs"
LOGITS = "logits"

UNLABELED = -1
"""Label id of an unlabelled example inside a labelled batch (sparse class ids only)."""


def with_teacher_outputs(labels, teacher_outputs):
    """Targets that carry the teacher's outputs next to (optional) labels.

    Args:
        labels: Label tensor, or None for an unlabeled example/batch.
        teacher_outputs: Dict of teacher outputs, at least `{"logits": ...}` (`[C]` per example, `[K, C]`
            for K teachers), plus any feature the distiller's `FeatureMatch`es name.

    Returns:
        The dict `{"labels": labels, "teacher_outputs": teacher_outputs}` (without `labels` if None).

    Example:
    ```python
    ds = ds.map(lambda x, y, t: (x, with_teacher_outputs(y, {"logits": t})))
    ```
    """
    targets = {TEACHER_OUTPUTS: dict(teacher_outputs)}
    if labels is not None:
        targets[LABELS] = labels
    return targets


def split_targets(y):
    """`(labels, teacher_outputs)` from targets (`teacher_outputs` is None when not carried).

    Args:
        y: The label tensor, targets from `with_teacher_outputs`, or None.

    Returns:
        `(labels or None, dict of teacher outputs or None)`.

    Example:
    ```python
    labels, carried = split_targets(with_teacher_outputs([0, 1], {"logits": t}))
    ```
    """
    if isinstance(y, dict) and TEACHER_OUTPUTS in y:
        return y.get(LABELS), y[TEACHER_OUTPUTS]
    return y, None


def is_probability_rows(labels, logits):
    """Whether `labels` are rows of class probabilities (one-hot or soft, float, shaped like `logits`)
    rather than sparse class ids.

    Example:
    ```python
    is_probability_rows(tf.constant([[0.0, 1.0]]), tf.zeros([1, 2]))  # True
    ```
    """
    if labels.shape.rank is None:
        return False
    return (
        labels.shape.rank == logits.shape.rank
        and labels.shape[-1] == logits.shape[-1]
        and labels.dtype.is_floating
    )


def standardize_labels(labels, logits):
    """Labels in the shape the losses and metrics expect, and which examples carry one.

    Sparse class ids (`[B]`, `[B, 1]`, or labels whose rank a relaxed retrace made unknown) are reshaped to
    the logits' shape without the class axis (`[B]`, or `[B, T]` for per-token logits); a negative id
    (`UNLABELED`) marks an unlabelled example. Rows of class probabilities are all labelled.

    Args:
        labels: Label tensor.
        logits: The student's logits `[B, C]` (or `[B, T, C]`).

    Returns:
        `(labels, mask)`: `mask` is a bool tensor shaped like `logits` without the class axis, True where
        the example is labelled, or None when every example is (probability rows).

    Raises:
        ValueError: If the labels fit neither form, or are floats of unknown rank (a distiller that saw
            float labels of two different shapes); the message says what to pass.

    Example:
    ```python
    labels, mask = standardize_labels(tf.constant([[1], [-1]]), tf.zeros([2, 3]))  # [1, -1], [True, False]
    ```
    """
    labels = tf.convert_to_tensor(labels)
    if is_probability_rows(labels, logits):
        return labels, None
    if labels.shape.rank is None and labels.dtype.is_floating:
        raise ValueError(
            "The labels have an unknown rank: this distiller was given float labels of different shapes "
            f"(e.g. [B] and [B, 1]). Give integer class ids, or one label shape per distiller; the "
            f"student's logits are {logits.shape}."
        )
    target = logits.shape[:-1]
    if labels.shape.rank is not None and target.is_fully_defined() and labels.shape.is_fully_defined():
        if labels.shape.num_elements() != target.num_elements():
            raise ValueError(
                f"Labels of shape {labels.shape} do not fit the student's logits {logits.shape}: give one "
                f"class id per example ({target} or {target + [1]}), -1 for an unlabelled example, or "
                "one row of class probabilities per example (same shape as the logits)."
            )
    labels = tf.ensure_shape(tf.reshape(labels, tf.shape(logits)[:-1]), target)
    zero = tf.zeros((), labels.dtype)
    return labels, tf.greater_equal(labels, zero)


__all__ = [
    "LABELS",
    "LOGITS",
    "TEACHER_OUTPUTS",
    "UNLABELED",
    "is_probability_rows",
    "split_targets",
    "standardize_labels",
    "with_teacher_outputs",
]
