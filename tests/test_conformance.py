"""Conformance with keras.distillation: the same arguments give the same loss and the same student update.

Every configuration below is given to `keras.distillation.Distiller` and to `kd_tf.Distiller` with the
same teacher and the same initial student; the loss before training and the student's weights after a few
SGD steps must agree to 1e-6. Where kd-tf deliberately differs (Keras 3.15's `LogitsDistillation()` with
its default `loss="kl_divergence"` applies KL to scaled logits), the difference is pinned below.
"""

import keras
import numpy as np
import pytest
from keras.distillation import FeatureDistillation, LogitsDistillation

import kd_tf.distill.losses as L
from kd_tf.distill import Distiller
from tests.distill_helpers import assert_weights_close, clone_with_weights, mlp, weights_of

ATOL = 1e-6
STEPS = 3  # SGD steps of 32 examples


def _kl(temperature):
    return LogitsDistillation(temperature=temperature, loss=keras.losses.KLDivergence())


# (id, distillation_losses factory, distillation_loss_weights, student_loss_weight or "default", widths)
CONFIGS = [
    ("logits-T1", lambda: _kl(1.0), None, "default", (32, 8)),
    ("logits-T2-weight0.3", lambda: _kl(2.0), None, 0.3, (32, 8)),
    ("logits-T5-list", lambda: [_kl(5.0)], [2.0], 0.5, (32, 8)),
    (
        "logits-cce-on-scaled-logits",
        lambda: LogitsDistillation(3.0, keras.losses.CategoricalCrossentropy(from_logits=True)),
        None,
        0.2,
        (32, 8),
    ),
    (
        "features-weights",
        lambda: [_kl(3.0), FeatureDistillation(teacher_layer_name="hidden", student_layer_name="hidden")],
        [1.0, 0.5],
        "default",
        (16, 16),
    ),
    (
        "features-only-cosine",
        lambda: FeatureDistillation(
            loss="cosine_similarity", teacher_layer_name="hidden", student_layer_name="hidden"
        ),
        None,
        0.7,
        (16, 16),
    ),
    ("final-output-mse", lambda: FeatureDistillation(loss="mse"), None, 0.4, (32, 8)),
    ("labels-only", lambda: _kl(2.0), None, 1.0, (32, 8)),
    (
        "distillation-only",
        lambda: [_kl(4.0), FeatureDistillation(teacher_layer_name="hidden", student_layer_name="hidden")],
        [0.5, 2.0],
        0.0,
        (16, 16),
    ),
]


@pytest.fixture(scope="module")
def models(mlp_data):
    """Two teachers (widths 32 and 16) and two initial students (widths 8 and 16), never trained here."""
    x, y = mlp_data
    teachers = {w: mlp(w, f"teacher{w}", seed=1) for w in (32, 16)}
    for t in teachers.values():
        t.compile(keras.optimizers.Adam(0.01), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        t.fit(x, y, epochs=5, batch_size=32, verbose=0)
    students = {w: mlp(w, f"student{w}", seed=3) for w in (8, 16)}
    return teachers, students


def _pair(models, widths):
    teachers, students = models
    t = teachers[widths[0]]
    return clone_with_weights(t), clone_with_weights(t), clone_with_weights(students[widths[1]])


def _train(distiller, x, y):
    distiller.fit(x, y, batch_size=32, epochs=1, shuffle=False, verbose=0)


@pytest.mark.parametrize("name,losses,weights,slw,widths", CONFIGS, ids=[c[0] for c in CONFIGS])
def test_same_loss_and_update_as_keras_distillation(models, mlp_data, name, losses, weights, slw, widths):
    x, y = mlp_data
    x, y = x[: 32 * STEPS], y[: 32 * STEPS]
    teacher_k, teacher_d, student0 = _pair(models, widths)
    student_k, student_d = clone_with_weights(student0), clone_with_weights(student0)
    extra = {} if slw == "default" else {"student_loss_weight": slw}
    if weights is not None:
        extra["distillation_loss_weights"] = weights
    reference = keras.distillation.Distiller(
        teacher=teacher_k, student=student_k, distillation_losses=losses(), **extra
    )
    ours = Distiller(teacher_d, student_d, losses(), **extra)  # keras.distillation's positional order
    scce = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    reference.compile(optimizer=keras.optimizers.SGD(0.1), loss=scce, run_eagerly=True)
    ours.compile(optimizer=keras.optimizers.SGD(0.1), loss=scce, run_eagerly=True)
    assert ours.student is student_d and ours.teacher is teacher_d
    assert ours.alpha == pytest.approx(reference.student_loss_weight)
    expected = float(reference.compute_loss(x[:32], y[:32]))
    assert float(ours.compute_loss(x[:32], y[:32])) == pytest.approx(expected, abs=ATOL, rel=ATOL)
    _train(reference, x, y)
    _train(ours, x, y)
    assert any(not np.allclose(a, b) for a, b in zip(weights_of(student_d), weights_of(student0)))
    assert_weights_close(weights_of(student_d), weights_of(student_k), atol=ATOL)
    assert_weights_close(weights_of(teacher_d), weights_of(teacher_k), atol=0)  # teachers untouched


def test_keyword_and_default_student_loss_match_keras(models, mlp_data):
    """keras.io keywords in any order, and kd-tf's default hard-label loss (= SCCE on logits)."""
    x, y = mlp_data
    teacher, _, student0 = _pair(models, (32, 8))
    reference = keras.distillation.Distiller(teacher, clone_with_weights(student0), _kl(2.0))
    reference.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    ours = Distiller(student=clone_with_weights(student0), distillation_losses=_kl(2.0), teacher=teacher)
    ours.compile(optimizer="sgd")
    assert ours.alpha == 0.5  # keras.distillation's default student_loss_weight
    assert float(ours.compute_loss(x, y)) == pytest.approx(float(reference.compute_loss(x, y)), abs=ATOL)


def test_deliberate_difference_default_logits_distillation(models, mlp_data):
    """Keras 3.15: `LogitsDistillation()`'s default loss="kl_divergence" resolves to a function that misses
    its own `isinstance(loss_fn, KLDivergence)` test and is applied to the scaled logits. kd-tf computes the
    KL divergence of the softened distributions times T^2, as `loss=keras.losses.KLDivergence()` does."""
    x, y = mlp_data
    teacher, _, student = _pair(models, (32, 8))
    t, s = teacher(x), student(x)
    keras_value = float(LogitsDistillation(temperature=3.0).compute_loss(t, s))
    ours = Distiller(teacher, student, LogitsDistillation(temperature=3.0), student_loss_weight=0.0)
    ours.compile()
    value = float(ours.compute_loss(x, y))
    assert value == pytest.approx(float(_kl(3.0).compute_loss(t, s)), rel=1e-5)
    assert value == pytest.approx(float(np.mean(L.kl_distillation(t, s, temperature=3.0))), rel=1e-4)
    assert abs(value - keras_value) > 1e-3
