"""kd_tf.Distiller on small plain Keras models: API, loss arithmetic, frozen teacher, weights, features."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import ops

import kd_tf.distill.losses as L
from kd_tf.distill import Distiller, FeatureMatch, resolve_jit_compile, with_teacher_outputs
from tests.distill_helpers import (
    NUM_CLASSES,
    assert_weights_close,
    make_data,
    mlp,
    trained_teacher,
    weights_of,
)


@pytest.fixture(scope="module")
def data():
    return make_data(192, seed=0)


@pytest.fixture(scope="module")
def teacher(data):
    return trained_teacher(*data)


def _np(x):
    return np.asarray(ops.convert_to_numpy(x))


def test_keras_io_example_runs_unchanged(data, teacher):
    x, y = data
    student = mlp(8, "student", seed=3)
    # --- the keras.io "Knowledge Distillation" example's code, verbatim apart from the class ---
    distiller = Distiller(student=student, teacher=teacher)
    distiller.compile(
        optimizer=keras.optimizers.Adam(),
        metrics=[keras.metrics.SparseCategoricalAccuracy()],
        student_loss_fn=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        distillation_loss_fn=keras.losses.KLDivergence(),
        alpha=0.1,
        temperature=10,
    )
    # Before training, the loss is the example's formula:
    # alpha * SCCE(y, s) + (1 - alpha) * KLDistillation(softmax(t/T), softmax(s/T)) * T^2.
    t, s = teacher(x), student(x)
    expected = 0.1 * keras.losses.SparseCategoricalCrossentropy(from_logits=True)(y, s) + 0.9 * (
        keras.losses.KLDivergence()(ops.softmax(t / 10, axis=1), ops.softmax(s / 10, axis=1)) * 100
    )
    assert float(distiller.compute_loss(x, y)) == pytest.approx(float(expected), rel=1e-5)
    history = distiller.fit(x, y, epochs=2, verbose=0)
    logs = distiller.evaluate(x, y, verbose=0, return_dict=True)
    assert {"loss", "student_loss", "distillation_loss", "sparse_categorical_accuracy"} <= set(logs)
    # History shows each part, and the parts add up (epoch means of linear parts).
    h = history.history
    for k in ("loss", "student_loss", "distillation_loss", "sparse_categorical_accuracy"):
        assert len(h[k]) == 2
    assert h["loss"][-1] == pytest.approx(
        0.1 * h["student_loss"][-1] + 0.9 * h["distillation_loss"][-1], rel=1e-4
    )
    # Calling the distiller runs the student.
    np.testing.assert_allclose(_np(distiller(x[:4])), _np(student(x[:4])), atol=1e-6)
    assert distiller.predict(x[:4], verbose=0).shape == (4, NUM_CLASSES)
    assert distiller.alpha == pytest.approx(0.1) and distiller.temperature == pytest.approx(10.0)


def test_teacher_frozen_and_gradients_reach_only_the_student(data, teacher):
    x, y = data
    student = mlp(8, "student", seed=3)
    before_teacher, before_student = weights_of(teacher), weights_of(student)
    distiller = Distiller(student, teacher)
    distiller.compile(optimizer=keras.optimizers.Adam(0.01))
    # The trainable variables are exactly the student's.
    assert {id(v) for v in distiller.trainable_variables} == {id(v) for v in student.trainable_variables}
    # Gradients of the loss reach no teacher variable, and every student variable.
    with tf.GradientTape(persistent=True) as tape:
        for v in teacher.weights:
            tape.watch(v.value)
        loss = distiller.compute_loss(x[:32], y[:32])
    assert all(g is None for g in tape.gradient(loss, [v.value for v in teacher.weights]))
    assert all(g is not None for g in tape.gradient(loss, student.trainable_variables))
    distiller.fit(x, y, epochs=2, batch_size=32, verbose=0)
    assert_weights_close(weights_of(teacher), before_teacher, atol=0)
    assert any(not np.allclose(a, b) for a, b in zip(weights_of(student), before_student))
    assert teacher.trainable is False


def test_unlabeled_batches_train_on_distillation_alone(data, teacher):
    x, _ = data
    student = mlp(8, "student", seed=3)
    distiller = Distiller(student, teacher)
    distiller.compile(optimizer=keras.optimizers.Adam(0.02), alpha=0.5, temperature=2.0)
    parts = distiller.loss_parts(x[:32])
    assert "student_loss" not in parts
    assert float(parts["loss"]) == pytest.approx(float(parts["distillation_loss"]), rel=1e-6)
    # KL at T=2 by hand from the two models' logits, times T^2 = 4.
    expected = _np(L.kl_distillation(teacher(x[:32]), student(x[:32]), temperature=2.0)).mean()
    assert float(parts["distillation_loss"]) == pytest.approx(expected, rel=1e-5)

    def agreement():
        return float(np.mean(_np(student(x)).argmax(1) == _np(teacher(x)).argmax(1)))

    start = agreement()
    history = distiller.fit(tf.data.Dataset.from_tensor_slices(x).batch(32), epochs=8, verbose=0)
    assert "student_loss" not in history.history
    assert history.history["loss"] == pytest.approx(history.history["distillation_loss"], rel=1e-6)
    assert history.history["loss"][-1] < history.history["loss"][0]
    assert agreement() > start


def test_sample_weights_are_honoured(data, teacher):
    x, y = data
    xb, yb = x[:8], y[:8]
    student = mlp(8, "student", seed=3)
    distiller = Distiller(student, teacher)
    distiller.compile(optimizer="sgd", alpha=0.3, temperature=2.0)
    w = np.array([1, 0, 2, 0, 1, 0, 3, 0], "float32")
    t, s = teacher(xb), student(xb)
    ce = _np(L.hard_label_cross_entropy(yb, s))
    kl = _np(L.kl_distillation(t, s, temperature=2.0))
    expected = (w * (0.3 * ce + 0.7 * kl)).sum() / 8  # Keras's sum-over-batch-size reduction
    parts = distiller.loss_parts(xb, yb, sample_weight=w)
    assert float(parts["loss"]) == pytest.approx(expected, rel=1e-5)
    assert float(parts["student_loss"]) == pytest.approx((w * ce).sum() / 8, rel=1e-5)
    unweighted = float(distiller.loss_parts(xb, yb)["loss"])
    assert unweighted == pytest.approx((0.3 * ce + 0.7 * kl).mean(), rel=1e-5)
    assert abs(unweighted - expected) > 1e-3
    # Through fit: zero weights on every example means no update at all.
    before = weights_of(student)
    distiller.fit(x, y, sample_weight=np.zeros(len(x), "float32"), epochs=1, verbose=0, batch_size=32)
    assert_weights_close(weights_of(student), before, atol=0)


def test_loss_choices_and_keras_distillation_plugins(data, teacher):
    x, y = data
    xb, yb = x[:16], y[:16]
    student = mlp(8, "student", seed=3)
    t, s = teacher(xb), student(xb)
    for name, fn in (
        ("soft_cross_entropy", L.cross_entropy_distillation),
        ("mse", L.mse_distillation),
        ("kl", L.kl_distillation),
    ):
        d = Distiller(student, teacher)
        d.compile(distillation_loss_fn=name, alpha=0.0, temperature=3.0)
        assert float(d.compute_loss(xb, yb)) == pytest.approx(_np(fn(t, s, temperature=3.0)).mean(), rel=1e-5)
    # keras.distillation.LogitsDistillation plugs in and computes exactly what it computes alone. With a
    # KLDistillation instance that is KL on softened probabilities times T^2, our KL. (With its default
    # loss="kl_divergence", Keras 3.15 resolves a function, misses its own isinstance check and applies
    # KL to the scaled logits themselves; we report its number unchanged.)
    for plugin in (
        keras.distillation.LogitsDistillation(temperature=3.0, loss=keras.losses.KLDivergence()),
        keras.distillation.LogitsDistillation(temperature=3.0),
    ):
        d = Distiller(student, teacher)
        d.compile(distillation_loss_fn=plugin, alpha=0.0)
        assert float(d.compute_loss(xb, yb)) == pytest.approx(float(plugin.compute_loss(t, s)), rel=1e-5)
    assert float(
        keras.distillation.LogitsDistillation(temperature=3.0, loss=keras.losses.KLDivergence()).compute_loss(
            t, s
        )
    ) == pytest.approx(_np(L.kl_distillation(t, s, temperature=3.0)).mean(), rel=1e-4)
    # keras.distillation's constructor arguments work too, FeatureDistillation on named layers included.
    d = Distiller(
        teacher=teacher,
        student=mlp(64, "wide_student", seed=4),
        distillation_losses=[
            keras.distillation.LogitsDistillation(temperature=3.0),
            keras.distillation.FeatureDistillation(teacher_layer_name="hidden", student_layer_name="hidden"),
        ],
        distillation_loss_weights=[1.0, 0.5],
        student_loss_weight=0.5,
    )
    d.compile(optimizer="adam")
    parts = d.loss_parts(xb, yb)
    assert d.alpha == pytest.approx(0.5)
    assert float(parts["feature_loss"]) > 0
    history = d.fit(x, y, epochs=1, verbose=0)
    assert "feature_loss" in history.history
    # Temperatures set in two places must agree.
    with pytest.raises(ValueError, match="set it in one place"):
        Distiller(student, teacher).compile(
            distillation_loss_fn=L.KLDistillation(temperature=2.0), temperature=5.0
        )
    with pytest.raises(ValueError, match="alpha must be in"):
        Distiller(student, teacher).compile(alpha=1.5)


def test_label_space_must_match(data, teacher):
    inputs = keras.Input((8,))
    other = keras.Model(inputs, keras.layers.Dense(5)(inputs))
    with pytest.raises(ValueError, match="same label space"):
        Distiller(other, teacher)
    with pytest.raises(ValueError, match="keras.Model"):
        Distiller(lambda x: x, teacher)


def test_several_teachers_average_softened_distributions(data, teacher):
    x, y = data
    second = trained_teacher(x, y, seed=7, epochs=5, hidden=16)
    student = mlp(8, "student", seed=3)
    d = Distiller(student, [teacher, second], teacher_weights=[3.0, 1.0])
    d.compile(optimizer="adam", alpha=0.0, temperature=2.0)
    xb = x[:16]
    expected = _np(
        L.kl_distillation([teacher(xb), second(xb)], student(xb), 2.0, teacher_weights=[3, 1])
    ).mean()
    assert float(d.compute_loss(xb)) == pytest.approx(expected, rel=1e-5)
    # Mixing [0.75 * p1 + 0.25 * p2] differs from either teacher alone.
    alone = _np(L.kl_distillation(teacher(xb), student(xb), 2.0)).mean()
    assert abs(expected - alone) > 1e-4
    assert np.isfinite(d.fit(x, y, epochs=1, verbose=0).history["loss"]).all()
    assert d.teacher is teacher and len(d.teachers) == 2


def test_feature_distillation_with_projection_and_padding_mask():
    rng = np.random.default_rng(0)
    tokens, width_t, width_s = 5, 12, 4

    def seq_model(width, name, seed):
        keras.utils.set_random_seed(seed)
        ids = keras.Input((tokens, 3), name="features")
        mask = keras.Input((tokens,), name="input_mask")
        h = keras.layers.Dense(width, activation="tanh", name="token_hidden")(ids)
        logits = keras.layers.Dense(NUM_CLASSES, name="logits")(keras.layers.GlobalAveragePooling1D()(h))
        return keras.Model({"features": ids, "input_mask": mask}, {"logits": logits, "hidden": h}, name=name)

    teacher = seq_model(width_t, "seq_teacher", 1)
    student = seq_model(width_s, "seq_student", 2)
    match = FeatureMatch("hidden", "hidden", loss="mse", weight=2.0, mask="input_mask")
    d = Distiller(student, teacher, features=[match])
    d.compile(optimizer=keras.optimizers.Adam(0.01), alpha=0.0, temperature=1.0)
    # The projection (4 -> 12) is trained with the student but is not part of the student.
    assert match.projector is not None
    assert {id(v) for v in match.trainable_weights} <= {id(v) for v in d.trainable_variables}
    assert not {id(v) for v in match.trainable_weights} & {id(v) for v in student.weights}
    x = {
        "features": rng.normal(size=(16, tokens, 3)).astype("float32"),
        "input_mask": np.array([[1, 1, 1, 0, 0]] * 16, "float32"),
    }
    parts = d.loss_parts(x)
    # By hand: masked mean over real tokens of mean_h (t - W s - b)^2, times weight 2.
    t_h = _np(teacher(x)["hidden"])
    s_h = _np(match.projector(student(x)["hidden"]))
    per_token = ((t_h - s_h) ** 2).mean(-1)
    expected = 2.0 * (per_token[:, :3].mean(-1)).mean()
    assert float(parts["feature_loss"]) == pytest.approx(expected, rel=1e-5)
    # Padding does not count: changing padded inputs changes neither the loss at real tokens...
    x2 = {"features": x["features"].copy(), "input_mask": x["input_mask"]}
    x2["features"][:, 3:] = 100.0
    assert float(d.loss_parts(x2)["feature_loss"]) == pytest.approx(float(parts["feature_loss"]), rel=1e-5)
    y = np.zeros(16, "int32")
    history = d.fit(x, y, epochs=15, batch_size=16, verbose=0)
    assert history.history["feature_loss"][-1] < history.history["feature_loss"][0]
    # Layer names of functional models work as features too (no dict output needed).
    d2 = Distiller(mlp(4, "s2", 5), mlp(16, "t2", 6), features=[FeatureMatch("hidden", loss="cosine")])
    d2.compile()
    assert float(d2.loss_parts(np.ones((2, 8), "float32"))["feature_loss"]) >= 0.0
    with pytest.raises(ValueError, match="no output key or layer named"):
        Distiller(mlp(4, "s3", 5), mlp(16, "t3", 6), features=[FeatureMatch("nope")])


def test_with_teacher_outputs_targets(data, teacher):
    x, y = data
    student = mlp(8, "student", seed=3)
    d = Distiller(student, teacher)
    d.compile(alpha=0.2, temperature=2.0)
    t = _np(teacher(x[:8]))
    live = d.loss_parts(x[:8], y[:8])
    carried = d.loss_parts(x[:8], with_teacher_outputs(y[:8], {"logits": t}))
    assert float(carried["loss"]) == pytest.approx(float(live["loss"]), rel=1e-6)
    # Teacher-free distiller: trains from carried outputs, evaluates the student on plain labels.
    free = Distiller(student)
    free.compile(alpha=0.2, temperature=2.0)
    assert float(free.loss_parts(x[:8], with_teacher_outputs(y[:8], {"logits": t}))["loss"]) == pytest.approx(
        float(live["loss"]), rel=1e-6
    )
    assert float(free.loss_parts(x[:8], y[:8])["loss"]) == pytest.approx(
        float(live["student_loss"]), rel=1e-6
    )
    with pytest.raises(ValueError, match="TeacherCache"):
        free.loss_parts(x[:8])


def test_jit_compile_resolution(data, teacher):
    assert resolve_jit_compile("auto", devices=["CPU"]) is False
    assert resolve_jit_compile("auto", devices=["CPU", "GPU"]) is True
    assert resolve_jit_compile("auto", devices=["TPU"]) is True
    assert resolve_jit_compile(True) is True and resolve_jit_compile(False) is False
    with pytest.raises(ValueError, match="jit_compile"):
        resolve_jit_compile("yes")
    d = Distiller(mlp(8, "student", seed=3), teacher)
    d.compile(jit_compile="auto")
    assert d.jit_compile is (len(tf.config.list_logical_devices("GPU")) > 0)


def test_jit_compiled_step_matches_uncompiled(data, teacher):
    """XLA on a tiny Dense pair compiles in seconds even on CPU; same weights as without XLA."""
    x, y = data
    results = []
    for jit in (False, True):
        student = mlp(8, "student", seed=3)
        d = Distiller(student, teacher)
        d.compile(optimizer=keras.optimizers.SGD(0.1), alpha=0.3, temperature=2.0, jit_compile=jit)
        assert d.jit_compile is jit
        d.fit(x, y, epochs=1, batch_size=64, shuffle=False, verbose=0)
        results.append(weights_of(student))
    assert_weights_close(results[0], results[1], atol=1e-5)


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision(data, teacher, policy):
    x, y = data
    try:
        keras.mixed_precision.set_dtype_policy(policy)
        student = mlp(8, "student", seed=3)
    finally:
        keras.mixed_precision.set_dtype_policy("float32")
    assert student.compute_dtype == policy.split("_")[1]
    d = Distiller(student, teacher)  # the float32 teacher stays float32
    d.compile(optimizer="adam", metrics=["accuracy"], alpha=0.3, temperature=2.0)
    assert isinstance(d.optimizer, keras.optimizers.LossScaleOptimizer) is (policy == "mixed_float16")
    parts = d.loss_parts(x[:32], y[:32])
    assert parts["loss"].dtype == "float32" and parts["student_logits"].dtype == policy.split("_")[1]
    # Same loss as float32 arithmetic on the same (half-precision) student logits.
    s = ops.cast(parts["student_logits"], "float32")
    expected = (
        0.3 * _np(L.hard_label_cross_entropy(y[:32], s))
        + 0.7 * _np(L.kl_distillation(teacher(x[:32]), s, 2.0))
    ).mean()
    assert float(parts["loss"]) == pytest.approx(expected, rel=1e-5)
    history = d.fit(x, y, epochs=3, batch_size=32, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    assert history.history["loss"][-1] < history.history["loss"][0]
    assert all(w.dtype == "float32" for w in student.trainable_weights)


def test_student_saves_and_loads_without_teacher(tmp_path, data, teacher):
    x, y = data
    student = mlp(8, "student", seed=3)
    d = Distiller(student, teacher)
    d.compile(optimizer="adam")
    d.fit(x, y, epochs=1, verbose=0)
    expected = _np(student(x[:5]))
    path = tmp_path / "student.keras"
    d.student.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(_np(loaded(x[:5])), expected, atol=1e-6)
    assert loaded.count_params() == student.count_params() < teacher.count_params()
    d.student.export(str(tmp_path / "saved_model"), verbose=False)
    reloaded = tf.saved_model.load(str(tmp_path / "saved_model"))
    np.testing.assert_allclose(reloaded.serve(x[:5]).numpy(), expected, atol=1e-6)


def test_examples_labelled_minus_one_learn_from_the_teacher_only(data, teacher):
    """A transfer set mixed into labelled batches: label -1 means "no label"."""
    x, y = data
    x, y = x[:16], np.asarray(y[:16]).astype("int32")
    mixed = y.copy()
    mixed[8:] = -1
    student = mlp(8, "student_mixed", seed=4)
    distiller = Distiller(student=student, teacher=teacher)
    distiller.compile(
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")], alpha=0.3, temperature=2.0
    )
    parts = distiller.loss_parts(x, mixed)
    s = student(x)
    hard = L.hard_label_cross_entropy(y[:8], s[:8])
    # Sum over the labelled half, divided by the whole batch.
    assert float(parts["student_loss"]) == pytest.approx(float(ops.sum(hard)) / 16, rel=1e-5)
    assert float(parts["distillation_loss"]) == pytest.approx(
        float(distiller.loss_parts(x, y)["distillation_loss"]), rel=1e-6
    )
    logs = distiller.evaluate(x, mixed, batch_size=16, verbose=0, return_dict=True)
    accuracy = float(np.mean(np.argmax(_np(s[:8]), axis=1) == y[:8]))
    assert logs["accuracy"] == pytest.approx(accuracy)
