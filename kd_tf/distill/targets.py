"""What a training batch carries: labels, cached teacher outputs, unlabelled examples.

Targets are the label tensor, or a dict `{"labels": y, "teacher_outputs": {"logits": t, ...}}` when the
teacher's outputs travel with the batch (`with_teacher_outputs` builds it; `labels` may be absent for an
unlabeled transfer set). Inside a labelled batch, sparse label `UNLABELED` (-1) marks an example that
learns from the teacher alone.
"""

import keras
from keras import ops

LABELS = "labels"
TEACHER_OUTPUTS = "teacher_outputs"
LOGITS = "logits"

UNLABELED = -1
"""Label id of an unlabelled example inside a labelled batch (sparse integer labels only)."""


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
    """`(labels, teacher_outputs)` from targets (`teacher_outputs` is None when not carried)."""
    if isinstance(y, dict) and TEACHER_OUTPUTS in y:
        return y.get(LABELS), y[TEACHER_OUTPUTS]
    return y, None


def labeled_mask(labels):
    """`labels >= 0` for sparse integer labels `[B]`, else None (one-hot rows are all labelled)."""
    if labels is None or len(labels.shape) != 1 or "int" not in keras.backend.standardize_dtype(labels.dtype):
        return None
    return ops.greater_equal(labels, 0)


__all__ = [
    "LABELS",
    "LOGITS",
    "TEACHER_OUTPUTS",
    "UNLABELED",
    "labeled_mask",
    "split_targets",
    "with_teacher_outputs",
]
