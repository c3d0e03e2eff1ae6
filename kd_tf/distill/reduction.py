"""How a `Distiller` averages per-unit losses over a batch, the same on one device and on many.

A unit is one value of the student's logits without the class axis: an example for a classifier's
`[B, C]` logits, a token for a causal LM's `[B, T, V]` logits (sample weights `[B, T]`; example weights
`[B]` repeat over the example's tokens). Every part of the loss is a sum over the *global* batch divided by
a global count:

* the distillation and feature parts: `sum_u w_u * l_u / U` (Keras's "sum over batch size"; `w_u` is the
  sample weight, 1 without one; `U` the number of units);
* the hard-label part: `sum_u w_u * m_u * l_u / sum_u m_u` where `m_u` is 1 for a labelled unit
  (Keras's `ignore_class` rule): unlabelled units neither add to it nor dilute it.

A unit of weight 0 adds exactly 0 (a padded token's value is never read, even if it is not finite).
Under `tf.distribute` each replica divides its own sum by the global count (an all-reduce of the counts),
and the optimizer sums the replicas' gradients, so a batch split unevenly, or leaving a replica empty,
gives exactly the single-device loss and update. Every division is `divide_no_nan`: a batch without a
labelled unit has a hard-label loss of 0, never NaN.
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


def _to_units(values, unit_shape, rank):
    """`values` shaped like the units: per-example `[B]` values repeat over a unit's tokens, extra trailing
    axes are averaged, and `[B, 1]` becomes `[B]`."""
    values = tf.cast(values, tf.float32)
    value_rank = values.shape.rank
    if value_rank == rank == 1:
        return values  # one value per example already (a batch size that differs fails in the product)
    if value_rank is None or value_rank == rank:
        return tf.reshape(values, unit_shape)
    if value_rank > rank:
        values = tf.reshape(values, tf.concat([unit_shape, [-1]], 0))
        if values.shape[-1] == 1:
            return tf.squeeze(values, -1)
        return tf.reduce_mean(values, axis=-1)
    values = tf.reshape(values, tf.concat([tf.shape(values), tf.ones([rank - value_rank], tf.int32)], 0))
    return tf.broadcast_to(values, unit_shape)


def unit_weights(sample_weight, unit_shape):
    """Sample weights shaped like the units of a batch: `[B, T]` token weights as they are, `[B]` example
    weights repeated over each example's tokens, `[B, 1]` squeezed to `[B]`.

    Args:
        sample_weight: Float tensor `[B]`, `[B, 1]` or `[B, T]`.
        unit_shape: The units' shape (`tf.shape(logits)[:-1]`): `[B]` or `[B, T]`.

    Returns:
        Float32 tensor of shape `unit_shape`.

    Example:
    ```python
    unit_weights(tf.constant([1.0, 0.0]), tf.constant([2, 3]))  # [[1, 1, 1], [0, 0, 0]]
    ```
    """
    unit_shape = tf.convert_to_tensor(unit_shape, tf.int32)
    return _to_units(sample_weight, unit_shape, int(unit_shape.shape[0]))


class BatchReduction:
    """The counts of one (replica's part of a) batch and the means built from them.

    The unit of every average is one value of the student's logits without the class axis: an example for
    `[B, C]` logits, a token for a causal LM's `[B, T, V]` logits. With tokens as units the distillation
    parts are `sum_{i,t} w_it * l_it / (B * T)` and the hard part `sum w * m * l / sum m`: with every label
    a real id (`m = 1`) that is exactly the loss of KerasHub's `CausalLM.compile()` (Keras's sparse
    cross-entropy, "sum over batch size", with the windows' `[B, T]` sample weights).

    Args:
        units: The units' shape, `tf.shape(logits)[:-1]` (a 1-D tensor of static length), or a scalar
            batch size (examples as units).
        sample_weight: Optional weights, `[B]` (per example, repeated over its tokens) or one per unit.
        labelled: Optional bool tensor shaped like the units, True where the unit has a label; None means
            all are.

    Attributes:
        local_count: Units on this replica (float32 scalar).
        local_labelled: Labelled units on this replica (float32 scalar).

    Example:
    ```python
    r = BatchReduction(tf.shape(logits)[:-1], sample_weight, mask)
    hard = r.labelled_mean(per_unit_cross_entropy)
    soft = r.mean(per_unit_kl)
    ```
    """

    def __init__(self, units, sample_weight=None, labelled=None):
        units = tf.cast(tf.convert_to_tensor(units), tf.int32)
        self.unit_shape = tf.reshape(units, [-1])
        self.rank = 1 if units.shape.rank == 0 else int(units.shape[0])
        self.local_count = tf.cast(tf.reduce_prod(self.unit_shape), tf.float32)
        self.count = replica_sum(self.local_count)
        self.weights = self._weighted = None
        if sample_weight is not None:
            self.weights = tf.reshape(_to_units(sample_weight, self.unit_shape, self.rank), [-1])
            self._weighted = self.weights != 0
        self.labelled = None if labelled is None else tf.cast(tf.reshape(labelled, [-1]), tf.float32)
        if self.labelled is None:
            self.local_labelled, self.labelled_count = self.local_count, self.count
        else:
            self.local_labelled = tf.reduce_sum(self.labelled)
            self.labelled_count = replica_sum(self.local_labelled)

    def _weighted_sum(self, values, mask=None):
        values = tf.reshape(_to_units(values, self.unit_shape, self.rank), [-1])
        if self.weights is not None:
            values = tf.where(self._weighted, values * self.weights, 0.0)
        if mask is not None:
            values = tf.where(mask > 0, values, 0.0)  # no 0 * inf = NaN from masked rows
        return tf.reduce_sum(values)

    def mean(self, values):
        """This replica's share of the batch mean: `sum_local(w * v) / units_global` (`[B]` values of
        per-token units repeat over each example's tokens)."""
        return tf.math.divide_no_nan(self._weighted_sum(values), self.count)

    def labelled_mean(self, values):
        """This replica's share of the mean over labelled units: `sum_local(w * m * v) / M_global`."""
        return tf.math.divide_no_nan(self._weighted_sum(values, self.labelled), self.labelled_count)

    def share(self, scalar):
        """This replica's share of a term that is already a batch mean (a plug-in's scalar)."""
        return tf.cast(scalar, tf.float32) * tf.math.divide_no_nan(self.local_count, self.count)


__all__ = ["BatchReduction", "replica_sum", "unit_weights"]
