"""The hard-label loss: cross-entropy of student logits against class ids, or next-token ids.

For a classifier, `labels` are `[B]` class ids (or one-hot rows); for a causal LM, `[B, T]` next-token ids
against `[B, T, V]` logits: next-token cross-entropy, one value per token, which `kd_tf.Distiller` weighs
with the batch's `[B, T]` sample weights (padding and prompt tokens weigh 0). A negative id (`-1`,
`kd_tf.distill.UNLABELED`) adds nothing.
"""

import keras
from keras import ops

from kd_tf.distill.distributions import reduce_tokens, to_float32


def hard_label_cross_entropy(labels, student, mask=None, per_token=False):
    """Cross-entropy of student logits against hard labels, one value per example.

    For a causal LM, `labels` `[B, T]` are the next-token ids and `student` `[B, T, V]` the logits: this is
    next-token cross-entropy.

    Args:
        labels: Integer class ids `[B]` / `[B, 1]` (or `[B, T]` with per-token logits), or one-hot /
            soft label rows `[B, C]` (float, same shape as `student`).
        student: Student logits `[B, C]` or `[B, T, C]`.
        mask: Optional `[B, T]` padding mask for per-token logits.
        per_token: For per-token logits, return `[B, T]` values instead of the masked mean over tokens.

    Returns:
        Float32 tensor `[B]` (or `[B, T]` with `per_token`).

    Example:
    ```python
    hard_label_cross_entropy([0], [[0.0, 0.0]])  # ln 2 = 0.693147
    ```
    """
    student = to_float32(student)
    labels = ops.convert_to_tensor(labels)
    log_p = ops.log_softmax(student, axis=-1)
    if (
        len(labels.shape) == len(student.shape)
        and labels.shape[-1] == student.shape[-1]
        and ("float" in str(labels.dtype))
    ):
        values = -ops.sum(to_float32(labels) * log_p, axis=-1)
    else:
        if len(labels.shape) == len(student.shape):  # [B, 1]
            labels = ops.squeeze(labels, axis=-1)
        labels = ops.cast(labels, "int32")
        index = ops.expand_dims(ops.clip(labels, 0, student.shape[-1] - 1), -1)
        values = -ops.squeeze(ops.take_along_axis(log_p, index, axis=-1), axis=-1)
        values = ops.where(labels >= 0, values, 0.0)  # an unlabelled (-1) id adds nothing
    return reduce_tokens(values, mask, per_token)


@keras.saving.register_keras_serializable(package="kd_tf")
class HardLabelCrossEntropy(keras.losses.Loss):
    """Cross-entropy of student logits against hard labels (sparse ids or one-hot rows).

    Args:
        reduction: Keras reduction.
        name: Loss name.

    Example:
    ```python
    HardLabelCrossEntropy()([0, 1], [[2.0, 0.0], [0.0, 2.0]])
    ```
    """

    def __init__(self, reduction="sum_over_batch_size", name="hard_label_cross_entropy"):
        super().__init__(name=name, reduction=reduction, dtype="float32")

    def call(self, y_true, y_pred):
        return hard_label_cross_entropy(y_true, y_pred, per_token=True)

    def get_config(self):
        config = super().get_config()
        config.pop("dtype", None)
        return config


__all__ = ["HardLabelCrossEntropy", "hard_label_cross_entropy"]
