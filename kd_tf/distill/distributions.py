"""Softened distributions of teachers and students, and how per-token values become per-example values.

The functional core every logits loss (`kd_tf.distill.losses`, `kd_tf.distill.sparse`) and feature match
(`kd_tf.distill.features`) builds on:

* `softened_log_probs`: `log softmax(logits / T)` in float32, from `log_softmax` (never `log(softmax)`), so
  it stays finite for large logits;
* `teacher_log_probs`: the same for one teacher, or the weighted average of several teachers' softened
  distributions (a log-sum-exp), from a list of `[B, C]` tensors or a `[B, K, C]` tensor;
* `teacher_mean_logits`: the weighted mean of several teachers' logits (MSE on logits);
* `reduce_tokens`: per-token values `[B, T]` to per-example values `[B]` (masked mean over tokens), or kept
  per token for a caller that weighs tokens itself (`kd_tf.Distiller`).
"""

import math

from keras import ops

EPSILON = 1e-7


def to_float32(x):
    """`x` as a float32 tensor.

    Example:
    ```python
    to_float32([1, 2]).dtype  # float32
    ```
    """
    return ops.cast(x, "float32")


def as_log_probs_input(x, from_logits):
    """Logits as given, or the log of clipped probabilities (which are valid logits).

    Example:
    ```python
    as_log_probs_input([[0.5, 0.5]], from_logits=False)  # [[log 0.5, log 0.5]]
    ```
    """
    x = to_float32(x)
    if from_logits:
        return x
    return ops.log(ops.clip(x, EPSILON, 1.0))


def _stack_teachers(teacher):
    """Returns (teacher logits [B, C] or [B, K, C], is_multi)."""
    if isinstance(teacher, (list, tuple)):
        first = teacher[0]
        if hasattr(first, "shape") and len(first.shape) >= 1:  # one tensor per teacher
            if len(teacher) == 1:
                return first, False
            return ops.stack([to_float32(t) for t in teacher], axis=1), True
        return ops.convert_to_tensor(teacher, "float32"), False  # nested Python lists: one teacher
    return teacher, False


def _infer_multi(stacked, teacher_weights):
    """Whether teacher logits hold several teachers when the caller did not say: a list of tensors, or
    more than one teacher weight (a single weight, `[1.0]`, means one teacher)."""
    return stacked or (teacher_weights is not None and len(teacher_weights) > 1)


def normalized_weights(teacher_weights, num_teachers):
    """One weight per teacher, normalised to sum 1 (equal weights when None).

    Raises:
        ValueError: If the count is wrong, a weight is negative or they sum to 0.

    Example:
    ```python
    normalized_weights([1, 3], 2)  # [0.25, 0.75]
    ```
    """
    if teacher_weights is None:
        teacher_weights = [1.0] * num_teachers
    if len(teacher_weights) != num_teachers:
        raise ValueError(
            f"Got {len(teacher_weights)} teacher_weights for {num_teachers} teachers; "
            "pass one weight per teacher."
        )
    if any(w < 0 for w in teacher_weights) or sum(teacher_weights) <= 0:
        raise ValueError(
            f"teacher_weights must be non-negative with a positive sum, got {list(teacher_weights)}."
        )
    total = float(sum(teacher_weights))
    return [float(w) / total for w in teacher_weights]


def softened_log_probs(logits, temperature=1.0):
    """Log of `softmax(logits / temperature)`, computed stably in float32.

    Args:
        logits: Tensor `[..., C]`.
        temperature: Positive float or scalar tensor.

    Returns:
        Float32 tensor of the same shape holding log-probabilities.

    Example:
    ```python
    float(ops.exp(softened_log_probs([[0.0, 0.0]], 2.0))[0, 0])
    # -> 0.5
    ```
    """
    return ops.log_softmax(to_float32(logits) / ops.cast(temperature, "float32"), axis=-1)


def teacher_log_probs(teacher, temperature=1.0, teacher_weights=None, from_logits=True, multi=None):
    """Log-probabilities of the (weighted average of the) teachers' softened distributions.

    Args:
        teacher: Teacher logits `[B, C]`, or several teachers as a list of `[B, C]` tensors (or arrays;
            a nested Python list of numbers is one teacher) or a
            `[B, K, C]` tensor (then pass `multi=True`, or two or more `teacher_weights`).
        temperature: Softmax temperature.
        teacher_weights: One non-negative weight per teacher (normalized to sum 1); default equal.
        from_logits: Whether `teacher` holds logits (True) or probabilities (False).
        multi: Whether a rank-3 `teacher` tensor is `[B, K, C]` (several teachers) rather than
            `[B, T, C]` (one teacher, per-token logits). Defaults to True for a list of tensors or more
            than one teacher weight. `kd_tf.Distiller` always passes it, from the ranks of the teacher's
            and the student's logits.

    Returns:
        Float32 log-probabilities `[B, C]` (or `[B, T, C]`).

    Raises:
        ValueError: For teacher weights that do not fit the teachers.

    Example:
    ```python
    lp = teacher_log_probs([[[0.0, 0.0]], [[10.0, -10.0]]], teacher_weights=[1, 1])
    ```
    """
    teacher, stacked = _stack_teachers(teacher)
    if multi is None:
        multi = _infer_multi(stacked, teacher_weights)
    logits = as_log_probs_input(teacher, from_logits)
    log_p = softened_log_probs(logits, temperature)
    if not multi:
        return log_p
    num_teachers = log_p.shape[1]
    weights = normalized_weights(teacher_weights, num_teachers)
    log_w = ops.reshape(
        ops.convert_to_tensor([math.log(w) if w > 0 else -1e30 for w in weights], "float32"),
        (1, num_teachers) + (1,) * (len(log_p.shape) - 2),
    )
    # log sum_k w_k p_k, stably.
    return ops.logsumexp(log_p + log_w, axis=1)


def teacher_mean_logits(teacher, teacher_weights=None, from_logits=True, multi=None):
    """Teacher logits, or the weighted mean of several teachers' logits (for MSE on logits).

    Args:
        teacher: As in `teacher_log_probs`.
        teacher_weights: One weight per teacher; default equal.
        from_logits: Whether `teacher` holds logits.
        multi: As in `teacher_log_probs`.

    Returns:
        Float32 logits `[B, C]`.

    Example:
    ```python
    teacher_mean_logits([[[0.0, 2.0]], [[2.0, 0.0]]], teacher_weights=[1, 1])  # [[1.0, 1.0]]
    ```
    """
    teacher, stacked = _stack_teachers(teacher)
    if multi is None:
        multi = _infer_multi(stacked, teacher_weights)
    logits = as_log_probs_input(teacher, from_logits)
    if not multi:
        return logits
    weights = normalized_weights(teacher_weights, logits.shape[1])
    w = ops.reshape(
        ops.convert_to_tensor(weights, "float32"), (1, len(weights)) + (1,) * (len(logits.shape) - 2)
    )
    return ops.sum(logits * w, axis=1)


def reduce_tokens(values, mask=None, per_token=False):
    """Per-example values from `[B]` or `[B, T]` (masked mean over tokens) values, or per-token values.

    Args:
        values: Float tensor `[B]` or `[B, T]` (further axes are averaged).
        mask: Optional `[B, T]` tensor, 1 for real tokens and 0 for padding.
        per_token: Return `[B, T]` values (masked tokens set to 0) instead of the per-example mean, for a
            caller that weighs tokens itself (`kd_tf.Distiller` averages tokens over the global batch).

    Returns:
        Float32 tensor `[B]` (an example with no real token gets 0), or `[B, T]` with `per_token`.

    Example:
    ```python
    reduce_tokens([[1.0, 3.0, 9.0]], mask=[[1, 1, 0]])  # [2.0]
    ```
    """
    values = to_float32(values)
    if len(values.shape) <= 1:
        return values
    values = ops.reshape(values, (ops.shape(values)[0], ops.shape(values)[1], -1))
    values = ops.mean(values, axis=-1)
    if per_token:
        return values if mask is None else ops.where(ops.cast(mask, "bool"), values, 0.0)
    if mask is None:
        return ops.mean(values, axis=-1)
    mask = to_float32(mask)
    return ops.sum(values * mask, axis=-1) / ops.maximum(ops.sum(mask, axis=-1), 1.0)


__all__ = [
    "EPSILON",
    "as_log_probs_input",
    "normalized_weights",
    "reduce_tokens",
    "softened_log_probs",
    "teacher_log_probs",
    "teacher_mean_logits",
    "to_float32",
]
