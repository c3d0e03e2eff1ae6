"""`keras.distillation` compatibility: which model is the teacher, and its loss plug-ins as distiller terms.

Two constructor conventions meet in `kd_tf.Distiller`:

* kd-tf and the keras.io example: `Distiller(student, teacher)`, student first;
* `keras.distillation.Distiller(teacher, student, distillation_losses, distillation_loss_weights,
  student_loss_weight, name)`, teacher first, `distillation_losses` required.

`resolve_models` tells them apart without guessing: keyword names always win; positional models follow
keras.distillation's order when a keras.distillation argument (`distillation_losses`,
`distillation_loss_weights`, `student_loss_weight`, or a third positional argument) is present, kd-tf's
order otherwise; a lone positional model next to keras.distillation arguments is refused.

The plug-ins (`LogitsDistillation`, `FeatureDistillation`) become per-example terms
(`kd_tf.distill.terms`), so they honour sample weights; `LogitsDistillation` uses the distiller's
temperature variable (one temperature, which schedules reach). One deliberate difference from Keras 3.15:
`LogitsDistillation(loss="kl_divergence")` (its default) gets the KL divergence of the softened
*distributions*, times T^2, as `loss=keras.losses.KLDivergence()` does; Keras applies the string-resolved
function to the scaled logits themselves because its `isinstance(loss_fn, KLDivergence)` test misses it.
"""

import warnings

import keras
from keras import ops

from kd_tf.distill.features import FeatureMatch
from kd_tf.distill.targets import LOGITS
from kd_tf.distill.terms import FEATURE, Term, feature_term, logits_term, per_example_values

try:  # keras >= 3.12
    from keras.distillation import DistillationLoss, FeatureDistillation, LogitsDistillation
except ImportError:  # pragma: no cover
    DistillationLoss = FeatureDistillation = LogitsDistillation = ()


class _NotGiven:
    """The default of `Distiller(student=..., teacher=...)`: tells `teacher=None` from no `teacher`."""

    def __repr__(self):
        return "<not given>"

    def __bool__(self):
        return False


NOT_GIVEN = _NotGiven()

KERAS_ORDER = (
    "teacher",
    "student",
    "distillation_losses",
    "distillation_loss_weights",
    "student_loss_weight",
)
KERAS_ARGUMENTS = KERAS_ORDER[2:]
KDTF_ORDER = ("student", "teacher")


def resolve_models(args, named):
    """Which positional argument is the student and which the teacher.

    Args:
        args: The constructor's positional arguments.
        named: Dict of its keyword arguments among `student`, `teacher` (`NOT_GIVEN` when absent, so that
            `teacher=None` names the teacher), `distillation_losses`, `distillation_loss_weights`,
            `student_loss_weight` (None when not given).

    Returns:
        `(arguments, keras_style)`: the dict above with the positional arguments assigned, and whether
        the keras.distillation convention is in use (it sets the default `student_loss_weight` to 0.5).

    Raises:
        ValueError: If an argument is given twice, there are too many, or the call is ambiguous (one
            positional model with keras.distillation arguments and neither `student=` nor `teacher=`).

    Example:
    ```python
    resolve_models((teacher, student, LogitsDistillation()), {})   # keras.distillation order
    ```
    """
    named = dict(named)
    given = {k for k, v in named.items() if v is not NOT_GIVEN and (v is not None or k in KDTF_ORDER)}
    keras_style = len(args) > 2 or bool(given & set(KERAS_ARGUMENTS))
    if len(args) > len(KERAS_ORDER):
        raise ValueError(
            f"Distiller takes at most {len(KERAS_ORDER)} positional arguments ({', '.join(KERAS_ORDER)}), "
            f"got {len(args)}; pass the others by keyword."
        )
    if len(args) == 1 and not given & set(KDTF_ORDER) and keras_style:
        raise ValueError(
            "Ambiguous call: one positional model with keras.distillation arguments. In "
            "keras.distillation's order it is the teacher, in kd-tf's the student. Name it: "
            "Distiller(student=..., teacher=..., distillation_losses=...)."
        )
    if len(args) == 1:
        order = ("teacher",) if "student" in given else ("student",)
    else:
        order = KERAS_ORDER if keras_style else KDTF_ORDER
    for name, value in zip(order, args):
        if name in given:
            raise ValueError(
                f"Distiller got {name!r} twice (by position and by keyword); in this call the positional "
                f"order is {', '.join(order)}. Name every model: Distiller(student=..., teacher=...)."
            )
        named[name] = value
    for name in KDTF_ORDER:
        named[name] = None if named[name] is NOT_GIVEN else named[name]
    return named, keras_style


def warn_if_student_larger(student, teachers):
    """Warns when the student of a positional call has more parameters than its teacher (a swapped order).

    Example:
    ```python
    warn_if_student_larger(student, [teacher])   # silent unless the student is larger
    ```
    """
    try:
        s = student.count_params()
        t = max(teacher.count_params() for teacher in teachers)
    except ValueError:  # unbuilt models: nothing to compare
        return
    if s > t:
        warnings.warn(
            f"The student {student.name!r} ({s:,} parameters) is larger than the teacher ({t:,}). "
            "Distiller(a, b) means Distiller(student=a, teacher=b); keras.distillation's teacher-first "
            "order applies only with distillation_losses=. Name the models to silence this warning.",
            stacklevel=3,
        )


def _single_loss(plugin):
    losses = [loss for loss in keras.tree.flatten(plugin.loss) if loss is not None]
    if len(losses) != 1 or not callable(losses[0]) or isinstance(plugin.loss, (list, tuple, dict)):
        raise ValueError(
            f"{type(plugin).__name__} with a structure of losses ({plugin.loss!r}) is for multi-output "
            "models; kd_tf.Distiller distils one logits tensor (and named features): pass one loss."
        )
    return losses[0]


def _unreduced(fn, teacher, student):
    """Per-example values of a Keras loss or loss function (a scalar for a Loss reduced by "sum")."""
    if isinstance(fn, keras.losses.Loss):
        if fn.reduction in ("sum_over_batch_size", "mean"):
            return per_example_values(fn.call(teacher, student))
        return per_example_values(fn(teacher, student))
    return per_example_values(fn(teacher, student))


def _is_kl(fn):
    return isinstance(fn, keras.losses.KLDivergence) or fn is keras.losses.kl_divergence


class LogitsPluginTerm(Term):
    """`keras.distillation.LogitsDistillation` on the distiller's temperature variable, per example.

    Example:
    ```python
    LogitsPluginTerm(keras.distillation.LogitsDistillation(temperature=3.0))(inputs)   # [B]
    ```
    """

    def __init__(self, plugin, weight=1.0, inside=True):
        super().__init__(plugin, weight, inside)
        self.loss = _single_loss(plugin)
        self.temperature = float(plugin.temperature)

    def check_teachers(self, num_teachers):
        if num_teachers > 1:
            raise ValueError(
                "LogitsDistillation (keras.distillation) takes one teacher; with several teachers use "
                "kd_tf.distill.KLDistillation() (the weighted average of their softened distributions)."
            )

    def __call__(self, inputs):
        if inputs.multi:
            self.check_teachers(2)
        temperature = ops.cast(inputs.temperature, "float32")
        t = ops.cast(inputs.teacher[LOGITS], "float32") / temperature
        s = ops.cast(inputs.student[LOGITS], "float32") / temperature
        if _is_kl(self.loss):  # Keras's intent, also for loss="kl_divergence" (see the module docstring)
            kl = (
                self.loss if isinstance(self.loss, keras.losses.KLDivergence) else keras.losses.KLDivergence()
            )
            return _unreduced(kl, ops.softmax(t, axis=-1), ops.softmax(s, axis=-1)) * ops.square(temperature)
        return _unreduced(self.loss, t, s)


class FeaturePluginTerm(Term):
    """`keras.distillation.FeatureDistillation`: a Keras loss between two named layers' outputs (or the
    final outputs), per example.

    Example:
    ```python
    FeaturePluginTerm(FeatureDistillation(teacher_layer_name="dense", student_layer_name="dense"), 0.5)
    ```
    """

    kind = FEATURE

    def __init__(self, plugin, weight=1.0, inside=True):
        super().__init__(plugin, weight, inside)
        self.loss = _single_loss(plugin)
        self.teacher_spec = plugin.teacher_layer_name
        self.student_spec = plugin.student_layer_name

    def teacher_specs(self, index):
        return [self.teacher_spec] if self.teacher_spec and index == 0 else []

    def student_specs(self):
        return [self.student_spec] if self.student_spec else []

    def teacher_keys(self):
        return {self.teacher_spec or LOGITS}

    def check_teachers(self, num_teachers):
        if num_teachers > 1 and not self.teacher_spec:
            raise ValueError(
                "FeatureDistillation without teacher_layer_name compares final outputs of one teacher; "
                "with several teachers name a layer, or use kd_tf.distill.FeatureMatch(teacher_index=k)."
            )

    def __call__(self, inputs):
        t = inputs.teacher[self.teacher_spec or LOGITS]
        s = inputs.student[self.student_spec or LOGITS]
        return _unreduced(self.loss, ops.cast(t, "float32"), ops.cast(s, "float32"))


class CustomPluginTerm(Term):
    """Any other `keras.distillation.DistillationLoss`: its own `compute_loss`, one value per batch (it
    cannot honour sample weights, and a `temperature` of its own cannot follow the distiller's).

    Example:
    ```python
    CustomPluginTerm(MyDistillationLoss())(inputs)   # a scalar
    ```
    """

    per_example = False

    def __init__(self, plugin, weight=1.0, inside=True):
        super().__init__(plugin, weight, inside)
        self.teacher_spec = getattr(plugin, "teacher_layer_name", None)
        self.student_spec = getattr(plugin, "student_layer_name", None)
        if self.teacher_spec or self.student_spec:
            self.kind = FEATURE
        if getattr(plugin, "temperature", None) is not None:
            self.temperature = float(plugin.temperature)
            self.follows_temperature = False

    teacher_specs = FeaturePluginTerm.teacher_specs
    student_specs = FeaturePluginTerm.student_specs
    teacher_keys = FeaturePluginTerm.teacher_keys
    check_teachers = LogitsPluginTerm.check_teachers

    def __call__(self, inputs):
        t = inputs.teacher[self.teacher_spec or LOGITS]
        s = inputs.student[self.student_spec or LOGITS]
        return ops.cast(self.source.compute_loss(t, s), "float32")


def is_plugin(loss):
    """Whether `loss` is a `keras.distillation.DistillationLoss`.

    Example:
    ```python
    is_plugin(keras.distillation.LogitsDistillation())  # True
    ```
    """
    return bool(DistillationLoss) and isinstance(loss, DistillationLoss)


def as_term(loss, weight=1.0, inside=True):
    """The distiller term of one entry of `distillation_losses` (or of `compile(distillation_loss_fn=)`).

    Args:
        loss: A `keras.distillation` plug-in, a `FeatureMatch`, a `kd_tf` logits loss or its name, or a
            Keras loss on probabilities (keras.io convention).
        weight: Its weight (`distillation_loss_weights`).
        inside: Whether `(1 - alpha)` scales it.

    Returns:
        A `kd_tf.distill.terms.Term`.

    Example:
    ```python
    as_term(keras.distillation.LogitsDistillation(temperature=3.0), weight=1.0)
    ```
    """
    if isinstance(loss, FeatureMatch):
        return feature_term(loss, weight, inside)
    if is_plugin(loss):
        if type(loss) is LogitsDistillation:
            return LogitsPluginTerm(loss, weight, inside)
        if type(loss) is FeatureDistillation:
            return FeaturePluginTerm(loss, weight, inside)
        return CustomPluginTerm(loss, weight, inside)
    return logits_term(loss, weight, inside)


def distillation_terms(distillation_losses, distillation_loss_weights):
    """The terms of keras.distillation's `distillation_losses` and `distillation_loss_weights`.

    Args:
        distillation_losses: One loss or a list of them (see `as_term`), or None.
        distillation_loss_weights: One weight per loss, or None (1 each).

    Returns:
        A list of terms, all inside `(1 - student_loss_weight)` as in keras.distillation.

    Raises:
        ValueError: If the numbers of losses and weights differ.

    Example:
    ```python
    distillation_terms([LogitsDistillation(), FeatureDistillation("dense", "dense")], [1.0, 0.5])
    ```
    """
    if distillation_losses is None:
        if distillation_loss_weights is not None:
            raise ValueError("distillation_loss_weights were given without distillation_losses.")
        return []
    losses = (
        list(distillation_losses) if isinstance(distillation_losses, (list, tuple)) else [distillation_losses]
    )
    weights = [1.0] * len(losses) if distillation_loss_weights is None else list(distillation_loss_weights)
    if len(weights) != len(losses):
        raise ValueError(
            f"Got {len(weights)} distillation_loss_weights for {len(losses)} distillation_losses; "
            "pass one weight per loss."
        )
    return [as_term(loss, float(w), inside=True) for loss, w in zip(losses, weights)]


def validate_plugins(terms, student, teachers):
    """Runs each plug-in's own `validate_model_compatibility` (Keras's messages for missing layers).

    Raises:
        ValueError: From the plug-in, e.g. a layer name the teacher or the student does not have.

    Example:
    ```python
    validate_plugins(terms, student, [teacher])
    ```
    """
    for term in terms:
        if is_plugin(term.source) and teachers:
            term.source.validate_model_compatibility(teachers[0], student)


__all__ = [
    "NOT_GIVEN",
    "CustomPluginTerm",
    "FeaturePluginTerm",
    "LogitsPluginTerm",
    "as_term",
    "distillation_terms",
    "is_plugin",
    "resolve_models",
    "validate_plugins",
    "warn_if_student_larger",
]
