"""Feature distillation (the article's section 3.1): match teacher and student hidden states.

`FeatureMatch` compares one teacher feature with one student feature (MSE or cosine, with a learned
projection when the widths differ and a padding mask for per-token features); `layer_map` pairs the layers
of a deep teacher with those of a shallow student.
"""

import keras
from keras import ops

from kd_tf.distill.distributions import EPSILON, reduce_tokens, to_float32


def feature_path(spec):
    """Splits a feature name into its path components.

    `"encoder/encoder_outputs/3"` -> `("encoder", "encoder_outputs", 3)`.

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
    dict output (`"encoder/encoder_outputs/3"` for a `kd_tf.classify.build_classifier` model). When the
    widths differ, a learned linear projection maps the student feature to the teacher's width; it is
    trained with the student and belongs to the distiller, never to the exported student.

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
        t = to_float32(ops.stop_gradient(teacher_feature))
        s = to_float32(student_feature)
        if self.projector is not None:
            s = self.projector(s)
        if self.loss == "mse":
            values = ops.mean(ops.square(t - s), axis=-1)
        else:
            t_n = t / ops.maximum(ops.norm(t, axis=-1, keepdims=True), EPSILON)
            s_n = s / ops.maximum(ops.norm(s, axis=-1, keepdims=True), EPSILON)
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
            f"Need 0 < student layers <= teacher layers, got {num_student_layers} and {num_teacher_layers}."
        )
    return [
        FeatureMatch(
            f"{feature}/{(i + 1) * num_teacher_layers // num_student_layers - 1}",
            f"{feature}/{i}",
            **kwargs,
        )
        for i in range(num_student_layers)
    ]


__all__ = ["FeatureMatch", "feature_path", "layer_map"]
