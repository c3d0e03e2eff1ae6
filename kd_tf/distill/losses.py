"""Distillation losses on logits (KL with T^2, soft-target cross-entropy, MSE) and hard labels.

Names follow `keras.distillation` (`LogitsDistillation`, `FeatureDistillation`): `KLDistillation` is not
`keras.losses.KLDivergence` (which takes probabilities and no temperature); it takes logits, softens both
sides with the temperature and multiplies by T^2.

Every loss here is computed from logits with `log_softmax`, never from `log(softmax(...))`, so it stays
finite for large logits, and every loss can return one value per example (`per_example`) so that the
`kd_tf.Distiller` can apply sample weights and padding masks itself.

Conventions, the same for every logits loss:

* `teacher` comes first and `student` second, like `y_true, y_pred` in `keras.losses`.
* `teacher` may hold several teachers: a list of `[B, C]` tensors or one `[B, K, C]` tensor (with
  `teacher_weights`), in which case the target is the weighted average of their softened distributions.
* With `from_logits=False` both inputs are probabilities (the article's section 4 writes the losses on
  probabilities); they are turned into log-probabilities first.
* Tensors of rank 3 (`[B, T, C]`, one distribution per token) are reduced over tokens with an optional
  `mask` `[B, T]`, so padding never counts.

Article, section 4.3: teacher probabilities `[0.9, 0.1]`, student `[0.8, 0.2]`. The article prints the
cross-entropy as `[0.08, 0.02]`; the correct soft-target cross-entropy is
`-(0.9 ln 0.8 + 0.1 ln 0.2) = 0.361773` nats and the KL divergence is
`0.9 ln(0.9/0.8) + 0.1 ln(0.1/0.2) = 0.036690` nats (the difference, 0.325083, is the teacher's entropy).
"""

import math

import keras
from keras import ops

EPSILON = 1e-7


# ---------------------------------------------------------------------------------------------------------
# Functional core
# ---------------------------------------------------------------------------------------------------------
def to_float32(x):
    return ops.cast(x, "float32")


def _as_log_probs_input(x, from_logits):
    """Logits as given, or log of clipped probabilities (which are valid logits)."""
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


def _normalized_weights(teacher_weights, num_teachers):
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

    Example:
    ```python
    lp = teacher_log_probs([[[0.0, 0.0]], [[10.0, -10.0]]], teacher_weights=[1, 1])
    ```
    """
    teacher, stacked = _stack_teachers(teacher)
    if multi is None:
        multi = _infer_multi(stacked, teacher_weights)
    logits = _as_log_probs_input(teacher, from_logits)
    log_p = softened_log_probs(logits, temperature)
    if not multi:
        return log_p
    num_teachers = log_p.shape[1]
    weights = _normalized_weights(teacher_weights, num_teachers)
    log_w = ops.reshape(
        ops.convert_to_tensor([math.log(w) if w > 0 else -1e30 for w in weights], "float32"),
        (1, num_teachers, 1),
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
    """
    teacher, stacked = _stack_teachers(teacher)
    if multi is None:
        multi = _infer_multi(stacked, teacher_weights)
    logits = _as_log_probs_input(teacher, from_logits)
    if not multi:
        return logits
    weights = _normalized_weights(teacher_weights, logits.shape[1])
    w = ops.reshape(ops.convert_to_tensor(weights, "float32"), (1, len(weights), 1))
    return ops.sum(logits * w, axis=1)


def reduce_tokens(values, mask=None):
    """Per-example values from `[B]` or `[B, T]` (masked mean over tokens) values.

    Args:
        values: Float tensor `[B]` or `[B, T]`.
        mask: Optional `[B, T]` tensor, 1 for real tokens and 0 for padding.

    Returns:
        Float32 tensor `[B]`. An example with no real token gets 0.
    """
    values = to_float32(values)
    if len(values.shape) <= 1:
        return values
    values = ops.reshape(values, (ops.shape(values)[0], ops.shape(values)[1], -1))
    values = ops.mean(values, axis=-1)
    if mask is None:
        return ops.mean(values, axis=-1)
    mask = to_float32(mask)
    return ops.sum(values * mask, axis=-1) / ops.maximum(ops.sum(mask, axis=-1), 1.0)


def kl_distillation(
    teacher, student, temperature=1.0, teacher_weights=None, from_logits=True, mask=None, multi=None
):
    """Hinton's distillation loss: `KL(p_teacher^T || p_student^T) * T^2`, one value per example.

    Args:
        teacher: Teacher logits `[B, C]` (or several teachers, see `teacher_log_probs`).
        student: Student logits `[B, C]` (or `[B, T, C]` with `mask`).
        temperature: Softmax temperature T; the result is multiplied by T^2 so that gradient sizes
            do not depend on T.
        teacher_weights: One weight per teacher when there are several.
        from_logits: False if both inputs are probabilities.
        mask: Optional `[B, T]` padding mask for per-token logits.
        multi: Whether `teacher` stacks several teachers (see `teacher_log_probs`).

    Returns:
        Float32 tensor `[B]`.

    Example:
    ```python
    kl_distillation([[0.9, 0.1]], [[0.8, 0.2]], from_logits=False)  # article 4.3: 0.036690
    ```
    """
    log_p_t = teacher_log_probs(teacher, temperature, teacher_weights, from_logits, multi)
    log_p_s = softened_log_probs(_as_log_probs_input(student, from_logits), temperature)
    values = ops.sum(ops.exp(log_p_t) * (log_p_t - log_p_s), axis=-1)
    return reduce_tokens(values, mask) * ops.cast(temperature, "float32") ** 2


def cross_entropy_distillation(
    teacher, student, temperature=1.0, teacher_weights=None, from_logits=True, mask=None, multi=None
):
    """Soft-target cross-entropy `-sum_j p_teacher(j) log p_student(j) * T^2` (article, section 4.1).

    It differs from `kl_distillation` by the teacher's entropy, a constant for the student, so both give
    the same gradients; this one is the article's formula. Arguments as in `kl_distillation`.

    Returns:
        Float32 tensor `[B]`.

    Example:
    ```python
    cross_entropy_distillation([[0.9, 0.1]], [[0.8, 0.2]], from_logits=False)  # article 4.3: 0.361773
    ```
    """
    log_p_t = teacher_log_probs(teacher, temperature, teacher_weights, from_logits, multi)
    log_p_s = softened_log_probs(_as_log_probs_input(student, from_logits), temperature)
    values = -ops.sum(ops.exp(log_p_t) * log_p_s, axis=-1)
    return reduce_tokens(values, mask) * ops.cast(temperature, "float32") ** 2


def mse_distillation(
    teacher, student, temperature=1.0, teacher_weights=None, from_logits=True, mask=None, multi=None
):
    """Mean squared error between teacher and student logits (article, section 3.2), per example.

    The temperature is accepted for a uniform signature and ignored: MSE on logits is the T -> infinity
    limit of the KL loss (Hinton et al., 2015) and needs no softening.

    Returns:
        Float32 tensor `[B]`: the mean over classes of `(teacher - student)^2`.

    Example:
    ```python
    mse_distillation([[1.0, 2.0]], [[0.0, 0.0]])  # (1 + 4) / 2 = 2.5
    ```
    """
    del temperature
    t = teacher_mean_logits(teacher, teacher_weights, from_logits, multi)
    s = _as_log_probs_input(student, from_logits)
    return reduce_tokens(ops.mean(ops.square(t - s), axis=-1), mask)


def hard_label_cross_entropy(labels, student, mask=None):
    """Cross-entropy of student logits against hard labels, one value per example.

    Args:
        labels: Integer class ids `[B]` / `[B, 1]` (or `[B, T]` with per-token logits), or one-hot /
            soft label rows `[B, C]` (float, same shape as `student`).
        student: Student logits `[B, C]` or `[B, T, C]`.
        mask: Optional `[B, T]` padding mask for per-token logits.

    Returns:
        Float32 tensor `[B]`.

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
        one_hot = ops.one_hot(labels, student.shape[-1], dtype="float32")
        values = -ops.sum(one_hot * log_p, axis=-1)
    return reduce_tokens(values, mask)


# ---------------------------------------------------------------------------------------------------------
# Keras Loss classes (usable with model.compile too)
# ---------------------------------------------------------------------------------------------------------
class LogitsLoss(keras.losses.Loss):
    """Base class of the logits losses: `call(teacher, student)` -> per-example values.

    Subclasses set `fn`, a function `(teacher, student, temperature, teacher_weights, from_logits, mask)`.
    Used alone it behaves like any `keras.losses.Loss` (`y_true` = teacher outputs, `y_pred` = student
    logits, sample weights and reduction as usual). Inside `kd_tf.Distiller` the distiller calls
    `per_example` with its own, possibly scheduled, temperature.

    Args:
        temperature: Softmax temperature used when the loss is called alone; inside a `Distiller`,
            `compile(temperature=...)` wins. Defaults to None, meaning 1.0 alone and the distiller's value
            inside a distiller.
        from_logits: Whether both inputs are logits (True) or probabilities (False).
        teacher_weights: Weights of several teachers (see `teacher_log_probs`).
        reduction: Keras reduction. Defaults to `"sum_over_batch_size"`.
        name: Loss name. Defaults to the subclass's `default_name`.

    Raises:
        ValueError: If the temperature is not positive.
    """

    fn = None
    default_name = None

    def __init__(
        self,
        temperature=None,
        from_logits=True,
        teacher_weights=None,
        reduction="sum_over_batch_size",
        name=None,
    ):
        super().__init__(name=name or self.default_name, reduction=reduction, dtype="float32")
        if temperature is not None and not float(temperature) > 0:
            raise ValueError(f"temperature must be positive, got {temperature}.")
        self.temperature = temperature
        self.from_logits = from_logits
        self.teacher_weights = None if teacher_weights is None else list(teacher_weights)

    def per_example(self, teacher, student, temperature=None, teacher_weights=None, mask=None, multi=None):
        """Per-example loss values `[B]`.

        Args:
            teacher: Teacher logits (or several teachers).
            student: Student logits.
            temperature: Overrides the loss's own temperature (a float or a scalar variable).
            teacher_weights: Overrides the loss's own teacher weights.
            mask: Optional padding mask for per-token logits.
            multi: Whether `teacher` stacks several teachers (see `teacher_log_probs`).

        Returns:
            Float32 tensor `[B]`.
        """
        if temperature is None:
            temperature = 1.0 if self.temperature is None else self.temperature
        if teacher_weights is None:
            teacher_weights = self.teacher_weights
        return type(self).fn(
            teacher,
            student,
            temperature=temperature,
            teacher_weights=teacher_weights,
            from_logits=self.from_logits,
            mask=mask,
            multi=multi,
        )

    def call(self, y_true, y_pred):
        return self.per_example(y_true, y_pred)

    def get_config(self):
        config = super().get_config()
        config.update(
            temperature=self.temperature,
            from_logits=self.from_logits,
            teacher_weights=self.teacher_weights,
        )
        config.pop("dtype", None)
        return config


@keras.saving.register_keras_serializable(package="kd_tf")
class KLDistillation(LogitsLoss):
    """KL divergence between temperature-softened teacher and student distributions, times T^2.

    Example:
    ```python
    loss = KLDistillation(temperature=2.0)
    loss(teacher_logits, student_logits)  # mean over the batch
    ```
    """

    fn = staticmethod(kl_distillation)
    default_name = "kl_distillation"


@keras.saving.register_keras_serializable(package="kd_tf")
class CrossEntropyDistillation(LogitsLoss):
    """Cross-entropy of the student against the teacher's softened distribution, times T^2.

    Example:
    ```python
    CrossEntropyDistillation(from_logits=False)([[0.9, 0.1]], [[0.8, 0.2]])  # 0.361773
    ```
    """

    fn = staticmethod(cross_entropy_distillation)
    default_name = "cross_entropy_distillation"


@keras.saving.register_keras_serializable(package="kd_tf")
class MSEDistillation(LogitsLoss):
    """Mean squared error between teacher and student logits (no temperature).

    Example:
    ```python
    MSEDistillation()([[1.0, 2.0]], [[0.0, 0.0]])  # 2.5
    ```
    """

    fn = staticmethod(mse_distillation)
    default_name = "mse_distillation"


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
        return hard_label_cross_entropy(y_true, y_pred)

    def get_config(self):
        config = super().get_config()
        config.pop("dtype", None)
        return config


_LOGITS_LOSSES = {
    "kl": KLDistillation,
    "kl_distillation": KLDistillation,
    "soft_cross_entropy": CrossEntropyDistillation,
    "cross_entropy_distillation": CrossEntropyDistillation,
    "mse": MSEDistillation,
    "mse_distillation": MSEDistillation,
}


def get(identifier):
    """A logits distillation loss from a name or an instance.

    Args:
        identifier: `"kl"`, `"soft_cross_entropy"`, `"mse"` (or the loss's own name, e.g.
            `"kl_distillation"`), a loss instance (returned as is) or None (returns `KLDistillation()`).

    Returns:
        A loss object.

    Raises:
        ValueError: For an unknown name.
    """
    if identifier is None:
        return KLDistillation()
    if isinstance(identifier, str):
        try:
            return _LOGITS_LOSSES[identifier.lower()]()
        except KeyError:
            raise ValueError(
                f"Unknown distillation loss {identifier!r}; use one of {sorted(_LOGITS_LOSSES)} "
                "or pass a loss object."
            ) from None
    return identifier


__all__ = [
    "CrossEntropyDistillation",
    "HardLabelCrossEntropy",
    "KLDistillation",
    "LogitsLoss",
    "MSEDistillation",
    "cross_entropy_distillation",
    "get",
    "hard_label_cross_entropy",
    "kl_distillation",
    "mse_distillation",
    "reduce_tokens",
    "softened_log_probs",
    "teacher_log_probs",
    "teacher_mean_logits",
]
