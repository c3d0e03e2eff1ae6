"""Tiny teachers, students and data shared by the Distiller tests (plain Keras, fast on CPU)."""

import keras
import numpy as np
import tensorflow as tf

NUM_FEATURES = 8
NUM_CLASSES = 3


def make_data(n=192, seed=0):
    """Real-valued inputs with a nonlinear 3-class rule: (x, y) NumPy arrays."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, NUM_FEATURES)).astype("float32")
    score = np.stack([x[:, 0] + x[:, 1] ** 2 - 1, x[:, 2] - x[:, 3], -x[:, 0] + 0.5 * x[:, 4]], axis=1)
    return x, score.argmax(axis=1).astype("int32")


def mlp(hidden, name, seed, dict_output=False):
    """Functional MLP; with dict_output it returns {"logits", "hidden"}."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((NUM_FEATURES,), name="x")
    h = keras.layers.Dense(hidden, activation="relu", name="hidden")(inputs)
    logits = keras.layers.Dense(NUM_CLASSES, name="logits")(h)
    outputs = {"logits": logits, "hidden": h} if dict_output else logits
    return keras.Model(inputs, outputs, name=name)


def trained_teacher(x, y, seed=1, epochs=30, hidden=64):
    teacher = mlp(hidden, "teacher", seed)
    teacher.compile(keras.optimizers.Adam(0.01), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    teacher.fit(x, y, epochs=epochs, batch_size=32, verbose=0)
    return teacher


def clone_with_weights(model):
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    return copy


def weights_of(model):
    return [np.array(w) for w in model.get_weights()]


def assert_weights_close(a, b, atol=1e-6):
    assert len(a) == len(b)
    for wa, wb in zip(a, b):
        np.testing.assert_allclose(wa, wb, atol=atol, rtol=0)


def dataset(x, y=None, batch_size=32):
    ds = tf.data.Dataset.from_tensor_slices((x, y) if y is not None else x)
    return ds.batch(batch_size)
