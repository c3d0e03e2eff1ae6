"""Distillation losses on logits: forward KL with T^2, reverse KL, generalized JSD, soft-target
cross-entropy, MSE (the hard-label loss is in `kd_tf.distill.hard_labels`, re-exported here).

Names follow `keras.distillation`: `KLDistillation` is not `keras.losses.KLDivergence` (which takes
probabilities and no temperature); it takes logits, softens both sides with the temperature and
multiplies by T^2. Every loss is computed with `log_softmax` in float32 (`kd_tf.distill.distributions`).

Conventions, the same for every logits loss:

* `teacher` comes first and `student` second, like `y_true, y_pred` in `keras.losses`.
* `teacher` may hold several teachers: a list of `[B, C]` tensors or one `[B, K, C]` tensor (with
  `teacher_weights`), in which case the target is the weighted average of their softened distributions.
* With `from_logits=False` both inputs are probabilities; they are turned into log-probabilities first.
* Per-token logits `[B, T, C]` (a causal LM's `[batch, length, vocabulary]`) give the masked mean over
  tokens per example (`mask` `[B, T]`), or one value per token with `per_token=True`, which is what
  `kd_tf.Distiller` uses to weigh tokens by the batch's `[B, T]` sample weights.

Article, section 4.3: teacher probabilities `[0.9, 0.1]`, student `[0.8, 0.2]`. The article prints the
cross-entropy as `[0.08, 0.02]`; the correct soft-target cross-entropy is
`-(0.9 ln 0.8 + 0.1 ln 0.2) = 0.361773` nats and the KL divergence is
`0.9 ln(0.9/0.8) + 0.1 ln(0.1/0.2) = 0.036690` nats (the difference, 0.325083, is the teacher's entropy).
"""

import math

import keras
from keras import ops

from kd_tf.distill.distributions import (
    EPSILON,
    as_log_probs_input,
    reduce_tokens,
    softened_log_probs,
    teacher_log_probs,
    teacher_mean_logits,
    to_float32,
)
from kd_tf.distill.hard_labels import HardLabelCrossEntropy, hard_label_cross_entropy


def _softened_pair(teacher, student, temperature, teacher_weights, from_logits, multi):
    """Log-probabilities of the teacher's (or teachers' average) and the student's softened distributions."""
    log_p_t = teacher_log_probs(teacher, temperature, teacher_weights, from_logits, multi)
    log_p_s = softened_log_probs(as_log_probs_input(student, from_logits), temperature)
    return log_p_t, log_p_s


def _kl(log_p, log_q):
    """`KL(p || q)` over the last axis, from log-probabilities."""
    return ops.sum(ops.exp(log_p) * (log_p - log_q), axis=-1)


def _scaled(values, temperature, mask, per_token):
    return reduce_tokens(values, mask, per_token) * ops.cast(temperature, "float32") ** 2


def kl_distillation(
    teacher,
    student,
    temperature=1.0,
    teacher_weights=None,
    from_logits=True,
    mask=None,
    multi=None,
    per_token=False,
):
    """Hinton's distillation loss: `KL(p_teacher^T || p_student^T) * T^2` (forward KL), one value per example.

    Args:
        teacher: Teacher logits `[B, C]` (or several teachers, see `teacher_log_probs`).
        student: Student logits `[B, C]` (or `[B, T, C]` with `mask`).
        temperature: Softmax temperature T; the result is multiplied by T^2 so that gradient sizes
            do not depend on T.
        teacher_weights: One weight per teacher when there are several.
        from_logits: False if both inputs are probabilities.
        mask: Optional `[B, T]` padding mask for per-token logits.
        multi: Whether `teacher` stacks several teachers (see `teacher_log_probs`).
        per_token: For `[B, T, C]` logits, return `[B, T]` values instead of the masked mean over tokens.

    Returns:
        Float32 tensor `[B]` (or `[B, T]` with `per_token`).

    Example:
    ```python
    kl_distillation([[0.9, 0.1]], [[0.8, 0.2]], from_logits=False)  # article 4.3: 0.036690
    ```
    """
    log_p_t, log_p_s = _softened_pair(teacher, student, temperature, teacher_weights, from_logits, multi)
    return _scaled(_kl(log_p_t, log_p_s), temperature, mask, per_token)


def reverse_kl_distillation(
    teacher,
    student,
    temperature=1.0,
    teacher_weights=None,
    from_logits=True,
    mask=None,
    multi=None,
    per_token=False,
):
    """Reverse KL `KL(p_student^T || p_teacher^T) * T^2` (MiniLLM's mode-seeking objective).

    Forward KL makes the student cover every token the teacher finds likely; reverse KL lets it
    concentrate on the teacher's main modes, which suits a small student that generates. Arguments as in
    `kl_distillation`.

    Returns:
        Float32 tensor `[B]` (or `[B, T]` with `per_token`).

    Example:
    ```python
    reverse_kl_distillation([[0.9, 0.1]], [[0.8, 0.2]], from_logits=False)  # 0.044403
    ```
    """
    log_p_t, log_p_s = _softened_pair(teacher, student, temperature, teacher_weights, from_logits, multi)
    return _scaled(_kl(log_p_s, log_p_t), temperature, mask, per_token)


def check_beta(beta):
    """`beta` as a float in [0, 1].

    Raises:
        ValueError: If it is outside [0, 1].

    Example:
    ```python
    check_beta(0.5)  # 0.5
    ```
    """
    beta = float(beta)
    if not 0.0 <= beta <= 1.0:
        raise ValueError(
            f"beta must be in [0, 1] (0: forward KL, 1: reverse KL, between: generalized JSD), got {beta}."
        )
    return beta


def generalized_jsd_distillation(
    teacher,
    student,
    temperature=1.0,
    teacher_weights=None,
    from_logits=True,
    mask=None,
    multi=None,
    per_token=False,
    beta=0.5,
):
    """Generalized Jensen-Shannon divergence JSD(beta) of GKD (Agarwal et al., 2024), times T^2.

    With `M = beta * p_t + (1 - beta) * p_s` (softened by T):
    `JSD(beta) = beta * KL(p_t || M) + (1 - beta) * KL(p_s || M)`. As in TRL's `GKDTrainer`, `beta = 0`
    is the forward KL `KL(p_t || p_s)` and `beta = 1` the reverse KL `KL(p_s || p_t)`; in between the
    divergence is bounded and symmetric at 0.5, and `JSD(beta) / beta -> KL(p_t || p_s)` as beta -> 0,
    `JSD(beta) / (1 - beta) -> KL(p_s || p_t)` as beta -> 1. Arguments as in `kl_distillation`, plus:

    Args:
        beta: Interpolation weight in [0, 1].

    Returns:
        Float32 tensor `[B]` (or `[B, T]` with `per_token`).

    Raises:
        ValueError: If `beta` is outside [0, 1].

    Example:
    ```python
    generalized_jsd_distillation([[0.9, 0.1]], [[0.8, 0.2]], from_logits=False, beta=0.5)  # 0.009966
    ```
    """
    beta = check_beta(beta)
    log_p_t, log_p_s = _softened_pair(teacher, student, temperature, teacher_weights, from_logits, multi)
    if beta == 0.0:
        values = _kl(log_p_t, log_p_s)
    elif beta == 1.0:
        values = _kl(log_p_s, log_p_t)
    else:
        log_m = ops.logaddexp(log_p_t + math.log(beta), log_p_s + math.log(1.0 - beta))
        values = beta * _kl(log_p_t, log_m) + (1.0 - beta) * _kl(log_p_s, log_m)
    return _scaled(values, temperature, mask, per_token)


def cross_entropy_distillation(
    teacher,
    student,
    temperature=1.0,
    teacher_weights=None,
    from_logits=True,
    mask=None,
    multi=None,
    per_token=False,
):
    """Soft-target cross-entropy `-sum_j p_teacher(j) log p_student(j) * T^2` (article, section 4.1).

    It differs from `kl_distillation` by the teacher's entropy, a constant for the student, so both give
    the same gradients; this one is the article's formula. Arguments as in `kl_distillation`.

    Returns:
        Float32 tensor `[B]` (or `[B, T]` with `per_token`).

    Example:
    ```python
    cross_entropy_distillation([[0.9, 0.1]], [[0.8, 0.2]], from_logits=False)  # article 4.3: 0.361773
    ```
    """
    log_p_t, log_p_s = _softened_pair(teacher, student, temperature, teacher_weights, from_logits, multi)
    return _scaled(-ops.sum(ops.exp(log_p_t) * log_p_s, axis=-1), temperature, mask, per_token)


def mse_distillation(
    teacher,
    student,
    temperature=1.0,
    teacher_weights=None,
    from_logits=True,
    mask=None,
    multi=None,
    per_token=False,
):
    """Mean squared error between teacher and student logits (article, section 3.2), per example.

    The temperature is accepted for a uniform signature and ignored: MSE on logits is the T -> infinity
    limit of the KL loss (Hinton et al., 2015) and needs no softening.

    Returns:
        Float32 tensor `[B]`: the mean over classes of `(teacher - student)^2` (`[B, T]` with `per_token`).

    Example:
    ```python
    mse_distillation([[1.0, 2.0]], [[0.0, 0.0]])  # (1 + 4) / 2 = 2.5
    ```
    """
    del temperature
    t = teacher_mean_logits(teacher, teacher_weights, from_logits, multi)
    s = as_log_probs_input(student, from_logits)
    return reduce_tokens(ops.mean(ops.square(t - s), axis=-1), mask, per_token)


# ---------------------------------------------------------------------------------------------------------
# Keras Loss classes (usable with model.compile too)
# ---------------------------------------------------------------------------------------------------------
class LogitsLoss(keras.losses.Loss):
    """Base class of the logits losses: `call(teacher, student)` -> one value per distribution.

    Subclasses set `fn`, a function `(teacher, student, temperature, teacher_weights, from_logits, mask,
    multi, per_token, **options)` (`options()` gives a subclass's own settings, such as JSD's `beta`).
    Used alone it behaves like any `keras.losses.Loss` (`y_true` = teacher outputs, `y_pred` = student
    logits, sample weights and reduction as usual; per-token logits `[B, T, C]` give `[B, T]` values, so
    `[B, T]` sample weights weigh tokens). Inside `kd_tf.Distiller` the distiller calls `per_token` with
    its own, possibly scheduled, temperature.

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

    Example:
    ```python
    KLDistillation(temperature=2.0).per_example(teacher_logits, student_logits)   # [B]
    ```
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

    def options(self):
        """The subclass's own keyword arguments of `fn` (none here)."""
        return {}

    def _values(self, teacher, student, temperature, teacher_weights, mask, multi, per_token):
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
            per_token=per_token,
            **self.options(),
        )

    def per_example(self, teacher, student, temperature=None, teacher_weights=None, mask=None, multi=None):
        """Per-example loss values `[B]` (the masked mean over tokens for per-token logits).

        Args:
            teacher: Teacher logits (or several teachers).
            student: Student logits.
            temperature: Overrides the loss's own temperature (a float or a scalar variable).
            teacher_weights: Overrides the loss's own teacher weights.
            mask: Optional padding mask for per-token logits.
            multi: Whether `teacher` stacks several teachers (see `teacher_log_probs`).

        Returns:
            Float32 tensor `[B]`.

        Example:
        ```python
        KLDistillation().per_example(t_logits, s_logits, mask=padding_mask)   # [B, T, V] -> [B]
        ```
        """
        return self._values(teacher, student, temperature, teacher_weights, mask, multi, False)

    def per_token(self, teacher, student, temperature=None, teacher_weights=None, multi=None):
        """One value per distribution: `[B]` for `[B, C]` logits, `[B, T]` for per-token logits.

        Arguments as in `per_example`; the caller weighs and averages the tokens (`kd_tf.Distiller` does
        it over the global batch, with the batch's `[B, T]` sample weights).

        Returns:
            Float32 tensor `[B]` or `[B, T]`.

        Example:
        ```python
        ReverseKLDistillation().per_token(t_logits, s_logits, temperature=2.0)   # [B, T, V] -> [B, T]
        ```
        """
        return self._values(teacher, student, temperature, teacher_weights, None, multi, True)

    def call(self, y_true, y_pred):
        return self.per_token(y_true, y_pred)

    def get_config(self):
        config = super().get_config()
        config.update(
            temperature=self.temperature,
            from_logits=self.from_logits,
            teacher_weights=self.teacher_weights,
            **self.options(),
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
class ReverseKLDistillation(LogitsLoss):
    """Reverse KL `KL(p_student^T || p_teacher^T) * T^2` (mode-seeking; MiniLLM).

    Example:
    ```python
    ReverseKLDistillation(from_logits=False)([[0.9, 0.1]], [[0.8, 0.2]])  # 0.044403
    ```
    """

    fn = staticmethod(reverse_kl_distillation)
    default_name = "reverse_kl_distillation"


@keras.saving.register_keras_serializable(package="kd_tf")
class GeneralizedJSDDistillation(LogitsLoss):
    """Generalized Jensen-Shannon divergence JSD(beta) of GKD, times T^2 (see
    `generalized_jsd_distillation`): `beta=0` is forward KL, `beta=1` reverse KL.

    Args:
        beta: Interpolation weight in [0, 1]. Defaults to 0.5 (TRL's default).
        **kwargs: As in `LogitsLoss`.

    Raises:
        ValueError: If `beta` is outside [0, 1] or the temperature is not positive.

    Example:
    ```python
    GeneralizedJSDDistillation(beta=0.5, from_logits=False)([[0.9, 0.1]], [[0.8, 0.2]])  # 0.009966
    ```
    """

    fn = staticmethod(generalized_jsd_distillation)
    default_name = "generalized_jsd_distillation"

    def __init__(self, beta=0.5, **kwargs):
        self.beta = check_beta(beta)
        super().__init__(**kwargs)

    def options(self):
        return {"beta": self.beta}


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


_LOGITS_LOSSES = {
    "kl": KLDistillation,
    "kl_distillation": KLDistillation,
    "soft_cross_entropy": CrossEntropyDistillation,
    "cross_entropy_distillation": CrossEntropyDistillation,
    "mse": MSEDistillation,
    "mse_distillation": MSEDistillation,
    "reverse_kl": ReverseKLDistillation,
    "reverse_kl_distillation": ReverseKLDistillation,
    "jsd": GeneralizedJSDDistillation,
    "generalized_jsd_distillation": GeneralizedJSDDistillation,
}


def get(identifier):
    """A logits distillation loss from a name or an instance.

    Args:
        identifier: `"kl"`, `"reverse_kl"`, `"jsd"` (beta 0.5), `"soft_cross_entropy"`, `"mse"` (or the
            loss's own name, e.g. `"kl_distillation"`), a loss instance (returned as is) or None (returns
            `KLDistillation()`).

    Returns:
        A loss object.

    Raises:
        ValueError: For an unknown name.

    Example:
    ```python
    get("reverse_kl")  # ReverseKLDistillation()
    ```
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
    "EPSILON",
    "CrossEntropyDistillation",
    "GeneralizedJSDDistillation",
    "HardLabelCrossEntropy",
    "KLDistillation",
    "LogitsLoss",
    "MSEDistillation",
    "ReverseKLDistillation",
    "check_beta",
    "cross_entropy_distillation",
    "generalized_jsd_distillation",
    "get",
    "hard_label_cross_entropy",
    "kl_distillation",
    "mse_distillation",
    "reverse_kl_distillation",
    "to_float32",
    "reduce_tokens",
    "softened_log_probs",
    "teacher_log_probs",
    "teacher_mean_logits",
]
