"""The loss a `Distiller` minimises for one batch: its terms, the hard-label loss, alpha and temperature.

```
loss = alpha * hard + (1 - alpha) * (inside terms) + (outside terms)
```

* `hard`: the student loss on the labels, averaged over the labelled examples (`kd_tf.distill.targets`
  says which are; `kd_tf.distill.reduction` how the averages are taken);
* inside terms: the constructor's `distillation_losses` (keras.distillation's rule) or the logits loss of
  `compile(distillation_loss_fn=...)` (the keras.io rule; KL by default);
* outside terms: the constructor's `features=` (kd-tf's rule).

A batch without labels, or an example labelled -1, has no hard part: the same formula with `hard = 0`.
One temperature, the distiller's variable, softens every logits term (`resolve_temperature`).
"""

import keras
import tensorflow as tf
from keras import ops

from kd_tf.distill import keras_compat
from kd_tf.distill import losses as kd_losses
from kd_tf.distill.reduction import BatchReduction
from kd_tf.distill.targets import LOGITS, standardize_labels
from kd_tf.distill.terms import DISTILLATION, FEATURE, TermInputs, logits_term

DEFAULT_TEMPERATURE = 3.0


class Objective:
    """The terms and weights of a distiller's loss, and its value for one batch.

    Args:
        ctor_terms: Terms of the constructor's `distillation_losses` (inside `(1 - alpha)`).
        feature_terms: Terms of the constructor's `features` (outside).
        alpha: The distiller's alpha variable.
        temperature: The distiller's temperature variable.
        teacher_weights: One weight per teacher, or None.

    Example:
    ```python
    objective = Objective([], [], alpha_variable, temperature_variable, None)   # KL by default
    parts, reduction = objective.parts(x, labels, None, student_outputs, teacher_outputs)
    ```
    """

    def __init__(self, ctor_terms, feature_terms, alpha, temperature, teacher_weights):
        self.ctor_terms = list(ctor_terms)
        self.feature_terms = list(feature_terms)
        self.alpha, self.temperature = alpha, temperature
        self.teacher_weights = teacher_weights
        self.compile_term = None
        # keras.distillation's distillation_losses are the whole distillation: no implicit KL beside them.
        self.default_term = None if self.ctor_terms else logits_term("kl")
        self.student_loss_fn = kd_losses.HardLabelCrossEntropy()

    def terms(self):
        """Every term of the loss, in a fixed order."""
        logits = [t for t in (self.compile_term, self.default_term) if t is not None][:1]
        return self.ctor_terms + logits + self.feature_terms

    def set_distillation_loss(self, loss):
        """`compile(distillation_loss_fn=...)`: the logits loss, inside `(1 - alpha)`.

        Raises:
            ValueError: If the constructor's `distillation_losses` already hold a logits loss, or `loss`
                reads features.
        """
        if any(t.kind == DISTILLATION for t in self.ctor_terms):
            raise ValueError(
                "Logits losses were given to the constructor (distillation_losses); do not pass "
                "distillation_loss_fn to compile as well."
            )
        term = keras_compat.as_term(loss)
        if term.kind == FEATURE or not term.reads({LOGITS: None}):
            raise ValueError(
                f"compile(distillation_loss_fn=...) takes a loss on logits; pass the feature loss "
                f"{term.name} to the constructor (features=... or distillation_losses=...)."
            )
        self.compile_term = term

    def teacher_keys(self):
        """The keys of teacher outputs the terms read, `logits` included."""
        return sorted(set().union(*(t.teacher_keys() for t in self.terms())) | {LOGITS})

    def reads(self, teacher_outputs):
        """Whether every term can read these teacher outputs (cached targets), so no teacher need run."""
        return all(t.reads(teacher_outputs) for t in self.terms())

    def resolve_temperature(self, requested, current, setting=False):
        """The one temperature of the loss: `requested`, else the terms' own (they must agree), else
        `current`.

        Args:
            requested: The temperature asked for (`compile(temperature=)`, a schedule), or None.
            current: The distiller's current temperature.
            setting: False at compile time (a requested value must match the terms' own temperature), True
                for schedules and `distiller.temperature = ...` (it must match only terms that cannot
                follow the distiller's variable).

        Returns:
            A float.

        Raises:
            ValueError: If the terms' temperatures disagree, or `requested` conflicts as above.
        """
        terms = self.terms()
        own = {t.temperature for t in terms if t.temperature is not None}
        fixed = {
            t.temperature: t.name for t in terms if t.temperature is not None and not t.follows_temperature
        }
        if len(own) > 1:
            raise ValueError(
                f"The distillation losses have different temperatures {sorted(own)}; kd_tf.Distiller uses "
                "one temperature (a variable that schedules change): give them the same value."
            )
        if requested is None:
            return own.pop() if own else float(current)
        if not float(requested) > 0.0:
            raise ValueError(f"temperature must be positive, got {requested}.")
        conflict = set(fixed) if setting else own
        if conflict and conflict != {float(requested)}:
            who = (
                f"{fixed[min(fixed)]} uses its own temperature"
                if setting
                else "The loss's own temperature is"
            )
            raise ValueError(
                f"{who} {sorted(conflict)} and the distiller was asked for temperature {requested}: set "
                "it in one place: the loss's own, or compile(temperature=...) with a loss without one."
            )
        return float(requested)

    def _teacher_count(self, t_logits, s_logits):
        """`(multi, weights)`: whether the teacher logits stack several teachers (one more axis than the
        student's: `[B, K, C]`), and the weights to average them with."""
        t_rank, s_rank = t_logits.shape.rank, s_logits.shape.rank
        if t_rank == s_rank + 1:
            count = t_logits.shape[1]
        elif t_rank == s_rank:
            count = 1
        else:
            raise ValueError(
                f"Teacher logits {t_logits.shape} do not fit the student's {s_logits.shape}: expected the "
                "same shape, or one more axis after the batch axis for several teachers ([B, K, C])."
            )
        weights = self.teacher_weights
        if weights is not None and count is not None and len(weights) != count:
            raise ValueError(
                f"The teacher outputs hold {count} teachers but teacher_weights has {len(weights)} entries; "
                "pass one weight per teacher (in the order the cache stacked them)."
            )
        return count != 1, (weights if count != 1 else None)

    def hard_values(self, labels, mask, s_logits):
        """Hard-label loss per unit (per example, or per token for `[B, T, V]` logits); unlabelled units get
        label 0 here and are masked out by the reduction."""
        if mask is not None:
            labels = tf.where(mask, labels, tf.zeros_like(labels))
        fn, logits = self.student_loss_fn, ops.cast(s_logits, "float32")
        raw = ops.cast(
            fn.call(labels, logits) if isinstance(fn, keras.losses.Loss) else fn(labels, logits), "float32"
        )
        if len(raw.shape) == 0:
            raise ValueError(
                "student_loss_fn returned one value per batch; the distiller needs one per example (or per "
                "token) to mask unlabelled examples and apply sample weights. Pass a keras.losses.Loss or a "
                "function that returns [batch] (or [batch, length]) values."
            )
        return raw

    def parts(self, x, labels, sample_weight, student_outputs, teacher_outputs):
        """This replica's share of every part of the loss for one batch.

        Args:
            x: The inputs (feature masks are read from them).
            labels: Labels, or None.
            sample_weight: Per-example weights, or None.
            student_outputs: The student view's outputs (`logits` and features).
            teacher_outputs: Teacher outputs (`logits` and features), or None (plain-label evaluation).

        Returns:
            `(parts, reduction)`: `parts` holds `loss`, `student_loss` (with labels), `distillation_loss`
            and `feature_loss` (with teacher outputs), `student_logits`, and the standardized `labels`
            and `mask`; `reduction` is the batch's `BatchReduction`.

        Raises:
            ValueError: If there is nothing to learn from, or a per-batch term meets sample weights.
        """
        s_logits = student_outputs[LOGITS]
        mask = None
        if labels is not None:
            labels, mask = standardize_labels(labels, s_logits)
        reduction = BatchReduction(tf.shape(s_logits)[:-1], sample_weight, mask)
        parts = {"student_logits": s_logits, "labels": labels, "mask": mask}
        if labels is not None:
            parts["student_loss"] = reduction.labelled_mean(self.hard_values(labels, mask, s_logits))
        if teacher_outputs is None:  # a teacher-less distiller evaluated on plain labels
            if labels is None:
                raise ValueError(
                    "Nothing to learn from: the batch has no labels, carries no teacher outputs and the "
                    "distiller has no teacher. Attach cached outputs with "
                    "kd_tf.distill.TeacherCache(...).attach(dataset), or pass teacher=..."
                )
            parts["loss"] = parts["student_loss"]
            return parts, reduction
        teacher_outputs = dict(teacher_outputs)
        multi, weights = False, None  # cached sparse targets carry no dense logits
        if LOGITS in teacher_outputs:
            teacher_outputs[LOGITS] = ops.cast(teacher_outputs[LOGITS], "float32")
            multi, weights = self._teacher_count(teacher_outputs[LOGITS], s_logits)
        inputs = TermInputs(x, teacher_outputs, student_outputs, self.temperature, weights, multi)
        sums = {DISTILLATION: 0.0, FEATURE: 0.0, True: 0.0, False: 0.0}
        for term in self.terms():
            values = term(inputs)  # [B], or [B, T] per token
            if term.per_example and len(values.shape) > 0:
                value = reduction.mean(values)
            elif sample_weight is not None:
                raise ValueError(
                    f"{term.name} returns one value per batch and cannot honour sample weights; use a "
                    "kd_tf.distill loss or FeatureMatch, or train without sample_weight."
                )
            else:
                value = reduction.share(values)
            value = value * term.weight
            sums[term.kind] = sums[term.kind] + value
            sums[term.inside] = sums[term.inside] + value
        parts["distillation_loss"] = ops.convert_to_tensor(sums[DISTILLATION], "float32")
        parts["feature_loss"] = ops.convert_to_tensor(sums[FEATURE], "float32")
        hard = parts.get("student_loss", 0.0)
        parts["loss"] = self.alpha * hard + (1.0 - self.alpha) * sums[True] + sums[False]
        return parts, reduction


__all__ = ["DEFAULT_TEMPERATURE", "Objective"]
