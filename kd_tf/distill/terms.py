"""The terms of a `Distiller`'s loss: what each reads, how it weighs, and whether `(1 - alpha)` scales it.

A term turns the teacher's and the student's outputs into one loss value per unit (`[B]` per example, or
`[B, T]` per token for a causal LM's logits; a per-example value of a token-level batch repeats over the
example's tokens), so that the distiller can apply sample weights and average over the global batch itself
(`kd_tf.distill.reduction`).
Where it is placed decides its weight in the total:

```
loss = alpha * hard + (1 - alpha) * (sum of inside terms) + (sum of outside terms)
```

* inside: the logits loss of `compile(distillation_loss_fn=...)` (the keras.io rule) and every entry of
  the constructor's `distillation_losses` (the keras.distillation rule, features included);
* outside: the `FeatureMatch`es of the constructor's `features=` (kd-tf's rule: added with their own weight).

`kind` ("distillation" or "feature") decides which logged part (`distillation_loss`, `feature_loss`) a term
adds to. keras.distillation plug-ins are adapted in `kd_tf.distill.keras_compat`.
"""

import keras
from keras import ops

from kd_tf.distill import losses as kd_losses
from kd_tf.distill.features import FeatureMatch
from kd_tf.distill.sparse import SparseKLDistillation
from kd_tf.distill.targets import LOGITS

DISTILLATION = "distillation"
FEATURE = "feature"


def teacher_key(spec, index):
    """The key of teacher `index`'s feature `spec` in teacher outputs (`"spec"`, or `"spec@k"` for k > 0).

    Example:
    ```python
    teacher_key("pooled_output", 1)  # 'pooled_output@1'
    ```
    """
    return str(spec) if index == 0 else f"{spec}@{index}"


def per_example_values(values):
    """Float32 `[B]` values from `[B, ...]` ones (mean over the other axes); scalars stay scalars.

    Example:
    ```python
    per_example_values(tf.ones([4, 7, 2]))  # shape [4]
    ```
    """
    values = ops.cast(values, "float32")
    if len(values.shape) > 1:
        values = ops.mean(ops.reshape(values, (ops.shape(values)[0], -1)), axis=-1)
    return values


class TermInputs:
    """What a term may read for one batch.

    Attributes:
        x: The batch's inputs.
        teacher: Dict of teacher outputs (`logits`, features by key).
        student: Dict of student outputs (`logits`, features by spec).
        temperature: The distiller's temperature (a scalar variable or float).
        teacher_weights: The teachers' weights, or None.
        multi: Whether `teacher["logits"]` stacks several teachers (`[B, K, C]`).

    Example:
    ```python
    inputs = TermInputs(x, {"logits": t}, {"logits": s}, temperature=2.0, teacher_weights=None, multi=False)
    ```
    """

    def __init__(self, x, teacher, student, temperature, teacher_weights, multi):
        self.x, self.teacher, self.student = x, teacher, student
        self.temperature, self.teacher_weights, self.multi = temperature, teacher_weights, multi


class Term:
    """One weighted term of the loss (a base class).

    Args:
        weight: Multiplier of the term.
        inside: Whether `(1 - alpha)` scales the term.

    Attributes:
        kind: `"distillation"` (on logits) or `"feature"`.
        temperature: The term's own temperature, or None.
        follows_temperature: Whether the term uses the distiller's temperature variable (so schedules
            reach it); a term that cannot keeps the distiller at its own temperature.
        per_example: Whether `__call__` returns `[B]` values (False: one value per batch, which cannot
            honour sample weights).
        source: The object the user passed (for messages and saving).

    Example:
    ```python
    class Entropy(Term):   # a new kind of term: the student's entropy
        def __call__(self, inputs):
            log_p = ops.log_softmax(inputs.student["logits"])
            return -ops.sum(ops.exp(log_p) * log_p, axis=-1)
    ```
    """

    kind = DISTILLATION
    temperature = None
    follows_temperature = True
    per_example = True

    def __init__(self, source, weight=1.0, inside=True):
        self.source = source
        self.weight = float(weight)
        self.inside = bool(inside)

    @property
    def name(self):
        """A readable name for messages."""
        return getattr(self.source, "name", None) or type(self.source).__name__

    def teacher_specs(self, index):
        """Features of teacher `index` the term reads (besides the logits)."""
        return []

    def student_specs(self):
        """Features of the student the term reads (besides the logits)."""
        return []

    def teacher_keys(self):
        """Keys of teacher outputs the term reads."""
        return {LOGITS}

    def reads(self, teacher_outputs):
        """Whether the term can compute its value from these (cached) teacher outputs."""
        return self.teacher_keys() <= set(teacher_outputs)

    def build(self, student_view, teacher_views):
        """Creates the term's own weights once the models' outputs are known (default: none)."""

    def check_teachers(self, num_teachers):
        """Raises ValueError if the term cannot read `num_teachers` teachers (default: any number)."""

    def __call__(self, inputs):
        """Per-example values `[B]` (or a scalar if not `per_example`), before `weight`."""
        raise NotImplementedError


class LogitsLossTerm(Term):
    """A `kd_tf.distill.losses.LogitsLoss` (KL, soft cross-entropy, MSE) on the logits.

    Example:
    ```python
    LogitsLossTerm("kl")(inputs)   # [B] KL(softmax(t/T) || softmax(s/T)) * T^2
    ```
    """

    def __init__(self, loss, weight=1.0, inside=True):
        super().__init__(kd_losses.get(loss), weight, inside)
        self.temperature = self.source.temperature

    def __call__(self, inputs):
        return self.source.per_token(
            inputs.teacher[LOGITS],
            inputs.student[LOGITS],
            temperature=inputs.temperature,
            teacher_weights=inputs.teacher_weights,
            multi=inputs.multi,
        )


class ProbabilityLossTerm(Term):
    """The keras.io example's convention: `fn(softmax(t / T), softmax(s / T)) * T**2` for any loss `fn` on
    probabilities (e.g. `keras.losses.KLDivergence()`).

    Example:
    ```python
    ProbabilityLossTerm(keras.losses.KLDivergence())(inputs)
    ```
    """

    def __call__(self, inputs):
        temperature = ops.cast(inputs.temperature, "float32")
        p_t = ops.exp(
            kd_losses.teacher_log_probs(
                inputs.teacher[LOGITS], temperature, inputs.teacher_weights, multi=inputs.multi
            )
        )
        p_s = ops.softmax(ops.cast(inputs.student[LOGITS], "float32") / temperature, axis=-1)
        fn = self.source
        raw = fn.call(p_t, p_s) if isinstance(fn, keras.losses.Loss) else fn(p_t, p_s)
        return ops.cast(raw, "float32") * ops.square(temperature)  # [B] or [B, T]: the reduction weighs units


class SparseLogitsTerm(Term):
    """A `kd_tf.distill.sparse.SparseKLDistillation`: reads cached sparse targets (`sparse_ids`, ...), or
    makes the live (or densely cached) teacher logits sparse the same way. Its temperature is fixed.

    Example:
    ```python
    SparseLogitsTerm(SparseKLDistillation(k=64))(inputs)   # [B, T]
    ```
    """

    follows_temperature = False

    def __init__(self, loss, weight=1.0, inside=True):
        super().__init__(loss, weight, inside)
        self.temperature = loss.temperature

    def teacher_keys(self):
        return set(self.source.target_keys())

    def reads(self, teacher_outputs):
        return super().reads(teacher_outputs) or LOGITS in teacher_outputs

    def check_teachers(self, num_teachers):
        if num_teachers > 1:
            raise ValueError(
                f"{self.name} distils one teacher; average several teachers' logits into one model, or use "
                "the dense KLDistillation with teacher_weights."
            )

    def __call__(self, inputs):
        return self.source.per_token(inputs.teacher, inputs.student[LOGITS])


class FeatureMatchTerm(Term):
    """A `FeatureMatch` (its own `weight` applies inside it; the term's weight on top).

    Example:
    ```python
    FeatureMatchTerm(FeatureMatch("hidden"), weight=0.5, inside=True)
    ```
    """

    kind = FEATURE

    @property
    def match(self):
        """The `FeatureMatch`."""
        return self.source

    def teacher_specs(self, index):
        return [self.match.teacher_feature] if self.match.teacher_index == index else []

    def student_specs(self):
        return [self.match.student_feature]

    def teacher_keys(self):
        return {teacher_key(self.match.teacher_feature, self.match.teacher_index)}

    def check_teachers(self, num_teachers):
        if self.match.teacher_index >= max(num_teachers, 1):
            raise ValueError(
                f"{self.match.name}: teacher_index {self.match.teacher_index} but only {num_teachers} "
                "teachers; teacher_index counts from 0 in the order of Distiller(teacher=[...])."
            )

    def build(self, student_view, teacher_views):
        fm = self.match
        if fm.built:
            return
        s = student_view.symbolic
        t = teacher_views[fm.teacher_index].symbolic if teacher_views else None
        if s is None or t is None:
            raise ValueError(
                f"{fm.name}: feature distillation needs functional teacher and student models so that "
                "feature widths are known when the distiller is built."
            )
        fm.build(t[str(fm.teacher_feature)].shape, s[str(fm.student_feature)].shape)

    def __call__(self, inputs):
        fm = self.match
        mask = None
        if fm.mask is not None:
            for source in (inputs.x, inputs.student, inputs.teacher):
                if isinstance(source, dict) and fm.mask in source:
                    mask = source[fm.mask]
                    break
        return fm(
            inputs.teacher[teacher_key(fm.teacher_feature, fm.teacher_index)],
            inputs.student[str(fm.student_feature)],
            mask,
        )


def logits_term(loss, weight=1.0, inside=True):
    """The term of a loss on logits given by name, as a `kd_tf` loss, or as a loss on probabilities.

    Args:
        loss: `"kl"`, `"reverse_kl"`, `"jsd"`, `"soft_cross_entropy"`, `"mse"`, a
            `kd_tf.distill.losses.LogitsLoss`, a `kd_tf.distill.SparseKLDistillation`, or any Keras loss or
            function on probabilities (the keras.io convention).
        weight: The term's weight.
        inside: Whether `(1 - alpha)` scales it.

    Returns:
        A `Term`.

    Raises:
        ValueError: For an unknown loss name.

    Example:
    ```python
    logits_term("kl")   # KL(softmax(t/T) || softmax(s/T)) * T^2
    ```
    """
    if isinstance(loss, SparseKLDistillation):
        return SparseLogitsTerm(loss, weight, inside)
    if loss is None or isinstance(loss, (str, kd_losses.LogitsLoss)):
        return LogitsLossTerm(loss, weight, inside)
    return ProbabilityLossTerm(loss, weight, inside)


def feature_term(match, weight=1.0, inside=False):
    """The term of a `FeatureMatch` (outside `(1 - alpha)` unless `inside`).

    Args:
        match: A `FeatureMatch`.
        weight: The term's weight (on top of the match's own).
        inside: Whether `(1 - alpha)` scales it.

    Returns:
        A `FeatureMatchTerm`.

    Raises:
        ValueError: If `match` is not a `FeatureMatch`.

    Example:
    ```python
    feature_term(FeatureMatch("encoder/pooled_output", loss="cosine"))
    ```
    """
    if not isinstance(match, FeatureMatch):
        raise ValueError(
            f"features= takes kd_tf.distill.FeatureMatch objects, got {type(match).__name__}; pass "
            "keras.distillation plug-ins in distillation_losses=."
        )
    return FeatureMatchTerm(match, weight, inside)


__all__ = [
    "DISTILLATION",
    "FEATURE",
    "FeatureMatchTerm",
    "LogitsLossTerm",
    "ProbabilityLossTerm",
    "SparseLogitsTerm",
    "Term",
    "TermInputs",
    "feature_term",
    "logits_term",
    "per_example_values",
    "teacher_key",
]
