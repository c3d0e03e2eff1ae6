"""`distiller.save("d.keras")` and `keras.saving.load_model` round-trip the whole distiller."""

import keras
import numpy as np
import pytest
from keras.distillation import FeatureDistillation, LogitsDistillation

from kd_tf.distill import Distiller, FeatureMatch, KLDistillation, with_teacher_outputs
from tests.distill_helpers import assert_weights_close, clone_with_weights, mlp, weights_of


def _kd_tf_style(teacher):
    d = Distiller(
        student=mlp(8, "student", seed=3),
        teacher=[teacher, mlp(16, "second", seed=5)],
        teacher_weights=[3.0, 1.0],
        features=[FeatureMatch("hidden", weight=0.5, mask=None)],
    )
    d.compile(
        optimizer=keras.optimizers.Adam(0.01),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
        student_loss_fn=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        distillation_loss_fn="soft_cross_entropy",
        alpha=0.3,
        temperature=2.5,
    )
    return d


def _keras_style(teacher):
    d = Distiller(
        teacher,
        mlp(64, "student", seed=3),
        [
            LogitsDistillation(temperature=4.0, loss=keras.losses.KLDivergence()),
            FeatureDistillation(teacher_layer_name="hidden", student_layer_name="hidden"),
        ],
        [1.0, 0.25],
        0.2,
    )
    d.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9), loss="sparse_categorical_crossentropy")
    return d


@pytest.mark.parametrize("build", [_kd_tf_style, _keras_style], ids=["kd-tf", "keras.distillation"])
def test_save_and_load_round_trip(tmp_path, mlp_data, mlp_teacher, build):
    x, y = mlp_data
    original = build(clone_with_weights(mlp_teacher))
    original.fit(x, y, epochs=1, batch_size=64, verbose=0)
    original.temperature = original.temperature + 0.5  # as a schedule would leave it
    path = tmp_path / "distiller.keras"
    original.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, Distiller)
    assert (loaded.alpha, loaded.temperature) == (original.alpha, original.temperature)
    assert loaded.teacher_weights == original.teacher_weights
    assert [t.name for t in loaded.teachers] == [t.name for t in original.teachers]
    assert all(t.trainable is False for t in loaded.teachers)
    for a, b in zip(original.teachers, loaded.teachers):
        assert_weights_close(weights_of(b), weights_of(a), atol=0)
    assert_weights_close(weights_of(loaded.student), weights_of(original.student), atol=0)
    assert [v.path for v in loaded.trainable_variables] == [v.path for v in original.trainable_variables]
    for key in ("loss", "student_loss", "distillation_loss", "feature_loss"):
        assert float(loaded.loss_parts(x, y)[key]) == pytest.approx(
            float(original.loss_parts(x, y)[key]), rel=1e-6
        )
    # The optimizer state came back too: one more epoch each gives the same student.
    original.fit(x, y, epochs=1, batch_size=64, shuffle=False, verbose=0)
    loaded.fit(x, y, epochs=1, batch_size=64, shuffle=False, verbose=0)
    assert_weights_close(weights_of(loaded.student), weights_of(original.student), atol=1e-6)


def test_teacher_less_distiller_round_trip(tmp_path, mlp_data, mlp_teacher):
    x, y = mlp_data
    targets = with_teacher_outputs(y, {"logits": np.asarray(mlp_teacher(x))})
    d = Distiller(
        mlp(8, "student", seed=3), distillation_losses=KLDistillation(temperature=2.0), teacher=None
    )
    d.compile(optimizer="sgd", alpha=0.4)
    before = float(d.loss_parts(x, targets)["loss"])
    d.save(tmp_path / "free.keras")
    loaded = keras.saving.load_model(tmp_path / "free.keras")
    assert loaded.teachers == [] and loaded.temperature == 2.0 and loaded.alpha == pytest.approx(0.4)
    assert float(loaded.loss_parts(x, targets)["loss"]) == pytest.approx(before, rel=1e-6)
