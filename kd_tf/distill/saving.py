"""Saving a `Distiller` whole: `distiller.save("d.keras")` and `keras.saving.load_model` round-trip the
teacher(s), the student, every loss term and its weight, the feature projections, alpha, the temperature,
the compile arguments and the optimizer state.

Keras walks the distiller's attributes to save its variables; `get_config` and `from_config` rebuild the
same structure (models, terms, projections in the same order) so that every variable finds its place.
Losses are saved as Keras saves them: a lambda makes Keras warn at `save` and refuse to load it without
`safe_mode=False`; a class of your own needs `keras.saving.register_keras_serializable`.
"""

from keras.saving import deserialize_keras_object, serialize_keras_object


class DistillerSaving:
    """The config half of `kd_tf.Distiller` (a mixin placed before `keras.Model`).

    Example:
    ```python
    distiller.save("distiller.keras")
    same = keras.saving.load_model("distiller.keras")   # teacher, student, losses, alpha, temperature
    ```
    """

    def get_config(self):
        """Everything needed to rebuild the distiller: models, terms, weights, alpha, temperature."""
        teachers = [serialize_keras_object(t) for t in self.teachers]
        return {
            "name": self.name,
            "student": serialize_keras_object(self.student),
            "teacher": teachers[0] if len(teachers) == 1 else (teachers or None),
            "teacher_weights": self.teacher_weights,
            "features": [serialize_keras_object(t.source) for t in self._objective.feature_terms],
            "logits_key": self.logits_key,
            "distillation_losses": [serialize_keras_object(t.source) for t in self._objective.ctor_terms]
            or None,
            "distillation_loss_weights": self._ctor_loss_weights,
            "student_loss_weight": self.alpha,
            "temperature": self.temperature,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        temperature = config.pop("temperature", None)
        for key in ("student", "teacher", "distillation_losses", "features"):
            value = config.get(key)
            if isinstance(value, list):
                config[key] = [deserialize_keras_object(v) for v in value]
            elif value is not None:
                config[key] = deserialize_keras_object(value)
        distiller = cls(**config)
        if temperature is not None:
            distiller.temperature = temperature
        return distiller

    def get_compile_config(self):
        """Keras's compile config plus the distiller's own compile arguments."""
        config = super().get_compile_config()
        compile_term = self._objective.compile_term
        if config:
            config.update(
                student_loss_fn=serialize_keras_object(self._objective.student_loss_fn),
                distillation_loss_fn=(
                    None if compile_term is None else serialize_keras_object(compile_term.source)
                ),
                jit_compile=self._jit_compile_argument,
                auto_scale_loss=self._auto_scale_loss,
            )
            config.pop("loss", None)
        return config

    def compile_from_config(self, config):
        config = dict(deserialize_keras_object(config))
        optimizer = config.pop("optimizer", "adam")
        self.compile(optimizer, **config)
        if self.built:
            self.optimizer.build(self.trainable_variables)


__all__ = ["DistillerSaving"]
