"""Callbacks with the Distiller: schedules, stop at target, student checkpoints, resume, TensorBoard."""

import glob

import keras
import numpy as np
import pytest
import tensorflow as tf

from kd_tf.distill import Constant, DistillationSchedule, Distiller, Linear, StopAtTarget, StudentCheckpoint
from tests.distill_helpers import assert_weights_close, mlp, weights_of


@pytest.fixture(scope="module")
def data(mlp_data):
    """The first 128 examples of the shared `mlp_data` (8 batches of 16)."""
    x, y = mlp_data
    return x[:128], y[:128]


@pytest.fixture(scope="module")
def teacher(mlp_teacher):
    return mlp_teacher


def _distiller(teacher, seed=3, **compile_kwargs):
    d = Distiller(mlp(8, "student", seed=seed), teacher)
    compile_kwargs.setdefault("optimizer", keras.optimizers.Adam(0.01))
    compile_kwargs.setdefault("metrics", [keras.metrics.SparseCategoricalAccuracy(name="accuracy")])
    d.compile(**compile_kwargs)
    return d


def test_schedules():
    assert Constant(2.5)(99) == 2.5
    ramp = Linear(4.0, 1.0, steps=3)
    assert [ramp(s) for s in range(5)] == [4.0, 3.0, 2.0, 1.0, 1.0]
    with pytest.raises(ValueError):
        Linear(1, 2, steps=0)
    with pytest.raises(ValueError):
        DistillationSchedule(per="week")


def test_schedule_callback_changes_temperature_and_alpha(data, teacher):
    x, y = data
    d = _distiller(teacher)
    seen = []

    class Record(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            if batch == 0:
                seen.append((self.model.temperature, self.model.alpha))

    schedule = DistillationSchedule(temperature=Linear(4.0, 1.0, steps=3), alpha=0.5)
    history = d.fit(x, y, epochs=4, batch_size=64, verbose=0, callbacks=[schedule, Record()])
    assert history.history["temperature"] == pytest.approx([4.0, 3.0, 2.0, 1.0])
    assert history.history["alpha"] == pytest.approx([0.5] * 4)
    assert [t for t, _ in seen] == pytest.approx([4.0, 3.0, 2.0, 1.0])
    assert [a for _, a in seen] == pytest.approx([0.5] * 4)
    # The compiled step reads the variable: the loss at T=1 equals a fresh distiller's at T=1.
    ref = Distiller(d.student, teacher)
    ref.compile(alpha=0.5, temperature=1.0)
    assert float(d.compute_loss(x[:16], y[:16])) == pytest.approx(
        float(ref.compute_loss(x[:16], y[:16])), rel=1e-6
    )
    # Per batch: the step is the optimizer's iteration count.
    d2 = _distiller(teacher)
    d2.fit(
        x,
        y,
        epochs=1,
        batch_size=32,
        verbose=0,
        callbacks=[DistillationSchedule(temperature=Linear(5.0, 1.0, steps=2), per="batch")],
    )
    assert d2.temperature == pytest.approx(1.0)


def test_stop_at_target(data, teacher):
    x, y = data
    stop = StopAtTarget("val_accuracy", target=0.0)
    history = _distiller(teacher).fit(x, y, validation_data=(x, y), epochs=5, verbose=0, callbacks=[stop])
    assert len(history.history["loss"]) == 1 and stop.stopped_epoch == 0
    never = StopAtTarget("val_accuracy", target=1.01)
    history = _distiller(teacher).fit(x, y, validation_data=(x, y), epochs=3, verbose=0, callbacks=[never])
    assert len(history.history["loss"]) == 3 and never.stopped_epoch is None
    assert StopAtTarget("val_loss", 0.1).mode == "min"
    with pytest.raises(KeyError, match="not in the logs"):
        _distiller(teacher).fit(x, y, epochs=1, verbose=0, callbacks=[StopAtTarget("val_accuracy", 0.5)])


def test_student_checkpoint_keeps_the_best_student_only(tmp_path, data, teacher):
    x, y = data
    d = _distiller(teacher)
    best = []

    class Track(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if not best or logs["val_loss"] < best[0][0]:
                best[:] = [(logs["val_loss"], np.asarray(self.model.student(x[:4])))]

    path = tmp_path / "best_student.keras"
    ckpt = StudentCheckpoint(path, monitor="val_loss")
    d.fit(x, y, validation_data=(x[:64], y[:64]), epochs=4, verbose=0, callbacks=[ckpt, Track()])
    loaded = keras.models.load_model(path)
    assert loaded.name == "student" and ckpt.best == pytest.approx(best[0][0])
    np.testing.assert_allclose(np.asarray(loaded(x[:4])), best[0][1], atol=1e-6)
    every = StudentCheckpoint(str(tmp_path / "s-{epoch}.weights.h5"), save_best_only=False)
    d.fit(x, y, epochs=2, verbose=0, callbacks=[every])
    assert sorted(p.split("/")[-1] for p in glob.glob(str(tmp_path / "s-*"))) == [
        "s-1.weights.h5",
        "s-2.weights.h5",
    ]


def test_backup_and_restore_resume_equals_uninterrupted(tmp_path, data, teacher):
    x, y = data
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)  # 8 batches, fixed order

    reference = _distiller(teacher)
    reference.fit(ds, epochs=4, verbose=0)

    class Crash(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if self.params and self._epoch == 2 and batch == 4:
                raise RuntimeError("simulated interruption")

        def on_epoch_begin(self, epoch, logs=None):
            self._epoch = epoch

    backup = str(tmp_path / "backup")
    first = _distiller(teacher)
    with pytest.raises(RuntimeError, match="simulated interruption"):
        first.fit(ds, epochs=4, verbose=0, callbacks=[keras.callbacks.BackupAndRestore(backup), Crash()])
    assert not np.allclose(weights_of(first.student)[0], weights_of(reference.student)[0])
    # A fresh process would rebuild the same distiller; the backup restores epoch 2's start state.
    resumed = _distiller(teacher)
    history = resumed.fit(ds, epochs=4, verbose=0, callbacks=[keras.callbacks.BackupAndRestore(backup)])
    assert len(history.history["loss"]) == 2  # epochs 3 and 4 only
    assert_weights_close(weights_of(resumed.student), weights_of(reference.student), atol=1e-6)


def test_tensorboard_logs_every_loss_part(tmp_path, data, teacher):
    pytest.importorskip("tensorboard", reason="keras.callbacks.TensorBoard needs the tensorboard package")
    x, y = data
    _distiller(teacher).fit(
        x, y, epochs=1, verbose=0, callbacks=[keras.callbacks.TensorBoard(str(tmp_path / "tb"))]
    )
    tags = set()
    for path in glob.glob(str(tmp_path / "tb" / "train" / "*")):
        for record in tf.data.TFRecordDataset(path):
            event = tf.compat.v1.Event.FromString(record.numpy())
            tags.update(v.tag for v in event.summary.value)
    assert {"epoch_loss", "epoch_student_loss", "epoch_distillation_loss", "epoch_accuracy"} <= tags
