"""`Distiller`: a `keras.Model` that trains a student on a frozen teacher's logits and features.

One training step (the article's section 3.2):

1. the teacher's outputs come from a live, frozen forward pass (`training=False`, outside the gradient
   tape) or from the batch itself when they were cached (`kd_tf.distill.TeacherCache`);
2. the student runs with `training=True`;
3. per example, `loss = alpha * hard-label loss + (1 - alpha) * distillation loss + feature losses`
   (a batch without labels uses `distillation loss + feature losses`), weighted by the sample weights;
4. the gradients update the student and the feature projections only.

Targets are described in `kd_tf.distill.targets`.
"""

import keras
import tensorflow as tf
from keras import ops

from kd_tf.distill import losses as kd_losses
from kd_tf.distill.features import FeatureMatch
from kd_tf.distill.losses import LogitsLoss
from kd_tf.distill.targets import LOGITS, labeled_mask, split_targets
from kd_tf.distill.views import ModelView

try:  # keras >= 3.12
    from keras.distillation import DistillationLoss as _KerasDistillationLoss
except ImportError:  # pragma: no cover
    _KerasDistillationLoss = ()


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


def _per_example_or_scalar(values):
    """Reduce extra axes of a loss value to `[B]`; leave scalars alone."""
    values = ops.cast(values, "float32")
    rank = len(values.shape)
    if rank > 1:
        values = ops.mean(ops.reshape(values, (ops.shape(values)[0], -1)), axis=-1)
    return values


@keras.saving.register_keras_serializable(package="kd_tf")
class Distiller(keras.Model):
    """Distills one or several frozen teachers into a student: logits and, optionally, features.

    Accepts the keras.io example's API (`Distiller(student=..., teacher=...)`, then
    `compile(optimizer, metrics, student_loss_fn, distillation_loss_fn, alpha, temperature)`) and the
    constructor arguments of `keras.distillation.Distiller` (`distillation_losses`,
    `distillation_loss_weights`, `student_loss_weight`), and adds what neither has: sample weights,
    unlabeled batches, padding-masked feature matching with learned projections, several teachers,
    cached teacher outputs, schedulable `alpha`/`temperature`, loss scaling for mixed precision.

    Calling the distiller (and `predict`) runs the student. `fit` logs `loss` (total), `student_loss`,
    `distillation_loss`, `feature_loss` (only with feature terms) and the student's metrics.

    Args:
        student: The `keras.Model` to train. Its output is the logits, or a dict holding them under
            `logits_key`.
        teacher: A `keras.Model` with the same label space, or a list of them (several teachers), or
            None when every batch carries cached teacher outputs. Teachers are frozen
            (`trainable = False`) and always run with `training=False`.
        teacher_weights: One weight per teacher: the target is the weighted average of their softened
            distributions. Defaults to equal weights.
        features: A list of `kd_tf.distill.FeatureMatch` (feature distillation; see `layer_map`).
        logits_key: Key of the logits in dict-output models. Defaults to `"logits"`.
        distillation_losses: keras.distillation-style: a loss or list of losses (ours,
            `keras.distillation.DistillationLoss` plug-ins such as `LogitsDistillation`/
            `FeatureDistillation`, or `FeatureMatch`). Same as `compile(distillation_loss_fn=...)` for a
            single logits loss.
        distillation_loss_weights: Weights of `distillation_losses`. Defaults to 1 each.
        student_loss_weight: keras.distillation's name for `alpha` (used if `compile` gets no `alpha`).
        name: Model name.
        **kwargs: Passed to `keras.Model`.

    Raises:
        ValueError: If the models are not Keras models, their logits widths differ, or an argument is
            inconsistent; each message says what to change.

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
        student,
        teacher=None,
        *,
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
            t.trainable = False
        self.student = student
        self.teachers = teachers
        self.logits_key = logits_key
        if teacher_weights is not None and len(teacher_weights) != max(len(teachers), 1):
            raise ValueError(f"Got {len(teacher_weights)} teacher_weights for {len(teachers)} teachers.")
        self.teacher_weights = (
            [float(w) for w in teacher_weights]
            if teacher_weights is not None
            else ([1.0] * len(teachers) if len(teachers) > 1 else None)
        )

        # Sort the loss terms: logits losses vs feature terms (ours and keras.distillation plug-ins).
        features = list(features or [])
        logits_terms = []
        if distillation_losses is not None:
            dl = (
                distillation_losses
                if isinstance(distillation_losses, (list, tuple))
                else [distillation_losses]
            )
            weights = distillation_loss_weights or [1.0] * len(dl)
            if len(weights) != len(dl):
                raise ValueError(
                    f"Got {len(weights)} distillation_loss_weights for {len(dl)} distillation_losses."
                )
            for loss, w in zip(dl, weights):
                if isinstance(loss, FeatureMatch):
                    loss.weight = loss.weight * float(w)
                    features.append(loss)
                elif _is_keras_feature_loss(loss):
                    features.append(_KerasFeatureTerm(loss, float(w)))
                else:
                    logits_terms.append((kd_losses.get(loss), float(w)))
        self._ctor_logits_terms = logits_terms
        self._student_loss_weight = student_loss_weight
        self.feature_matches = [f for f in features if isinstance(f, FeatureMatch)]
        self._keras_feature_terms = [f for f in features if isinstance(f, _KerasFeatureTerm)]

        student_specs = [f.student_feature for f in self.feature_matches] + [
            t.loss.student_layer_name for t in self._keras_feature_terms if t.loss.student_layer_name
        ]
        self._student_view = ModelView(student, student_specs, logits_key, "student")
        self._teacher_views = []
        for k, t in enumerate(teachers):
            specs = [f.teacher_feature for f in self.feature_matches if f.teacher_index == k] + [
                t_.loss.teacher_layer_name
                for t_ in self._keras_feature_terms
                if t_.loss.teacher_layer_name and k == 0
            ]
            self._teacher_views.append(
                ModelView(t, specs, logits_key, f"teacher {k}" if len(teachers) > 1 else "teacher")
            )
        self._check_label_space()
        self._build_feature_matches()

        self._alpha = self.add_weight(
            shape=(), initializer="zeros", trainable=False, name="alpha", dtype="float32"
        )
        self._temperature = self.add_weight(
            shape=(), initializer="ones", trainable=False, name="temperature", dtype="float32"
        )
        self._alpha.assign(0.1 if student_loss_weight is None else float(student_loss_weight))
        self._temperature.assign(3.0)
        self.student_loss_tracker = keras.metrics.Mean(name="student_loss")
        self.distillation_loss_tracker = keras.metrics.Mean(name="distillation_loss")
        self.feature_loss_tracker = (
            keras.metrics.Mean(name="feature_loss")
            if (self.feature_matches or self._keras_feature_terms)
            else None
        )
        self._student_loss_fn = kd_losses.HardLabelCrossEntropy()
        self._logits_terms = logits_terms or [(kd_losses.KLDistillation(), 1.0)]
        self.built = True

    # ------------------------------------------------------------------ construction helpers
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

    def _build_feature_matches(self):
        for fm in self.feature_matches:
            s = self._student_view.symbolic
            if fm.teacher_index >= max(len(self._teacher_views), 1):
                raise ValueError(
                    f"{fm.name}: teacher_index {fm.teacher_index} but only "
                    f"{len(self._teacher_views)} teachers."
                )
            t = self._teacher_views[fm.teacher_index].symbolic if self._teacher_views else None
            if s is None or t is None:
                raise ValueError(
                    f"{fm.name}: feature distillation needs functional teacher and student models so that "
                    "feature widths are known when the distiller is built."
                )
            fm.build(t[str(fm.teacher_feature)].shape, s[str(fm.student_feature)].shape)

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
        _check_alpha(value)
        self._alpha.assign(float(value))

    @property
    def temperature(self):
        """Softmax temperature of the distillation loss (a float)."""
        return float(self._temperature.numpy())

    @temperature.setter
    def temperature(self, value):
        _check_temperature(value)
        self._temperature.assign(float(value))

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
        """Configures training; accepts the keras.io Distiller example's arguments unchanged.

        Args:
            optimizer: Optimizer (instance or name) for the student and the feature projections.
            metrics: Student metrics on labels (computed from the student's logits).
            student_loss_fn: Hard-label loss `(labels, logits)`; a Keras loss or a function. Defaults to
                `kd_tf.distill.losses.HardLabelCrossEntropy()` (sparse ids or one-hot rows).
            distillation_loss_fn: A `kd_tf.distill.losses` logits loss (or its name: `"kl"`,
                `"soft_cross_entropy"`, `"mse"`), a `keras.distillation.DistillationLoss`, or, as in the
                keras.io example, any loss on probabilities (`keras.losses.KLDivergence()`), which is then
                called as `fn(softmax(t / T), softmax(s / T)) * T**2`. Defaults to `KLDistillation`.
            alpha: Weight of the hard-label loss; the distillation loss gets `1 - alpha`. Defaults to the
                constructor's `student_loss_weight`, else 0.1 (the keras.io default).
            temperature: Softmax temperature. Defaults to the loss's own temperature, else 3.0.
            loss: keras.distillation's name for `student_loss_fn`.
            weighted_metrics: Metrics that use the sample weights.
            jit_compile: True, False or `"auto"` (on only with a GPU/TPU; see `resolve_jit_compile`).
            auto_scale_loss: Wrap the optimizer in `keras.optimizers.LossScaleOptimizer` when the
                student computes in float16 (`mixed_float16`).
            **kwargs: Passed to `keras.Model.compile` (`steps_per_execution`, `run_eagerly`, ...).

        Raises:
            ValueError: If `alpha` is outside [0, 1], `temperature` is not positive, both `loss` and
                `student_loss_fn` are given, or the temperatures of the loss and of `compile` disagree.
        """
        if loss is not None and student_loss_fn is not None:
            raise ValueError("Pass the hard-label loss once: student_loss_fn=... or loss=..., not both.")
        student_loss_fn = student_loss_fn if student_loss_fn is not None else loss
        if isinstance(student_loss_fn, str):
            student_loss_fn = keras.losses.get(student_loss_fn)
        self._student_loss_fn = student_loss_fn or kd_losses.HardLabelCrossEntropy()
        if distillation_loss_fn is not None:
            if self._ctor_logits_terms:
                raise ValueError(
                    "Logits losses were given to the constructor (distillation_losses); do not pass "
                    "distillation_loss_fn to compile as well."
                )
            self._logits_terms = [(kd_losses.get(distillation_loss_fn), 1.0)]
        own_temperatures = {
            float(fn.temperature)
            for fn, _ in self._logits_terms
            if isinstance(fn, LogitsLoss) and fn.temperature is not None
        }
        if temperature is None:
            temperature = own_temperatures.pop() if len(own_temperatures) == 1 else 3.0
        elif own_temperatures and own_temperatures != {float(temperature)}:
            raise ValueError(
                f"compile(temperature={temperature}) disagrees with the loss's own temperature "
                f"{sorted(own_temperatures)}; set it in one place."
            )
        if alpha is None:
            alpha = 0.1 if self._student_loss_weight is None else self._student_loss_weight
        self.alpha = alpha
        self.temperature = temperature
        jit = resolve_jit_compile(jit_compile)
        super().compile(
            optimizer=optimizer,
            metrics=metrics,
            weighted_metrics=weighted_metrics,
            jit_compile=jit,
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
            feature named by the feature matches (`"<feature>"`, or `"<feature>@k"` for teacher k > 0).

        Raises:
            ValueError: If the distiller has no teacher.
        """
        if not self.teachers:
            raise ValueError(
                "This distiller has no teacher and the batch carries no teacher outputs: attach cached "
                "outputs with kd_tf.distill.TeacherCache(...).attach(dataset), or pass teacher=..."
            )
        outs = [view(x, training=False) for view in self._teacher_views]
        result = {}
        logits = [ops.cast(o[LOGITS], "float32") for o in outs]
        result[LOGITS] = logits[0] if len(logits) == 1 else ops.stack(logits, axis=1)
        for k, o in enumerate(outs):
            for key, value in o.items():
                if key != LOGITS:
                    result[key if k == 0 else f"{key}@{k}"] = value
        return _stop_gradient(result)

    def _needed_teacher_keys(self):
        keys = {LOGITS}
        for fm in self.feature_matches:
            keys.add(_teacher_key(fm.teacher_feature, fm.teacher_index))
        for term in self._keras_feature_terms:
            if term.loss.teacher_layer_name:
                keys.add(term.loss.teacher_layer_name)
        return keys

    def _distillation_terms(self, t_logits, s_logits):
        """Returns (per-example [B] sum, scalar sum) of the logits distillation terms."""
        per_example, scalar = None, None
        temperature = self._temperature
        weights = self.teacher_weights
        for fn, w in self._logits_terms:
            if isinstance(fn, LogitsLoss):
                v = fn.per_example(t_logits, s_logits, temperature=temperature, teacher_weights=weights)
            elif isinstance(fn, _KerasDistillationLoss):
                if weights is not None:
                    raise ValueError(
                        f"{type(fn).__name__} (keras.distillation) takes one teacher; use a kd_tf.losses "
                        "loss (e.g. KLDistillation) with several teachers."
                    )
                v = ops.cast(fn.compute_loss(t_logits, s_logits), "float32")
            else:  # keras.io convention: a loss on softened probabilities, times T^2
                p_t = ops.exp(kd_losses.teacher_log_probs(t_logits, temperature, weights))
                p_s = ops.softmax(ops.cast(s_logits, "float32") / temperature, axis=-1)
                raw = fn.call(p_t, p_s) if isinstance(fn, keras.losses.Loss) else fn(p_t, p_s)
                v = _per_example_or_scalar(raw) * ops.square(temperature)
            v = v * w
            if len(v.shape) == 0:
                scalar = v if scalar is None else scalar + v
            else:
                per_example = v if per_example is None else per_example + v
        return per_example, scalar

    def _feature_terms(self, x, s_out, t_out):
        per_example, scalar = None, None
        for fm in self.feature_matches:
            mask = None
            if fm.mask is not None:
                for source in (x, s_out, t_out):
                    if isinstance(source, dict) and fm.mask in source:
                        mask = source[fm.mask]
                        break
            v = fm(
                t_out[_teacher_key(fm.teacher_feature, fm.teacher_index)],
                s_out[str(fm.student_feature)],
                mask,
            )
            per_example = v if per_example is None else per_example + v
        for term in self._keras_feature_terms:
            t_feat = t_out[term.loss.teacher_layer_name] if term.loss.teacher_layer_name else t_out[LOGITS]
            s_feat = s_out[term.loss.student_layer_name] if term.loss.student_layer_name else s_out[LOGITS]
            v = ops.cast(term.loss.compute_loss(t_feat, s_feat), "float32") * term.weight
            scalar = v if scalar is None else scalar + v
        return per_example, scalar

    def _student_terms(self, labels, s_logits):
        """Per-example hard-label loss; examples labelled `UNLABELED` (-1) contribute 0."""
        fn = self._student_loss_fn
        mask = labeled_mask(labels)
        if mask is not None:
            labels = ops.where(mask, labels, ops.zeros_like(labels))
        raw = fn.call(labels, s_logits) if isinstance(fn, keras.losses.Loss) else fn(labels, s_logits)
        values = _per_example_or_scalar(raw)
        if mask is not None and len(values.shape) == 1:
            values = values * ops.cast(mask, values.dtype)
        return values

    def loss_parts(
        self, x, y=None, sample_weight=None, training=False, student_outputs=None, teacher_outputs=None
    ):
        """Every part of the loss for one batch, as scalars.

        Args:
            x: Inputs.
            y: Labels, targets from `with_teacher_outputs`, or None (unlabeled).
            sample_weight: Optional `[B]` weights; each part is `sum(w_i * l_i) / B`.
            training: Whether the student runs in training mode.
            student_outputs: The student view's outputs if already computed.
            teacher_outputs: Teacher outputs if already known (cached or precomputed).

        Returns:
            Dict with `loss` (total), `student_loss` (absent without labels), `distillation_loss`,
            `feature_loss` (0 without feature terms), and `student_logits`.
        """
        labels, carried = split_targets(y)
        if teacher_outputs is None:
            teacher_outputs = carried
        if teacher_outputs is not None and not self._needed_teacher_keys() <= set(teacher_outputs):
            missing = sorted(self._needed_teacher_keys() - set(teacher_outputs))
            if not self.teachers:
                raise ValueError(
                    f"The batch's teacher outputs lack {missing} and there is no teacher to compute them."
                )
            teacher_outputs = None  # incomplete cache: run the teacher live
        if teacher_outputs is None and self.teachers:
            teacher_outputs = self.teacher_outputs(x)
        if student_outputs is None:
            student_outputs = self._student_view(x, training=training)
        s_logits = student_outputs[LOGITS]
        batch = ops.shape(s_logits)[0]
        weights = None
        if sample_weight is not None:
            weights = ops.reshape(ops.cast(sample_weight, "float32"), (-1,))

        def reduce(per_example, scalar):
            total = ops.zeros((), "float32")
            if per_example is not None:
                if weights is not None:
                    per_example = per_example * weights
                total = total + ops.sum(per_example) / ops.cast(batch, "float32")
            if scalar is not None:
                total = total + scalar
            return total

        parts = {"student_logits": s_logits}
        zero = ops.zeros((), "float32")
        if teacher_outputs is None:  # evaluation of a teacher-less distiller on plain labels
            if labels is None:
                raise ValueError(
                    "Nothing to learn from: the batch has no labels, carries no teacher outputs and the "
                    "distiller has no teacher. Attach cached outputs with "
                    "kd_tf.distill.TeacherCache(...).attach(dataset), or pass teacher=..."
                )
            parts["student_loss"] = reduce(self._student_terms(labels, s_logits), None)
            parts["distillation_loss"] = zero
            parts["feature_loss"] = zero
            parts["loss"] = parts["student_loss"]
            return parts
        teacher_outputs = dict(teacher_outputs)
        teacher_outputs[LOGITS] = ops.cast(teacher_outputs[LOGITS], "float32")
        distill = reduce(*self._distillation_terms(teacher_outputs[LOGITS], s_logits))
        feature = reduce(*self._feature_terms(x, student_outputs, teacher_outputs))
        parts["distillation_loss"] = distill
        parts["feature_loss"] = feature
        if labels is None:
            parts["loss"] = distill + feature
        else:
            student = reduce(self._student_terms(labels, s_logits), None)
            parts["student_loss"] = student
            parts["loss"] = self._alpha * student + (1.0 - self._alpha) * distill + feature
        return parts

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """The total loss (Keras's hook); see `loss_parts` for the parts."""
        return self.loss_parts(x, y, sample_weight, training=training)["loss"]

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        labels, _ = split_targets(y)
        if isinstance(y_pred, dict):
            y_pred = y_pred[self.logits_key]
        if labels is None:  # unlabeled: no student loss or metric to report
            results = self.get_metrics_result()
            results.pop(self.student_loss_tracker.name, None)
            return results
        mask = labeled_mask(labels)
        if mask is not None:  # metrics only on the labelled examples of a mixed batch
            labels = tf.boolean_mask(labels, mask)
            y_pred = tf.boolean_mask(y_pred, mask)
            if sample_weight is not None:
                sample_weight = tf.boolean_mask(ops.reshape(sample_weight, (-1,)), mask)
        return super().compute_metrics(x, labels, y_pred, sample_weight=sample_weight)

    def _update_trackers(self, parts, x):
        batch = ops.shape(parts["student_logits"])[0]
        self._loss_tracker.update_state(parts["loss"], sample_weight=batch)
        if "student_loss" in parts:
            self.student_loss_tracker.update_state(parts["student_loss"], sample_weight=batch)
        self.distillation_loss_tracker.update_state(parts["distillation_loss"], sample_weight=batch)
        if self.feature_loss_tracker is not None:
            self.feature_loss_tracker.update_state(parts["feature_loss"], sample_weight=batch)

    def train_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        labels, carried = split_targets(y)
        teacher_outputs = carried
        if teacher_outputs is None or not self._needed_teacher_keys() <= set(teacher_outputs):
            teacher_outputs = self.teacher_outputs(x) if self.teachers else teacher_outputs
        with tf.GradientTape() as tape:
            student_outputs = self._student_view(x, training=True)
            parts = self.loss_parts(
                x,
                labels,
                sample_weight,
                training=True,
                student_outputs=student_outputs,
                teacher_outputs=teacher_outputs,
            )
            loss = parts["loss"]
            replicas = tf.distribute.get_strategy().num_replicas_in_sync
            scaled = loss / replicas if replicas > 1 else loss
            scaled = self.optimizer.scale_loss(scaled)
        variables = self.trainable_variables
        gradients = tape.gradient(scaled, variables)
        self.optimizer.apply_gradients(zip(gradients, variables))
        self._update_trackers(parts, x)
        return self.compute_metrics(x, labels, parts["student_logits"], sample_weight=sample_weight)

    def test_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        parts = self.loss_parts(x, y, sample_weight, training=False)
        self._update_trackers(parts, x)
        labels, _ = split_targets(y)
        return self.compute_metrics(x, labels, parts["student_logits"], sample_weight=sample_weight)

    def get_config(self):
        """Configuration of the distiller's own options (the models are saved separately)."""
        return {
            "name": self.name,
            "teacher_weights": self.teacher_weights,
            "logits_key": self.logits_key,
        }

    @classmethod
    def from_config(cls, config):
        raise NotImplementedError(
            "A Distiller is rebuilt from its models: save distiller.student (and the teacher) and build a "
            "new Distiller(student, teacher) from them."
        )


def _teacher_key(spec, index):
    return str(spec) if index == 0 else f"{spec}@{index}"


def _stop_gradient(structure):
    return tf.nest.map_structure(tf.stop_gradient, structure)


def _check_alpha(value):
    if not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {value}.")


def _check_temperature(value):
    if not float(value) > 0.0:
        raise ValueError(f"temperature must be positive, got {value}.")


def _is_keras_feature_loss(loss):
    return (
        _KerasDistillationLoss
        and isinstance(loss, _KerasDistillationLoss)
        and hasattr(loss, "teacher_layer_name")
        and not hasattr(loss, "temperature")
    )


class _KerasFeatureTerm:
    """A `keras.distillation.FeatureDistillation` plug-in and its weight (scalar loss)."""

    def __init__(self, loss, weight):
        self.loss = loss
        self.weight = weight


__all__ = ["Distiller", "resolve_jit_compile"]
