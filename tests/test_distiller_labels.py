"""Unlabelled examples and label shapes: one rule for -1 labels and label-less batches, `[B]` and `[B, 1]`."""

import keras
import numpy as np
import pytest
from keras import ops

import kd_tf.distill.losses as L
from kd_tf.distill import UNLABELED, Distiller
from tests.distill_helpers import mlp


def _np(x):
    return np.asarray(ops.convert_to_numpy(x))


@pytest.fixture()
def mixed(mlp_data):
    """16 examples, the last 8 labelled -1 (unlabelled)."""
    x, y = mlp_data
    x, y = x[:16], np.asarray(y[:16]).astype("int32")
    labels = y.copy()
    labels[8:] = UNLABELED
    return x, y, labels


@pytest.mark.parametrize("shape", ["[B]", "[B, 1]"])
def test_minus_one_marks_unlabelled_examples(mixed, mlp_teacher, shape):
    """The hard-label loss is averaged over the labelled examples (Keras's `ignore_class` rule), the
    distillation loss over all, the label metrics see the labelled examples only, in either label shape."""
    x, y, labels = mixed
    labels = labels if shape == "[B]" else labels[:, None]
    student = mlp(8, "student_mixed", seed=4)
    distiller = Distiller(student=student, teacher=mlp_teacher)
    distiller.compile(
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")], alpha=0.3, temperature=2.0
    )
    parts = distiller.loss_parts(x, labels)
    s = student(x)
    hard = _np(L.hard_label_cross_entropy(y[:8], s[:8]))
    kl = _np(L.kl_distillation(mlp_teacher(x), s, temperature=2.0))
    assert float(parts["student_loss"]) == pytest.approx(hard.mean(), rel=1e-5)
    assert float(parts["distillation_loss"]) == pytest.approx(kl.mean(), rel=1e-5)
    assert float(parts["loss"]) == pytest.approx(0.3 * hard.mean() + 0.7 * kl.mean(), rel=1e-5)
    logs = distiller.evaluate(x, labels, batch_size=16, verbose=0, return_dict=True)
    accuracy = float(np.mean(np.argmax(_np(s[:8]), axis=1) == y[:8]))
    assert logs["accuracy"] == pytest.approx(accuracy)
    assert logs["student_loss"] == pytest.approx(hard.mean(), rel=1e-5)


def test_label_shapes_after_a_retrace_and_keras_student_losses(mixed, mlp_teacher):
    """`[B]` then `[B, 1]` labels in one session (Keras relaxes the traced shape to an unknown rank), and a
    Keras `SparseCategoricalCrossentropy` student loss, which fails on -1 if the mask does not hold."""
    x, y, labels = mixed
    student = mlp(8, "student_shapes", seed=4)
    d = Distiller(student=student, teacher=mlp_teacher)
    d.compile(
        student_loss_fn=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
        alpha=0.5,
    )
    flat = d.evaluate(x, labels, batch_size=8, verbose=0, return_dict=True)
    column = d.evaluate(x, labels[:, None], batch_size=8, verbose=0, return_dict=True)
    odd = d.evaluate(x[:12], labels[:12, None], batch_size=5, verbose=0, return_dict=True)  # new batch sizes
    assert column == pytest.approx(flat, rel=1e-6)
    assert all(np.isfinite(v) for v in odd.values())
    history = d.fit(x, labels[:, None], batch_size=8, epochs=2, verbose=0).history
    assert np.isfinite(history["loss"]).all() and np.isfinite(history["student_loss"]).all()
    with pytest.raises(ValueError, match="do not fit the student's logits"):
        d.loss_parts(x, np.zeros((16, 2), "int32"))
    # Float class ids of two shapes leave a rank the distiller cannot read: a clear error, not a crash.
    floats = Distiller(student=student, teacher=mlp_teacher)
    floats.compile()
    floats.evaluate(x, y.astype("float32"), batch_size=8, verbose=0)
    with pytest.raises(ValueError, match="unknown rank"):
        floats.evaluate(x, y[:, None].astype("float32"), batch_size=8, verbose=0)


def test_a_batch_of_unlabelled_examples_is_an_unlabelled_batch(mixed, mlp_teacher):
    """One rule: a batch whose examples are all -1 gives the loss and gradients of the same batch without
    labels, `(1 - alpha) * distillation` (and never NaN from 0 / 0)."""
    x, _, _ = mixed
    student = mlp(8, "student_rule", seed=4)
    d = Distiller(student=student, teacher=mlp_teacher)
    d.compile(alpha=0.4, temperature=3.0)
    none = d.loss_parts(x)
    all_unlabelled = d.loss_parts(x, np.full(16, UNLABELED, "int32"))
    assert float(all_unlabelled["student_loss"]) == 0.0
    assert float(all_unlabelled["loss"]) == pytest.approx(float(none["loss"]), rel=1e-6)
    assert float(none["loss"]) == pytest.approx(0.6 * float(none["distillation_loss"]), rel=1e-6)
