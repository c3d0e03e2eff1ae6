"""Not only BERT: a CNN teacher distilled into a smaller CNN on scikit-learn's handwritten digits
(1,797 real 8x8 images, offline), the article's image-recognition use (section 3.4)."""

import keras
import numpy as np
import pytest

from kd_tf.distill import Distiller

N_LABELLED = 150  # labels the students get
N_TRANSFER = 600  # the teacher's labelled training set = the student's transfer set
SEEDS = (1, 5)
EPOCHS = 40


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    data = load_digits()
    x = (data.images / 16.0).astype("float32")[..., None]  # [1797, 8, 8, 1]
    y = data.target.astype("int32")
    order = np.random.default_rng(0).permutation(len(x))
    return x[order], y[order]


def cnn(filters, dense, name, seed):
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(filters, 3, padding="same", activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(filters * 2, 3, padding="same", activation="relu"),
            keras.layers.Flatten(),
            keras.layers.Dense(dense, activation="relu"),
            keras.layers.Dense(10),
        ],
        name=name,
    )


def test_distilled_cnn_agrees_with_teacher_more_than_label_trained(digits):
    x, y = digits
    x_test, y_test = x[N_TRANSFER:], y[N_TRANSFER:]
    x_labelled, y_labelled = x[:N_LABELLED], y[:N_LABELLED]
    x_transfer = x[:N_TRANSFER]  # its labels beyond the first N_LABELLED are never shown to a student

    teacher = cnn(32, 128, "teacher", seed=0)
    teacher.compile(
        keras.optimizers.Adam(3e-3),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    teacher.fit(x[:N_TRANSFER], y[:N_TRANSFER], epochs=30, batch_size=32, verbose=0)
    teacher_acc = teacher.evaluate(x_test, y_test, verbose=0)[1]
    assert teacher_acc > 0.9
    t_pred = np.asarray(teacher.predict(x_test, verbose=0)).argmax(1)

    def agreement(model):
        return float(np.mean(np.asarray(model.predict(x_test, verbose=0)).argmax(1) == t_pred))

    for seed in SEEDS:  # the same student architecture and initialization, trained both ways
        alone = cnn(4, 16, "student_alone", seed=seed)
        alone.compile(
            keras.optimizers.Adam(3e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        )
        alone.fit(x_labelled, y_labelled, epochs=EPOCHS, batch_size=32, verbose=0)

        student = cnn(4, 16, "student", seed=seed)
        distiller = Distiller(student, teacher)
        distiller.compile(
            optimizer=keras.optimizers.Adam(3e-3),
            metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
            alpha=0.1,
            temperature=4.0,
        )
        # Same number of epochs: half on the labelled images (alpha-weighted), half on the unlabeled
        # transfer set, where the teacher's soft targets are the only signal (the article's section 2.2).
        distiller.fit(x_labelled, y_labelled, epochs=EPOCHS // 2, batch_size=32, verbose=0)
        distiller.fit(x_transfer, epochs=EPOCHS // 2, batch_size=32, verbose=0)
        gain = agreement(student) - agreement(alone)
        print(
            f"seed {seed}: teacher acc {teacher_acc:.3f}, agreement distilled {agreement(student):.3f} "
            f"vs labels alone {agreement(alone):.3f}"
        )
        assert gain > 0.02
        accuracy = distiller.evaluate(x_test, y_test, verbose=0, return_dict=True)["accuracy"]
        assert accuracy > 0.85
