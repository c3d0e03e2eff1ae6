"""`Distiller`: a `keras.Model` that trains a student on a frozen teacher's logits and features.

One training step (the article's section 3.2):

1. the teacher's outputs come from a live, frozen forward pass (`training=False`, outside the gradient
   tape) or from the batch itself when they were cached (`kd_tf.distill.TeacherCache`);
2. the student runs with `training=True`;
3. `loss = alpha * hard + (1 - alpha) * (inside terms) + (outside terms)` (`kd_tf.distill.terms`), every
   part averaged over the global batch (`kd_tf.distill.reduction`; the hard-label part over the labelled
   examples only, `kd_tf.distill.targets`);
4. the gradients update the student and the feature projections only.
"""

import contextlib

import keras
import tensorflow as tf
from keras import ops

from kd_tf.distill import keras_compat
from kd_tf.distill import losses as kd_losses
from kd_tf.distill.keras_compat import NOT_GIVEN
from kd_tf.distill.objective import DEFAULT_TEMPERATURE, Objective
from kd_tf.distill.reduction import replica_sum, unit_weights
from kd_tf.distill.saving import DistillerSaving
from kd_tf.distill.targets import LOGITS, split_targets, standardize_labels
from kd_tf.distill.terms import FEATURE, FeatureMatchTerm, feature_term
from kd_tf.distill.views import ModelView

DEFAULT_ALPHA = 0.1  # the keras.io example's
KERAS_DEFAULT_ALPHA = 0.5  # keras.distillation's student_loss_weight


def resolve_jit_compile(jit_compile="auto", devices=None):
    """Whether to XLA-compile the train step.

    Args:
        jit_compile: True, False, or `"auto"`: on when an accelerator (GPU or TPU) is visible, off on
            CPU-only machines, where compiling a BERT step costs more than it saves (DESIGN.md: ~80 s to
            compile a tiny encoder's step versus ~4 s for a whole uncompiled run).
        devices: Device type names to decide from (default: the visible logical devices).

    Returns:
        A bool.

    Raises:
        ValueError: For any other value.

    Example:
    ```python
    resolve_jit_compile("auto", devices=["CPU", "GPU"])  # True
    ```
    """
    if jit_compile in (True, False):
        return bool(jit_compile)
    if jit_compile != "auto":
        raise ValueError(f"jit_compile must be True, False or 'auto', got {jit_compile!r}.")
    if devices is None:
        devices = [d.device_type for d in tf.config.list_logical_devices()]
    return any(d in ("GPU", "TPU") for d in devices)


@keras.saving.register_keras_serializable(package="kd_tf")
class Distiller(DistillerSaving, keras.Model):
    """Distills one or several frozen teachers into a student: logits and, optionally, features.

    Accepts the keras.io example's API (`Distiller(student=..., teacher=...)`, then
    `compile(optimizer, metrics, student_loss_fn, distillation_loss_fn, alpha, temperature)`) and
    `keras.distillation.Distiller`'s (`Distiller(teacher, student, distillation_losses,
    distillation_loss_weights, student_loss_weight)`, teacher first; see
    `kd_tf.distill.keras_compat.resolve_models` for how the two orders are told apart), and computes
    keras.distillation's loss and update from its arguments. It adds sample weights, unlabelled examples,
    padding-masked feature matching with learned projections, several teachers, cached teacher outputs,
    schedulable `alpha`/`temperature`, loss scaling for mixed precision and a full `.keras` round trip.

    Calling the distiller (and `predict`) runs the student. `fit` logs `loss` (total), `student_loss` (with
    labels), `distillation_loss` and `feature_loss` (with teacher outputs; the latter only with feature
    terms) and the student's metrics.

    Args:
        *args: Positional models (and keras.distillation's further arguments), see above.
        student: The `keras.Model` to train. Its output is the logits, or a dict holding them under
            `logits_key`.
        teacher: A `keras.Model` with the same label space, or a list of them (several teachers), or
            None when every batch carries cached teacher outputs. Teachers are frozen
            (`trainable = False`) and always run with `training=False`.
        teacher_weights: One weight per teacher: the target is the weighted average of their softened
            distributions. Defaults to equal weights. Without a live teacher, one weight per cached teacher.
        features: `kd_tf.distill.FeatureMatch`es added to the loss with their own weight, outside
            `(1 - alpha)` (see `layer_map`).
        logits_key: Key of the logits in dict-output models. Defaults to `"logits"`.
        distillation_losses: keras.distillation's: a loss or list of losses (`LogitsDistillation`,
            `FeatureDistillation`, any `DistillationLoss`, `FeatureMatch`, `kd_tf` logits losses), all
            weighted by `(1 - student_loss_weight)` as in Keras.
        distillation_loss_weights: Weights of `distillation_losses`. Defaults to 1 each.
        student_loss_weight: keras.distillation's name for `alpha`. Defaults to 0.5 with
            keras.distillation arguments (as in Keras), else 0.1 (the keras.io example).
        name: Model name.
        **kwargs: Passed to `keras.Model`.

    Raises:
        ValueError: If the models are not Keras models, the call is ambiguous, their logits widths differ,
            or an argument is inconsistent; each message says what to change.

    Example:
    ```python
    distiller = kd_tf.Distiller(student=student, teacher=teacher)
    distiller.compile(
        optimizer=keras.optimizers.Adam(),
        metrics=[keras.metrics.SparseCategoricalAccuracy()],
        student_loss_fn=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        distillation_loss_fn=keras.losses.KLDivergence(),
        alpha=0.1,
        temperature=10,
    )
    distiller.fit(x_train, y_train, epochs=3)
    distiller.student.save("student.keras")
    ```
    """

    def __init__(
        self,
        *args,
        student=NOT_GIVEN,
        teacher=NOT_GIVEN,
        teacher_weights=None,
        features=None,
        logits_key=LOGITS,
        distillation_losses=None,
        distillation_loss_weights=None,
        student_loss_weight=None,
        name="distiller",
        **kwargs,
    ):
        super().__init__(name=name, **kwargs)
        named, keras_style = keras_compat.resolve_models(
            args,
            dict(
                student=student,
                teacher=teacher,
                distillation_losses=distillation_losses,
                distillation_loss_weights=distillation_loss_weights,
                student_loss_weight=student_loss_weight,
            ),
        )
        student, teacher = named["student"], named["teacher"]
        if not isinstance(student, keras.Model):
            raise ValueError(f"student must be a keras.Model, got {type(student).__name__}.")
        teachers = (
            [] if teacher is None else list(teacher) if isinstance(teacher, (list, tuple)) else [teacher]
        )
        for t in teachers:
            if not isinstance(t, keras.Model):
                raise ValueError(
                    f"teacher must be a keras.Model (or a list of them), got {type(t).__name__}."
                )
            if t is student:
                raise ValueError("The student and the teacher are the same model; pass two different models.")
            t.trainable = False
        if len(args) == 2 and teachers and not keras_style:
            keras_compat.warn_if_student_larger(student, teachers)
        self.student = student
        self.teachers = teachers
        self.logits_key = logits_key
        self.teacher_weights = _check_teacher_weights(teacher_weights, len(teachers))

        ctor_terms = keras_compat.distillation_terms(
            named["distillation_losses"], named["distillation_loss_weights"]
        )
        weights = named["distillation_loss_weights"]
        self._ctor_loss_weights = None if weights is None else [float(w) for w in weights]
        feature_terms = [feature_term(f) for f in (features or [])]
        all_terms = ctor_terms + feature_terms
        self.feature_matches = [t.match for t in all_terms if isinstance(t, FeatureMatchTerm)]
        student_specs = [s for t in all_terms for s in t.student_specs()]
        self._student_view = ModelView(student, student_specs, logits_key, "student")
        self._teacher_views = [
            ModelView(
                t,
                [s for term in all_terms for s in term.teacher_specs(k)],
                logits_key,
                f"teacher {k}" if len(teachers) > 1 else "teacher",
            )
            for k, t in enumerate(teachers)
        ]
        self._check_label_space()
        for term in all_terms:
            term.check_teachers(len(teachers))
            term.build(self._student_view, self._teacher_views)
        keras_compat.validate_plugins(ctor_terms, student, teachers)

        self._alpha = self.add_weight(
            shape=(), initializer="zeros", trainable=False, name="alpha", dtype="float32"
        )
        self._temperature = self.add_weight(
            shape=(), initializer="ones", trainable=False, name="temperature", dtype="float32"
        )
        self._objective = Objective(
            ctor_terms, feature_terms, self._alpha, self._temperature, self.teacher_weights
        )
        alpha = named["student_loss_weight"]
        self.alpha = (KERAS_DEFAULT_ALPHA if keras_style else DEFAULT_ALPHA) if alpha is None else alpha
        self._temperature.assign(self._objective.resolve_temperature(None, DEFAULT_TEMPERATURE))
        self.student_loss_tracker = keras.metrics.Mean(name="student_loss")
        self.distillation_loss_tracker = keras.metrics.Mean(name="distillation_loss")
        has_features = any(t.kind == FEATURE for t in all_terms)
        self.feature_loss_tracker = keras.metrics.Mean(name="feature_loss") if has_features else None
        self._jit_compile_argument = "auto"
        self._auto_scale_loss = True
        self.built = True

    def _check_label_space(self):
        s = self._student_view.symbolic
        if s is None:
            return
        width = s[LOGITS].shape[-1]
        for k, view in enumerate(self._teacher_views):
            if view.symbolic is not None and view.symbolic[LOGITS].shape[-1] != width:
                raise ValueError(
                    f"Teacher {k} has {view.symbolic[LOGITS].shape[-1]} logits and the student {width}: "
                    "distillation needs the same label space (same classes in the same order)."
                )

    # ------------------------------------------------------------------ keras.io / Keras API
    @property
    def teacher(self):
        """The teacher (the first one when there are several), or None."""
        return self.teachers[0] if self.teachers else None

    @property
    def alpha(self):
        """Weight of the hard-label loss (a float; `alpha_variable` is the variable)."""
        return float(self._alpha.numpy())

    @alpha.setter
    def alpha(self, value):
        if not 0.0 <= float(value) <= 1.0:
            raise ValueError(f"alpha (student_loss_weight) must be in [0, 1], got {value}.")
        self._alpha.assign(float(value))

    @property
    def temperature(self):
        """Softmax temperature of every logits term (a float); the one temperature the loss uses."""
        return float(self._temperature.numpy())

    @temperature.setter
    def temperature(self, value):
        self._temperature.assign(self._objective.resolve_temperature(value, self.temperature, setting=True))

    @property
    def alpha_variable(self):
        """The non-trainable variable behind `alpha` (what compiled steps and schedules use)."""
        return self._alpha

    @property
    def temperature_variable(self):
        """The non-trainable variable behind `temperature`."""
        return self._temperature

    def compile(
        self,
        optimizer="adam",
        metrics=None,
        student_loss_fn=None,
        distillation_loss_fn=None,
        alpha=None,
        temperature=None,
        *,
        loss=None,
        weighted_metrics=None,
        jit_compile="auto",
        auto_scale_loss=True,
        **kwargs,
    ):
        """Configures training; accepts the keras.io example's and keras.distillation's arguments.

        Args:
            optimizer: Optimizer (instance or name) for the student and the feature projections.
            metrics: Student metrics on labels (computed from the student's logits, labelled examples only).
            student_loss_fn: Hard-label loss `(labels, logits)`; a Keras loss, its name, or a function
                returning one value per example. Defaults to `kd_tf.distill.losses.HardLabelCrossEntropy()`.
            distillation_loss_fn: A `kd_tf.distill.losses` logits loss (or `"kl"`, `"soft_cross_entropy"`,
                `"mse"`), a `keras.distillation.DistillationLoss`, or, as in the keras.io example, any loss
                on probabilities (`keras.losses.KLDivergence()`), called as
                `fn(softmax(t / T), softmax(s / T)) * T**2`. Defaults to `KLDistillation`.
            alpha: Weight of the hard-label loss; the inside terms get `1 - alpha`. Defaults to the
                current value (the constructor's `student_loss_weight`, 0.5 with keras.distillation
                arguments, else 0.1).
            temperature: Softmax temperature. Defaults to the loss's own temperature, else the current one
                (3.0 unless set).
            loss: keras.distillation's name for `student_loss_fn`.
            weighted_metrics: Metrics that use the sample weights.
            jit_compile: True, False or `"auto"` (on only with a GPU/TPU; see `resolve_jit_compile`).
            auto_scale_loss: Wrap the optimizer in `keras.optimizers.LossScaleOptimizer` when the
                student computes in float16 (`mixed_float16`).
            **kwargs: Passed to `keras.Model.compile` (`steps_per_execution`, `run_eagerly`, ...).

        Raises:
            ValueError: If `alpha` is outside [0, 1], `temperature` is not positive, both `loss` and
                `student_loss_fn` are given, or two temperatures disagree.

        Example:
        ```python
        distiller.compile(optimizer="adam", distillation_loss_fn="kl", alpha=0.1, temperature=3.0)
        ```
        """
        if loss is not None and student_loss_fn is not None:
            raise ValueError("Pass the hard-label loss once: student_loss_fn=... or loss=..., not both.")
        student_loss_fn = student_loss_fn if student_loss_fn is not None else loss
        if isinstance(student_loss_fn, str):
            student_loss_fn = keras.losses.get(student_loss_fn)
        self._objective.student_loss_fn = student_loss_fn or kd_losses.HardLabelCrossEntropy()
        if distillation_loss_fn is not None:
            self._objective.set_distillation_loss(distillation_loss_fn)
        self._temperature.assign(self._objective.resolve_temperature(temperature, self.temperature))
        if alpha is not None:
            self.alpha = alpha
        self._jit_compile_argument = jit_compile
        self._auto_scale_loss = auto_scale_loss
        super().compile(
            optimizer=optimizer,
            metrics=metrics,
            weighted_metrics=weighted_metrics,
            jit_compile=resolve_jit_compile(jit_compile),
            auto_scale_loss=False,
            **kwargs,
        )
        if (
            auto_scale_loss
            and self.student.dtype_policy.name == "mixed_float16"
            and not isinstance(self.optimizer, keras.optimizers.LossScaleOptimizer)
        ):
            self.optimizer = keras.optimizers.LossScaleOptimizer(self.optimizer, name="loss_scale_optimizer")

    def call(self, inputs, training=None):
        """Runs the student."""
        return self.student(inputs, training=training)

    # ------------------------------------------------------------------ loss computation
    def teacher_outputs(self, x):
        """The teachers' outputs this distiller needs, from a live frozen forward pass.

        Args:
            x: A batch of inputs.

        Returns:
            Dict with `logits` (`[B, C]`, or `[B, K, C]` for K teachers, float32) and every teacher
            feature the terms read (`"<feature>"`, or `"<feature>@k"` for teacher k > 0).

        Raises:
            ValueError: If the distiller has no teacher.

        Example:
        ```python
        outputs = distiller.teacher_outputs(x)   # what TeacherCache stores per example
        ```
        """
        if not self.teachers:
            raise ValueError(
                "This distiller has no teacher and the batch carries no teacher outputs: attach cached "
                "outputs with kd_tf.distill.TeacherCache(...).attach(dataset), or pass teacher=..."
            )
        outs = [view(x, training=False) for view in self._teacher_views]
        logits = [ops.cast(o[LOGITS], "float32") for o in outs]
        result = {LOGITS: logits[0] if len(logits) == 1 else ops.stack(logits, axis=1)}
        for k, o in enumerate(outs):
            for key, value in o.items():
                if key != LOGITS:
                    result[key if k == 0 else f"{key}@{k}"] = value
        return tf.nest.map_structure(tf.stop_gradient, result)

    def needed_teacher_outputs(self):
        """The keys of teacher outputs this distiller's terms read (what a cache must hold)."""
        return self._objective.teacher_keys()

    def _teacher_outputs_for(self, x, carried):
        needed = set(self.needed_teacher_outputs())
        if carried is not None and self._objective.reads(carried):
            return carried
        if self.teachers:
            return self.teacher_outputs(x)  # nothing carried, or an incomplete cache: run the teacher live
        if carried is not None:
            raise ValueError(
                f"The batch's teacher outputs lack {sorted(needed - set(carried))} and there is no teacher "
                "to compute them: rebuild the cache with this distiller, TeacherCache(dir, distiller)."
            )
        return None

    def loss_parts(
        self, x, y=None, sample_weight=None, training=False, student_outputs=None, teacher_outputs=None
    ):
        """Every part of the loss for one batch, as scalars.

        Args:
            x: Inputs.
            y: Labels, targets from `with_teacher_outputs`, or None (unlabelled).
            sample_weight: Optional `[B]` weights (see `kd_tf.distill.reduction` for the averages).
            training: Whether the student runs in training mode.
            student_outputs: The student view's outputs if already computed.
            teacher_outputs: Teacher outputs if already known (cached or precomputed).

        Returns:
            Dict with `loss` (total), `student_loss` (absent without labels), `distillation_loss` and
            `feature_loss` (absent without teacher outputs), and `student_logits`.

        Example:
        ```python
        parts = distiller.loss_parts(x, y)
        float(parts["loss"])
        ```
        """
        labels, carried = split_targets(y)
        if teacher_outputs is None:
            teacher_outputs = self._teacher_outputs_for(x, carried)
        if student_outputs is None:
            student_outputs = self._student_view(x, training=training)
        parts, _ = self._objective.parts(x, labels, sample_weight, student_outputs, teacher_outputs)
        return {k: v for k, v in parts.items() if k not in ("labels", "mask")}

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """The total loss (Keras's hook); see `loss_parts` for the parts."""
        return self.loss_parts(x, y, sample_weight, training=training)["loss"]

    # ------------------------------------------------------------------ steps and logs
    def _step(self, data, training):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        labels, carried = split_targets(y)
        teacher_outputs = self._teacher_outputs_for(x, carried)  # outside the tape: the teacher is frozen
        with tf.GradientTape() if training else contextlib.nullcontext() as tape:
            student_outputs = self._student_view(x, training=training)
            parts, reduction = self._objective.parts(
                x, labels, sample_weight, student_outputs, teacher_outputs
            )
            scaled = self.optimizer.scale_loss(parts["loss"]) if training else None
        if training:
            variables = self.trainable_variables
            self.optimizer.apply_gradients(zip(tape.gradient(scaled, variables), variables))
        return self._log(parts, reduction, sample_weight)

    def train_step(self, data):
        return self._step(data, training=True)

    def test_step(self, data):
        return self._step(data, training=False)

    def _log(self, parts, reduction, sample_weight):
        """Updates the trackers and label metrics with this step's global values; returns only what was
        computed (no `distillation_loss` without teacher outputs, no `student_loss` without labels)."""
        trackers = [(self._loss_tracker, "loss", reduction.local_count)]
        if "student_loss" in parts:
            trackers.append((self.student_loss_tracker, "student_loss", reduction.local_labelled))
        if "distillation_loss" in parts:
            trackers.append((self.distillation_loss_tracker, "distillation_loss", reduction.local_count))
            if self.feature_loss_tracker is not None:
                trackers.append((self.feature_loss_tracker, "feature_loss", reduction.local_count))
        for tracker, key, count in trackers:
            tracker.update_state(replica_sum(parts[key]), sample_weight=count)
        own = [self.student_loss_tracker, self.distillation_loss_tracker, self.feature_loss_tracker]
        skip = {t.name for t in own if t is not None} - {t.name for t, _, _ in trackers}
        results = self._label_metrics(parts["labels"], parts["mask"], parts["student_logits"], sample_weight)
        return {k: v for k, v in results.items() if k not in skip}

    def _label_metrics(self, labels, mask, logits, sample_weight):
        """Updates the compiled metrics on the labelled examples only; returns every metric's result."""
        if labels is None:
            return self.get_metrics_result()
        if mask is not None:
            labels, logits = tf.boolean_mask(labels, mask), tf.boolean_mask(logits, mask)
            if sample_weight is not None:
                sample_weight = tf.boolean_mask(unit_weights(sample_weight, tf.shape(mask)), mask)
        return super().compute_metrics(None, labels, logits, sample_weight=sample_weight)

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        """Label metrics on the labelled examples (Keras's hook; `fit` and `evaluate` use it too)."""
        labels, _ = split_targets(y)
        y_pred = y_pred[self.logits_key] if isinstance(y_pred, dict) else y_pred
        mask = None
        if labels is not None:
            labels, mask = standardize_labels(labels, y_pred)
        return self._label_metrics(labels, mask, y_pred, sample_weight)


def _check_teacher_weights(teacher_weights, num_teachers):
    if teacher_weights is None:
        return [1.0] * num_teachers if num_teachers > 1 else None
    weights = [float(w) for w in teacher_weights]
    if num_teachers and len(weights) != num_teachers:
        raise ValueError(f"Got {len(weights)} teacher_weights for {num_teachers} teachers.")
    if not weights or any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f"teacher_weights must be non-negative with a positive sum, got {weights}.")
    return weights


__all__ = ["Distiller", "resolve_jit_compile"]
