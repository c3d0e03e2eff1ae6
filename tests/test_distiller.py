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
    NUM_FEATURES,
    assert_weights_close,
    clone_with_weights,
    mlp,
    trained_teacher,
    weights_of,
)


def _np(x):
    return np.asarray(ops.convert_to_numpy(x))


def test_keras_io_example_runs_unchanged(mlp_data, mlp_teacher):
    x, y = mlp_data
    teacher = mlp_teacher
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
    # alpha * SCCE(y, s) + (1 - alpha) * KLDivergence(softmax(t/T), softmax(s/T)) * T^2.
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


def test_teacher_frozen_and_gradients_reach_only_the_student(mlp_data, mlp_teacher):
    x, y = mlp_data
    teacher = mlp_teacher
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


def test_teacher_with_dropout_and_batch_norm_runs_in_inference_mode_through_fit(mlp_data):
    """A teacher whose training mode differs (dropout 0.5, batch norm) runs with training=False in `fit`
    and stays unchanged, batch-norm statistics included."""
    x, y = mlp_data
    keras.utils.set_random_seed(0)
    inputs = keras.Input((NUM_FEATURES,))
    h = keras.layers.Dense(32, activation="relu")(inputs)
    h = keras.layers.BatchNormalization()(h)
    h = keras.layers.Dropout(0.5)(h)
    teacher = keras.Model(inputs, keras.layers.Dense(NUM_CLASSES)(h), name="bn_dropout_teacher")
    teacher.compile(keras.optimizers.Adam(0.01), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    teacher.fit(x, y, epochs=3, verbose=0)
    before = weights_of(teacher)
    student = mlp(8, "student", seed=3)
    d = Distiller(student=student, teacher=teacher)
    d.compile(optimizer=keras.optimizers.SGD(0.0), alpha=0.0, temperature=2.0)  # lr 0: the student stays
    history = d.fit(x, y, epochs=1, batch_size=64, shuffle=False, verbose=0).history
    inference = _np(L.kl_distillation(teacher(x, training=False), student(x), temperature=2.0)).mean()
    training = _np(L.kl_distillation(teacher(x, training=True), student(x), temperature=2.0)).mean()
    assert abs(training - inference) > 1e-3  # the two modes differ, so the check below means something
    assert history["distillation_loss"][0] == pytest.approx(inference, rel=1e-5)
    assert_weights_close(weights_of(teacher), before, atol=0)


def test_keras_distillation_positional_order_trains_the_student(mlp_data, mlp_teacher):
    """`Distiller(teacher, student, distillation_losses=...)` (keras.distillation's order) must train the
    student; kd-tf's own `Distiller(student, teacher)` keeps its order; ambiguous calls are refused."""
    x, y = mlp_data
    plugin = keras.distillation.LogitsDistillation(temperature=2.0)
    for build in (
        lambda t, s: Distiller(t, s, distillation_losses=plugin),
        lambda t, s: Distiller(t, s, plugin),
        lambda t, s: Distiller(t, s, plugin, None, 0.3),
        lambda t, s: Distiller(t, student=s, distillation_losses=plugin),
        lambda t, s: Distiller(s, t),
        lambda t, s: Distiller(s, teacher=t),
        lambda t, s: Distiller(teacher=t, student=s, student_loss_weight=0.2),
    ):
        teacher, student = clone_with_weights(mlp_teacher), mlp(8, "student", seed=3)
        t_before, s_before = weights_of(teacher), weights_of(student)
        d = build(teacher, student)
        assert d.student is student and d.teacher is teacher
        d.compile(optimizer=keras.optimizers.SGD(0.1))
        d.fit(x, y, epochs=1, batch_size=64, verbose=0)
        assert_weights_close(weights_of(teacher), t_before, atol=0)
        assert any(not np.allclose(a, b) for a, b in zip(weights_of(student), s_before))
    student = mlp(8, "student", seed=3)
    with pytest.raises(ValueError, match="Ambiguous call"):
        Distiller(student, distillation_losses=plugin)
    with pytest.raises(ValueError, match="twice"):
        Distiller(student, mlp_teacher, student=student)
    with pytest.raises(ValueError, match="same model"):
        Distiller(student=student, teacher=student)
    with pytest.warns(UserWarning, match="larger than the teacher"):
        Distiller(mlp(128, "big", seed=1), mlp(4, "small", seed=2))  # swapped-looking positional call


def test_unlabelled_batches_follow_the_one_rule(mlp_data, mlp_teacher):
    """A batch without labels: `(1 - alpha) * distillation` (the hard part is 0), as for -1 labels and as
    in keras.distillation; the student learns to agree with the teacher."""
    x, _ = mlp_data
    teacher = mlp_teacher
    student = mlp(8, "student", seed=3)
    distiller = Distiller(student, teacher)
    distiller.compile(optimizer=keras.optimizers.Adam(0.02), alpha=0.25, temperature=2.0)
    parts = distiller.loss_parts(x[:32])
    assert "student_loss" not in parts
    # KL at T=2 by hand from the two models' logits, times T^2 = 4.
    expected = _np(L.kl_distillation(teacher(x[:32]), student(x[:32]), temperature=2.0)).mean()
    assert float(parts["distillation_loss"]) == pytest.approx(expected, rel=1e-5)
    assert float(parts["loss"]) == pytest.approx(0.75 * expected, rel=1e-5)
    all_minus_one = distiller.loss_parts(x[:32], -np.ones(32, "int32"))
    assert float(all_minus_one["loss"]) == pytest.approx(float(parts["loss"]), rel=1e-6)
    assert float(all_minus_one["student_loss"]) == 0.0

    def agreement():
        return float(np.mean(_np(student(x)).argmax(1) == _np(teacher(x)).argmax(1)))

    start = agreement()
    history = distiller.fit(tf.data.Dataset.from_tensor_slices(x).batch(32), epochs=8, verbose=0)
    assert "student_loss" not in history.history
    assert history.history["loss"] == pytest.approx(0.75 * np.array(history.history["distillation_loss"]))
    assert history.history["loss"][-1] < history.history["loss"][0]
    assert agreement() > start


def test_sample_weights_are_honoured(mlp_data, mlp_teacher):
    x, y = mlp_data
    teacher = mlp_teacher
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
    # keras.distillation plug-ins honour them too: one value per example, weighted the same way.
    plugin = Distiller(
        teacher, student, keras.distillation.LogitsDistillation(2.0, keras.losses.KLDivergence()), None, 0.3
    )
    plugin.compile()
    assert float(plugin.loss_parts(xb, yb, sample_weight=w)["loss"]) == pytest.approx(expected, rel=1e-4)

    class PerBatch(keras.distillation.DistillationLoss):
        def compute_loss(self, teacher_outputs, student_outputs, **kwargs):
            return ops.mean(ops.square(teacher_outputs - student_outputs))

    custom = Distiller(student=student, teacher=teacher, distillation_losses=PerBatch())
    custom.compile()
    assert np.isfinite(float(custom.loss_parts(xb, yb)["loss"]))
    with pytest.raises(ValueError, match="cannot honour sample weights"):
        custom.loss_parts(xb, yb, sample_weight=w)
    # Through fit: zero weights on every example means no update at all.
    before = weights_of(student)
    distiller.fit(x, y, sample_weight=np.zeros(len(x), "float32"), epochs=1, verbose=0, batch_size=32)
    assert_weights_close(weights_of(student), before, atol=0)


def test_loss_names_and_argument_checks(mlp_data, mlp_teacher):
    x, y = mlp_data
    teacher = mlp_teacher
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
    # Temperatures set in two places must agree.
    with pytest.raises(ValueError, match="set it"):
        Distiller(student, teacher).compile(
            distillation_loss_fn=L.KLDistillation(temperature=2.0), temperature=5.0
        )
    with pytest.raises(ValueError, match="alpha"):
        Distiller(student, teacher).compile(alpha=1.5)
    with pytest.raises(ValueError, match="distillation_loss_weights"):
        Distiller(teacher, student, [L.KLDistillation()], [1.0, 2.0])


def test_one_temperature_for_keras_plugins(mlp_data, mlp_teacher):
    """A `LogitsDistillation` plug-in uses the distiller's temperature variable: what `temperature`
    reports and schedules change is what the loss uses."""
    x, y = mlp_data
    teacher, student = mlp_teacher, mlp(8, "student", seed=3)
    t, s = teacher(x[:32]), student(x[:32])
    plugin = keras.distillation.LogitsDistillation(temperature=2.0, loss=keras.losses.KLDivergence())
    d = Distiller(teacher, student, plugin, student_loss_weight=0.0)
    assert d.temperature == 2.0
    with pytest.raises(ValueError, match="own temperature"):
        d.compile(temperature=10)
    d.compile()
    at_2 = float(d.compute_loss(x[:32], y[:32]))
    assert at_2 == pytest.approx(_np(L.kl_distillation(t, s, temperature=2.0)).mean(), rel=1e-4)
    d.temperature = 5.0  # what DistillationSchedule does
    at_5 = float(d.compute_loss(x[:32], y[:32]))
    assert at_5 == pytest.approx(_np(L.kl_distillation(t, s, temperature=5.0)).mean(), rel=1e-4)
    assert d.temperature == 5.0 and abs(at_5 - at_2) > 1e-3
    with pytest.raises(ValueError, match="different temperatures"):
        Distiller(teacher, student, [plugin, keras.distillation.LogitsDistillation(temperature=4.0)])

    class FixedT(keras.distillation.DistillationLoss):  # a plug-in that keeps its own temperature
        temperature = 2.0

        def compute_loss(self, teacher_outputs, student_outputs, **kwargs):
            return ops.mean(ops.square(teacher_outputs / 2.0 - student_outputs / 2.0))

    fixed = Distiller(student=student, teacher=teacher, distillation_losses=FixedT())
    fixed.compile()
    with pytest.raises(ValueError, match="FixedT uses its own temperature"):
        fixed.temperature = 3.0


def test_feature_match_weights_are_not_compounded(mlp_teacher):
    match = FeatureMatch("hidden", weight=1.5, mask=None)
    for _ in range(3):
        Distiller(
            student=mlp(64, "student", seed=3),
            teacher=mlp_teacher,
            distillation_losses=[match],
            distillation_loss_weights=[2.0],
        )
    assert match.weight == 1.5


def test_label_space_must_match(mlp_teacher):
    inputs = keras.Input((8,))
    other = keras.Model(inputs, keras.layers.Dense(5)(inputs))
    with pytest.raises(ValueError, match="same label space"):
        Distiller(other, mlp_teacher)
    with pytest.raises(ValueError, match="keras.Model"):
        Distiller(lambda x: x, mlp_teacher)


def test_several_teachers_average_softened_distributions(mlp_data, mlp_teacher):
    x, y = mlp_data
    teacher = mlp_teacher
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
    # One teacher with the weight [1.0] is one teacher (it used to fail on the first step).
    single = Distiller(student, teacher, teacher_weights=[1.0])
    single.compile(optimizer="sgd", alpha=0.0, temperature=2.0)
    alone = _np(L.kl_distillation(teacher(xb), student(xb), 2.0)).mean()  # the student trained meanwhile
    assert float(single.compute_loss(xb)) == pytest.approx(alone, rel=1e-5)
    assert np.isfinite(single.fit(x, y, epochs=1, verbose=0).history["loss"]).all()


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
    # kd-tf's rule: features= terms are added outside (1 - alpha) with their own weight.
    y = np.zeros(16, "int32")
    d.alpha = 0.5
    labelled = d.loss_parts(x, y)
    assert float(labelled["loss"]) == pytest.approx(
        0.5 * float(labelled["student_loss"])
        + 0.5 * float(labelled["distillation_loss"])
        + float(labelled["feature_loss"]),
        rel=1e-6,
    )
    d.alpha = 0.0
    # Padding does not count: changing padded inputs changes neither the loss at real tokens...
    x2 = {"features": x["features"].copy(), "input_mask": x["input_mask"]}
    x2["features"][:, 3:] = 100.0
    assert float(d.loss_parts(x2)["feature_loss"]) == pytest.approx(float(parts["feature_loss"]), rel=1e-5)
    history = d.fit(x, y, epochs=15, batch_size=16, verbose=0)
    assert history.history["feature_loss"][-1] < history.history["feature_loss"][0]
    # Layer names of functional models work as features too (no dict output needed).
    d2 = Distiller(mlp(4, "s2", 5), mlp(16, "t2", 6), features=[FeatureMatch("hidden", loss="cosine")])
    d2.compile()
    assert float(d2.loss_parts(np.ones((2, 8), "float32"))["feature_loss"]) >= 0.0
    with pytest.raises(ValueError, match="no output key or layer named"):
        Distiller(mlp(4, "s3", 5), mlp(16, "t3", 6), features=[FeatureMatch("nope")])


def test_with_teacher_outputs_targets_and_what_is_logged(mlp_data, mlp_teacher):
    x, y = mlp_data
    teacher = mlp_teacher
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
    plain = free.loss_parts(x[:8], y[:8])
    assert float(plain["loss"]) == pytest.approx(float(live["student_loss"]), rel=1e-6)
    assert "distillation_loss" not in plain
    with pytest.raises(ValueError, match="TeacherCache"):
        free.loss_parts(x[:8])
    # Validation on plain labels logs what was computed, never a distillation loss of 0.
    train = tf.data.Dataset.from_tensor_slices((x, with_teacher_outputs(y, {"logits": _np(teacher(x))})))
    history = free.fit(train.batch(32), validation_data=(x, y), epochs=2, verbose=0).history
    assert {"loss", "student_loss", "distillation_loss", "val_loss", "val_student_loss"} == set(history)
    assert history["val_loss"] == pytest.approx(history["val_student_loss"])


def test_jit_compile_resolution(mlp_teacher):
    assert resolve_jit_compile("auto", devices=["CPU"]) is False
    assert resolve_jit_compile("auto", devices=["CPU", "GPU"]) is True
    assert resolve_jit_compile("auto", devices=["TPU"]) is True
    assert resolve_jit_compile(True) is True and resolve_jit_compile(False) is False
    with pytest.raises(ValueError, match="jit_compile"):
        resolve_jit_compile("yes")
    d = Distiller(mlp(8, "student", seed=3), mlp_teacher)
    d.compile(jit_compile="auto")
    assert d.jit_compile is (len(tf.config.list_logical_devices("GPU")) > 0)


def test_jit_compiled_step_matches_uncompiled(mlp_data, mlp_teacher):
    """XLA on a tiny Dense pair compiles in seconds even on CPU; same weights as without XLA."""
    x, y = mlp_data
    results = []
    for jit in (False, True):
        student = mlp(8, "student", seed=3)
        d = Distiller(student, mlp_teacher)
        d.compile(optimizer=keras.optimizers.SGD(0.1), alpha=0.3, temperature=2.0, jit_compile=jit)
        assert d.jit_compile is jit
        d.fit(x, y, epochs=1, batch_size=64, shuffle=False, verbose=0)
        results.append(weights_of(student))
    assert_weights_close(results[0], results[1], atol=1e-5)


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision(mlp_data, mlp_teacher, policy):
    """With SGD (which, unlike Adam, is not invariant to the gradients' scale) one step under a mixed
    policy moves the weights as far as the same step in float32: loss scaling is undone exactly."""
    x, y = mlp_data
    reference = mlp(8, "student", seed=3)
    try:
        keras.mixed_precision.set_dtype_policy(policy)
        student = mlp(8, "student", seed=3)
    finally:
        keras.mixed_precision.set_dtype_policy("float32")
    student.set_weights(reference.get_weights())
    assert student.compute_dtype == policy.split("_")[1]
    deltas = []
    for model in (student, reference):
        d = Distiller(model, mlp_teacher)  # the float32 teacher stays float32
        d.compile(optimizer=keras.optimizers.SGD(0.5), metrics=["accuracy"], alpha=0.3, temperature=2.0)
        before = weights_of(model)
        d.fit(x[:64], y[:64], epochs=1, batch_size=64, verbose=0)
        deltas.append([a - b for a, b in zip(weights_of(model), before)])
    assert isinstance(d.optimizer, keras.optimizers.SGD)
    mixed = Distiller(student, mlp_teacher)
    mixed.compile(optimizer=keras.optimizers.SGD(0.5), alpha=0.3, temperature=2.0)
    assert isinstance(mixed.optimizer, keras.optimizers.LossScaleOptimizer) is (policy == "mixed_float16")
    tolerance = 2e-2 if policy == "mixed_bfloat16" else 2e-3
    for dm, d32 in zip(*deltas):
        assert np.abs(d32).max() > 1e-3
        np.testing.assert_allclose(dm, d32, atol=tolerance * np.abs(d32).max(), rtol=0)
    parts = mixed.loss_parts(x[:32], y[:32])
    assert parts["loss"].dtype == "float32" and parts["student_logits"].dtype == policy.split("_")[1]
    # Same loss as float32 arithmetic on the same (half-precision) student logits.
    s = ops.cast(parts["student_logits"], "float32")
    expected = (
        0.3 * _np(L.hard_label_cross_entropy(y[:32], s))
        + 0.7 * _np(L.kl_distillation(mlp_teacher(x[:32]), s, 2.0))
    ).mean()
    assert float(parts["loss"]) == pytest.approx(expected, rel=1e-5)
    history = mixed.fit(x, y, epochs=3, batch_size=32, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    assert history.history["loss"][-1] < history.history["loss"][0]
    assert all(w.dtype == "float32" for w in student.trainable_weights)


def test_student_saves_and_loads_without_teacher(tmp_path, mlp_data, mlp_teacher):
    x, y = mlp_data
    student = mlp(8, "student", seed=3)
    d = Distiller(student, mlp_teacher)
    d.compile(optimizer="adam")
    d.fit(x, y, epochs=1, verbose=0)
    expected = _np(student(x[:5]))
    path = tmp_path / "student.keras"
    d.student.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(_np(loaded(x[:5])), expected, atol=1e-6)
    assert loaded.count_params() == student.count_params() < mlp_teacher.count_params()
    d.student.export(str(tmp_path / "saved_model"), verbose=False)
    reloaded = tf.saved_model.load(str(tmp_path / "saved_model"))
    np.testing.assert_allclose(reloaded.serve(x[:5]).numpy(), expected, atol=1e-6)
