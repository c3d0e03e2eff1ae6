"""Distillation losses: logits (KL with T^2, soft-target cross-entropy, MSE), hard labels, features.

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

_EPSILON = 1e-7


# ---------------------------------------------------------------------------------------------------------
# Functional core
# ---------------------------------------------------------------------------------------------------------
def _to_float32(x):
    return ops.cast(x, "float32")


def _as_log_probs_input(x, from_logits):
    """Logits as given, or log of clipped probabilities (which are valid logits)."""
    x = _to_float32(x)
    if from_logits:
        return x
    return ops.log(ops.clip(x, _EPSILON, 1.0))


def _stack_teachers(teacher):
    """Returns (teacher logits [B, C] or [B, K, C], is_multi)."""
    if isinstance(teacher, (list, tuple)):
        first = teacher[0]
        if hasattr(first, "shape") and len(first.shape) >= 1:  # one tensor per teacher
            if len(teacher) == 1:
                return first, False
            return ops.stack([_to_float32(t) for t in teacher], axis=1), True
        return ops.convert_to_tensor(teacher, "float32"), False  # nested Python lists: one teacher
    return teacher, False


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
    return ops.log_softmax(_to_float32(logits) / ops.cast(temperature, "float32"), axis=-1)


def teacher_log_probs(teacher, temperature=1.0, teacher_weights=None, from_logits=True, multi=None):
    """Log-probabilities of the (weighted average of the) teachers' softened distributions.

    Args:
        teacher: Teacher logits `[B, C]`, or several teachers as a list of `[B, C]` tensors (or arrays;
            a nested Python list of numbers is one teacher) or a
            `[B, K, C]` tensor (then pass `multi=True` or `teacher_weights`).
        temperature: Softmax temperature.
        teacher_weights: One non-negative weight per teacher (normalized to sum 1); default equal.
        from_logits: Whether `teacher` holds logits (True) or probabilities (False).
        multi: Whether a rank-3 `teacher` tensor is `[B, K, C]` (several teachers) rather than
            `[B, T, C]` (one teacher, per-token logits). Defaults to `teacher_weights is not None`.

    Returns:
        Float32 log-probabilities `[B, C]` (or `[B, T, C]`).

    Example:
    ```python
    lp = teacher_log_probs([[[0.0, 0.0]], [[10.0, -10.0]]], teacher_weights=[1, 1])
    ```
    """
    teacher, stacked = _stack_teachers(teacher)
    if multi is None:
        multi = stacked or teacher_weights is not None
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
        multi = stacked or teacher_weights is not None
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
    values = _to_float32(values)
    if len(values.shape) <= 1:
        return values
    values = ops.reshape(values, (ops.shape(values)[0], ops.shape(values)[1], -1))
    values = ops.mean(values, axis=-1)
    if mask is None:
        return ops.mean(values, axis=-1)
    mask = _to_float32(mask)
    return ops.sum(values * mask, axis=-1) / ops.maximum(ops.sum(mask, axis=-1), 1.0)


def kl_divergence(
    teacher, student, temperature=1.0, teacher_weights=None, from_logits=True, mask=None
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

    Returns:
        Float32 tensor `[B]`.

    Example:
    ```python
    kl_divergence([[0.9, 0.1]], [[0.8, 0.2]], from_logits=False)  # article 4.3: 0.036690
    ```
    """
    log_p_t = teacher_log_probs(teacher, temperature, teacher_weights, from_logits)
    log_p_s = softened_log_probs(_as_log_probs_input(student, from_logits), temperature)
    values = ops.sum(ops.exp(log_p_t) * (log_p_t - log_p_s), axis=-1)
    return reduce_tokens(values, mask) * ops.cast(temperature, "float32") ** 2


def soft_cross_entropy(
    teacher, student, temperature=1.0, teacher_weights=None, from_logits=True, mask=None
):
    """Soft-target cross-entropy `-sum_j p_teacher(j) log p_student(j) * T^2` (article, section 4.1).

    It differs from `kl_divergence` by the teacher's entropy, a constant for the student, so both give
    the same gradients; this one is the article's formula. Arguments as in `kl_divergence`.

    Returns:
        Float32 tensor `[B]`.

    Example:
    ```python
    soft_cross_entropy([[0.9, 0.1]], [[0.8, 0.2]], from_logits=False)  # article 4.3: 0.361773
    ```
    """
    log_p_t = teacher_log_probs(teacher, temperature, teacher_weights, from_logits)
    log_p_s = softened_log_probs(_as_log_probs_input(student, from_logits), temperature)
    values = -ops.sum(ops.exp(log_p_t) * log_p_s, axis=-1)
    return reduce_tokens(values, mask) * ops.cast(temperature, "float32") ** 2


def logits_mse(teacher, student, temperature=1.0, teacher_weights=None, from_logits=True, mask=None):
    """Mean squared error between teacher and student logits (article, section 3.2), per example.

    The temperature is accepted for a uniform signature and ignored: MSE on logits is the T -> infinity
    limit of the KL loss (Hinton et al., 2015) and needs no softening.

    Returns:
        Float32 tensor `[B]`: the mean over classes of `(teacher - student)^2`.

    Example:
    ```python
    logits_mse([[1.0, 2.0]], [[0.0, 0.0]])  # (1 + 4) / 2 = 2.5
    ```
    """
    del temperature
    t = teacher_mean_logits(teacher, teacher_weights, from_logits)
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
    student = _to_float32(student)
    labels = ops.convert_to_tensor(labels)
    log_p = ops.log_softmax(student, axis=-1)
    if len(labels.shape) == len(student.shape) and labels.shape[-1] == student.shape[-1] and (
        "float" in str(labels.dtype)
    ):
        values = -ops.sum(_to_float32(labels) * log_p, axis=-1)
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
class LogitsDistillationLoss(keras.losses.Loss):
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
        name: Loss name.

    Raises:
        ValueError: If the temperature is not positive.
    """

    fn = None

    def __init__(
        self,
        temperature=None,
        from_logits=True,
        teacher_weights=None,
        reduction="sum_over_batch_size",
        name=None,
    ):
        super().__init__(name=name, reduction=reduction, dtype="float32")
        if temperature is not None and not float(temperature) > 0:
            raise ValueError(f"temperature must be positive, got {temperature}.")
        self.temperature = temperature
        self.from_logits = from_logits
        self.teacher_weights = None if teacher_weights is None else list(teacher_weights)

    def per_example(self, teacher, student, temperature=None, teacher_weights=None, mask=None):
        """Per-example loss values `[B]`.

        Args:
            teacher: Teacher logits (or several teachers).
            student: Student logits.
            temperature: Overrides the loss's own temperature (a float or a scalar variable).
            teacher_weights: Overrides the loss's own teacher weights.
            mask: Optional padding mask for per-token logits.

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
class KLDivergence(LogitsDistillationLoss):
    """KL divergence between temperature-softened teacher and student distributions, times T^2.

    Example:
    ```python
    loss = KLDivergence(temperature=2.0)
    loss(teacher_logits, student_logits)  # mean over the batch
    ```
    """

    fn = staticmethod(kl_divergence)

    def __init__(self, temperature=None, from_logits=True, teacher_weights=None,
                 reduction="sum_over_batch_size", name="kl_divergence"):
        super().__init__(temperature, from_logits, teacher_weights, reduction, name)


@keras.saving.register_keras_serializable(package="kd_tf")
class SoftTargetCrossEntropy(LogitsDistillationLoss):
    """Cross-entropy of the student against the teacher's softened distribution, times T^2.

    Example:
    ```python
    SoftTargetCrossEntropy(from_logits=False)([[0.9, 0.1]], [[0.8, 0.2]])  # 0.361773
    ```
    """

    fn = staticmethod(soft_cross_entropy)

    def __init__(self, temperature=None, from_logits=True, teacher_weights=None,
                 reduction="sum_over_batch_size", name="soft_target_cross_entropy"):
        super().__init__(temperature, from_logits, teacher_weights, reduction, name)


@keras.saving.register_keras_serializable(package="kd_tf")
class LogitsMSE(LogitsDistillationLoss):
    """Mean squared error between teacher and student logits (no temperature).

    Example:
    ```python
    LogitsMSE()([[1.0, 2.0]], [[0.0, 0.0]])  # 2.5
    ```
    """

    fn = staticmethod(logits_mse)

    def __init__(self, temperature=None, from_logits=True, teacher_weights=None,
                 reduction="sum_over_batch_size", name="logits_mse"):
        super().__init__(temperature, from_logits, teacher_weights, reduction, name)


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
    "kl": KLDivergence,
    "kl_divergence": KLDivergence,
    "kld": KLDivergence,
    "soft_cross_entropy": SoftTargetCrossEntropy,
    "soft_target_cross_entropy": SoftTargetCrossEntropy,
    "cross_entropy": SoftTargetCrossEntropy,
    "mse": LogitsMSE,
    "logits_mse": LogitsMSE,
}


def get(identifier):
    """A logits distillation loss from a name or an instance.

    Args:
        identifier: `"kl"`/`"kl_divergence"`, `"soft_cross_entropy"`, `"mse"`/`"logits_mse"`, a loss
            instance (returned as is) or None (returns `KLDivergence()`).

    Returns:
        A loss object.

    Raises:
        ValueError: For an unknown name.
    """
    if identifier is None:
        return KLDivergence()
    if isinstance(identifier, str):
        try:
            return _LOGITS_LOSSES[identifier.lower()]()
        except KeyError:
            raise ValueError(
                f"Unknown distillation loss {identifier!r}; use one of {sorted(_LOGITS_LOSSES)} "
                "or pass a loss object."
            ) from None
    return identifier


# ---------------------------------------------------------------------------------------------------------
# Feature distillation (article, section 3.1)
# ---------------------------------------------------------------------------------------------------------
def feature_path(spec):
    """Split a feature name into its path: `"encoder/encoder_outputs/3"` -> `("encoder", "encoder_outputs", 3)`.

    The first component is a key of the model's dict output or a layer name; each further component
    indexes into a dict (by key) or a list (by integer position).

    Args:
        spec: A string with `/` separators, or a tuple/list of components.

    Returns:
        A tuple of str and int components.

    Example:
    ```python
    feature_path("encoder_outputs/3")  # ('encoder_outputs', 3)
    ```
    """
    parts = list(spec) if isinstance(spec, (tuple, list)) else str(spec).split("/")
    return tuple(int(p) if isinstance(p, int) or str(p).lstrip("-").isdigit() else str(p) for p in parts)


@keras.saving.register_keras_serializable(package="kd_tf")
class FeatureMatch(keras.layers.Layer):
    """Match one teacher feature to one student feature (article, section 3.1).

    A feature is named by a path (see `feature_path`): a key of the model's dict output
    (`"pooled_output"`), an element of a list output (`"encoder_outputs/3"`, the 4th transformer layer of
    a TF-Hub BERT encoder), a layer name of a functional model (`"dense_1"`), or a path into a layer's
    dict output (`"encoder/encoder_outputs/3"` for a `kd_tf.models.build_classifier` model). When the widths differ, a learned linear projection maps the
    student feature to the teacher's width; it is trained with the student and belongs to the distiller,
    never to the exported student.

    Args:
        teacher_feature: Feature name in the teacher (see above).
        student_feature: Feature name in the student. Defaults to `teacher_feature`.
        projection: `"auto"` (project only when widths differ), True (always), False (never; widths must
            match).
        loss: `"mse"` (mean over the hidden axis of the squared difference) or `"cosine"` (1 - cosine
            similarity).
        weight: Multiplier of this term in the feature loss.
        mask: Name of a `[B, T]` padding mask: a key of the input dict (`"input_mask"`) or of the models'
            dict outputs. Ignored for features without a token axis. None: no mask.
        teacher_index: Which teacher provides the feature when there are several. Defaults to 0.
        name: Layer name.

    Raises:
        ValueError: For an unknown `loss` or `projection`.

    Example:
    ```python
    fm = FeatureMatch("encoder_outputs/11", "encoder_outputs/3", loss="mse", mask="input_mask")
    per_example = fm(teacher_features, student_features, mask)  # [B]
    ```
    """

    def __init__(
        self,
        teacher_feature,
        student_feature=None,
        projection="auto",
        loss="mse",
        weight=1.0,
        mask="input_mask",
        teacher_index=0,
        name=None,
        **kwargs,
    ):
        if name is None:
            safe = f"{teacher_feature}_to_{student_feature or teacher_feature}"
            name = "feature_match_" + "".join(c if c.isalnum() else "_" for c in str(safe))
        super().__init__(name=name, dtype="float32", **kwargs)
        if loss not in ("mse", "cosine"):
            raise ValueError(f"FeatureMatch loss must be 'mse' or 'cosine', got {loss!r}.")
        if projection not in ("auto", True, False):
            raise ValueError(f"projection must be 'auto', True or False, got {projection!r}.")
        self.teacher_feature = teacher_feature
        self.student_feature = student_feature if student_feature is not None else teacher_feature
        self.projection = projection
        self.loss = loss
        self.weight = float(weight)
        self.mask = mask
        self.teacher_index = int(teacher_index)
        self.projector = None

    def build(self, teacher_shape, student_shape):
        t_width, s_width = teacher_shape[-1], student_shape[-1]
        if t_width is None or s_width is None:
            raise ValueError(
                f"{self.name}: the feature widths must be known (teacher {teacher_shape}, "
                f"student {student_shape}); give the models static hidden sizes."
            )
        project = self.projection is True or (self.projection == "auto" and t_width != s_width)
        if not project and t_width != s_width:
            raise ValueError(
                f"{self.name}: teacher width {t_width} differs from student width {s_width}; "
                "use projection='auto' or True to learn a linear map between them."
            )
        if project:
            self.projector = keras.layers.Dense(t_width, name="projection", dtype="float32")
            self.projector.build(tuple(student_shape))
        self.built = True

    def call(self, teacher_feature, student_feature, mask=None):
        """Per-example loss `[B]` (already multiplied by `weight`)."""
        t = _to_float32(ops.stop_gradient(teacher_feature))
        s = _to_float32(student_feature)
        if self.projector is not None:
            s = self.projector(s)
        if self.loss == "mse":
            values = ops.mean(ops.square(t - s), axis=-1)
        else:
            t_n = t / ops.maximum(ops.norm(t, axis=-1, keepdims=True), _EPSILON)
            s_n = s / ops.maximum(ops.norm(s, axis=-1, keepdims=True), _EPSILON)
            values = 1.0 - ops.sum(t_n * s_n, axis=-1)
        if len(values.shape) < 2:
            mask = None
        return reduce_tokens(values, mask) * self.weight

    def compute_output_spec(self, teacher_feature, student_feature, mask=None):
        return keras.KerasTensor((teacher_feature.shape[0],), "float32")

    @property
    def teacher_path(self):
        """The teacher feature as a path tuple (see `feature_path`)."""
        return feature_path(self.teacher_feature)

    @property
    def student_path(self):
        """The student feature as a path tuple (see `feature_path`)."""
        return feature_path(self.student_feature)

    def get_config(self):
        config = super().get_config()
        config.pop("dtype", None)
        config.update(
            teacher_feature=self.teacher_feature,
            student_feature=self.student_feature,
            projection=self.projection,
            loss=self.loss,
            weight=self.weight,
            mask=self.mask,
            teacher_index=self.teacher_index,
        )
        return config


def layer_map(num_teacher_layers, num_student_layers, feature="encoder_outputs", **kwargs):
    """Feature matches from every student layer to a uniformly spaced teacher layer.

    Student layer i (0-based) is matched to teacher layer `(i + 1) * Lt // Ls - 1`, so the last student
    layer always meets the last teacher layer (12 -> 4: teacher 2, 5, 8, 11), the mapping of
    TinyBERT and of the "skip" strategy in PKD.

    Args:
        num_teacher_layers: Lt, the teacher's number of layers.
        num_student_layers: Ls, the student's (at most Lt).
        feature: The list-valued output holding one tensor per layer in both models.
        **kwargs: Passed to every `FeatureMatch` (`projection`, `loss`, `weight`, `mask`).

    Returns:
        A list of `FeatureMatch`.

    Raises:
        ValueError: If the student has more layers than the teacher.

    Example:
    ```python
    [m.teacher_feature for m in layer_map(12, 4)]
    # -> ['encoder_outputs/2', 'encoder_outputs/5', 'encoder_outputs/8', 'encoder_outputs/11']
    ```
    """
    if not 0 < num_student_layers <= num_teacher_layers:
        raise ValueError(
            f"Need 0 < student layers <= teacher layers, got {num_student_layers} and "
            f"{num_teacher_layers}."
        )
    return [
        FeatureMatch(
            f"{feature}/{(i + 1) * num_teacher_layers // num_student_layers - 1}",
            f"{feature}/{i}",
            **kwargs,
        )
        for i in range(num_student_layers)
    ]


__all__ = [
    "FeatureMatch",
    "HardLabelCrossEntropy",
    "KLDivergence",
    "LogitsDistillationLoss",
    "LogitsMSE",
    "SoftTargetCrossEntropy",
    "get",
    "feature_path",
    "hard_label_cross_entropy",
    "kl_divergence",
    "layer_map",
    "logits_mse",
    "reduce_tokens",
    "soft_cross_entropy",
    "softened_log_probs",
    "teacher_log_probs",
    "teacher_mean_logits",
]
