"""How a `Distiller` averages per-example losses over a batch, the same on one device and on many.

Every part of the loss is a sum over the *global* batch divided by a global count:

* the distillation and feature parts: `sum_i w_i * l_i / B` (Keras's "sum over batch size"; `w_i` is the
  sample weight, 1 without one);
* the hard-label part: `sum_i w_i * m_i * l_i / sum_i m_i` where `m_i` is 1 for a labelled example
  (Keras's `ignore_class` rule): unlabelled examples neither add to it nor dilute it.

Under `tf.distribute` each replica divides its own sum by the global count (an all-reduce of the counts),
and the optimizer sums the replicas' gradients, so a batch split unevenly, or leaving a replica empty,
gives exactly the single-device loss and update. Every division is `divide_no_nan`: a batch without a
labelled example has a hard-label loss of 0, never NaN.
"""

import tensorflow as tf


def replica_sum(value):
    """The sum of `value` over the replicas in sync (the value itself on one device or outside a replica).

    Args:
        value: A tensor.

    Returns:
        A tensor of the same shape.

    Example:
    ```python
    total = replica_sum(tf.cast(tf.shape(logits)[0], "float32"))   # the global batch size
    ```
    """
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return value
    return context.all_reduce(tf.distribute.ReduceOp.SUM, value)


class BatchReduction:
    """The counts of one (replica's part of a) batch and the means built from them.

    Args:
        batch_size: Number of examples on this replica (a scalar tensor).
        sample_weight: Optional per-example weights (any shape with `batch_size` elements).
        labelled: Optional bool tensor `[B]`, True where the example has a label; None means all are.

    Attributes:
        local_count: Examples on this replica (float32 scalar).
        local_labelled: Labelled examples on this replica (float32 scalar).

    Example:
    ```python
    r = BatchReduction(tf.shape(logits)[0], sample_weight, mask)
    hard = r.labelled_mean(per_example_cross_entropy)
    soft = r.mean(per_example_kl)
    ```
    """

    def __init__(self, batch_size, sample_weight=None, labelled=None):
        self.local_count = tf.cast(batch_size, tf.float32)
        self.count = replica_sum(self.local_count)
        self.weights = None if sample_weight is None else tf.reshape(tf.cast(sample_weight, tf.float32), [-1])
        self.labelled = None if labelled is None else tf.cast(tf.reshape(labelled, [-1]), tf.float32)
        if self.labelled is None:
            self.local_labelled, self.labelled_count = self.local_count, self.count
        else:
            self.local_labelled = tf.reduce_sum(self.labelled)
            self.labelled_count = replica_sum(self.local_labelled)

    def _weighted_sum(self, per_example, mask=None):
        values = tf.reshape(tf.cast(per_example, tf.float32), [-1])
        if self.weights is not None:
            values = values * self.weights
        if mask is not None:
            values = tf.where(mask > 0, values, tf.zeros_like(values))  # no 0 * inf = NaN from masked rows
        return tf.reduce_sum(values)

    def mean(self, per_example):
        """This replica's share of the batch mean of `[B]` values: `sum_local(w * v) / B_global`."""
        return tf.math.divide_no_nan(self._weighted_sum(per_example), self.count)

    def labelled_mean(self, per_example):
        """This replica's share of the mean over labelled examples: `sum_local(w * m * v) / M_global`."""
        return tf.math.divide_no_nan(self._weighted_sum(per_example, self.labelled), self.labelled_count)

    def share(self, scalar):
        """This replica's share of a term that is already a batch mean (a plug-in's scalar)."""
        return tf.cast(scalar, tf.float32) * tf.math.divide_no_nan(self.local_count, self.count)


__all__ = ["BatchReduction", "replica_sum"]
