"""TeacherCache: computed once, keyed by teacher, outputs and data, atomic, checked, streamed, and training
from it equals training live."""

import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from kd_tf.distill import (
    Distiller,
    FeatureMatch,
    TeacherCache,
    cache_store,
    dataset_fingerprint,
    model_fingerprint,
)
from tests.distill_helpers import assert_weights_close, make_data, mlp, trained_teacher, weights_of

N = 160
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def data(mlp_data):
    x, y = mlp_data
    return x[:N], y[:N]


def _examples(x, y):
    return tf.data.Dataset.from_tensor_slices((x, y))


def _dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_cache_rows_are_the_teachers_logits_in_order(tmp_path, data, mlp_teacher):
    x, y = data
    cache = TeacherCache(tmp_path, mlp_teacher, batch_size=48, progress=False)
    key = cache.build(_examples(x, y))
    assert cache.is_complete(key)
    logits = cache.load(key)["logits"]
    assert isinstance(logits, np.memmap)  # read from disk, not loaded whole
    np.testing.assert_allclose(logits, np.asarray(mlp_teacher(x)), atol=1e-5)
    # The attached dataset carries each example's own row.
    for i, (xi, targets) in enumerate(cache.attach(_examples(x, y)).take(5)):
        np.testing.assert_allclose(xi.numpy(), x[i])
        assert int(targets["labels"]) == y[i]
        np.testing.assert_allclose(targets["teacher_outputs"]["logits"].numpy(), logits[i], atol=0)


def test_attached_rows_are_streamed_not_embedded_in_the_graph(tmp_path, mlp_data, mlp_teacher):
    """The attached dataset's graph does not grow with the cache (from_tensor_slices embedded it)."""
    x, y = mlp_data
    overhead = []
    for n in (16, 192):
        cache = TeacherCache(tmp_path / str(n), mlp_teacher, progress=False)
        source = _examples(x[:n], y[:n])
        ds = cache.attach(source)
        assert int(ds.cardinality()) == n
        overhead.append(len(ds._as_serialized_graph().numpy()) - len(source._as_serialized_graph().numpy()))
    assert abs(overhead[1] - overhead[0]) < 100  # the 176 extra rows of logits (2 KB) are not in it


def test_key_depends_on_teacher_outputs_and_data(tmp_path, data, mlp_teacher):
    x, y = data
    cache = TeacherCache(tmp_path, mlp_teacher, progress=False)
    k1 = cache.key(_examples(x, y))
    assert cache.key(_examples(x, y)) == k1
    assert cache.key(_examples(x[:-1], y[:-1])) != k1
    assert cache.key(_examples(x, y), dataset_id="digits-v1") != k1
    other = mlp(64, "other", seed=9)
    assert TeacherCache(tmp_path, other, progress=False).key(_examples(x, y)) != k1
    assert model_fingerprint(mlp_teacher) != model_fingerprint(other)
    assert dataset_fingerprint(_examples(x, y))[1] == len(x)
    # Which outputs are cached is part of the key: logits only, logits + a feature, another logits key.
    same_logits = TeacherCache(tmp_path, Distiller(mlp(8, "s", 3), mlp_teacher), progress=False)
    with_feature = TeacherCache(
        tmp_path, Distiller(mlp(64, "s", 3), mlp_teacher, features=[FeatureMatch("hidden")]), progress=False
    )
    assert same_logits.key(_examples(x, y)) == k1
    assert with_feature.outputs == ["hidden", "logits"]
    assert with_feature.key(_examples(x, y)) != k1
    assert TeacherCache(tmp_path, mlp_teacher, logits_key="scores", progress=False).key(_examples(x, y)) != k1
    # A distiller that needs features never reuses a logits-only cache.
    cache.build(_examples(x, y))
    key = with_feature.build(_examples(x, y))
    assert key != k1 and set(with_feature.load(key)) == {"logits", "hidden"}


def test_several_cached_teachers_train_a_teacher_less_distiller(tmp_path, data, mlp_teacher):
    """`[B, K, C]` cached logits are K teachers, also when the batch size equals K (2 here)."""
    x, y = data
    second = trained_teacher(x, y, seed=7, epochs=5, hidden=16)
    live = Distiller(mlp(8, "student", seed=3), [mlp_teacher, second], teacher_weights=[3.0, 1.0])
    live.compile(alpha=0.2, temperature=2.0)
    cache = TeacherCache(tmp_path, live, progress=False)
    batch = next(iter(cache.attach(_examples(x, y)).batch(2)))
    assert batch[1]["teacher_outputs"]["logits"].shape == (2, 2, 3)
    for weights in ([3.0, 1.0], None):
        free = Distiller(live.student, teacher_weights=weights)
        free.compile(alpha=0.2, temperature=2.0)
        reference = live if weights else Distiller(live.student, [mlp_teacher, second])
        reference.compile(alpha=0.2, temperature=2.0)
        expected = float(reference.loss_parts(x[:2], y[:2])["loss"])
        assert float(free.loss_parts(*batch)["loss"]) == pytest.approx(expected, rel=1e-6)
    assert np.isfinite(
        free.fit(cache.attach(_examples(x, y)).batch(2), epochs=1, verbose=0).history["loss"]
    ).all()
    with pytest.raises(ValueError, match="hold 2 teachers but teacher_weights has 3"):
        Distiller(live.student, teacher_weights=[1, 1, 1]).loss_parts(*batch)
    x2, targets = batch
    wrong = {"teacher_outputs": {"logits": targets["teacher_outputs"]["logits"][:, :, :, None]}}
    with pytest.raises(ValueError, match="do not fit the student's"):
        Distiller(live.student).loss_parts(x2, wrong)


def test_per_token_features_of_variable_length_examples(tmp_path):
    """Examples of different lengths: per-token features are stored at each example's length, come back
    at that length, and the loss from the cache equals the loss with the live teacher."""

    def seq_model(name, seed):
        keras.utils.set_random_seed(seed)
        tokens = keras.Input((None, 3), name="tokens")
        mask = keras.Input((None,), name="input_mask")
        h = keras.layers.Dense(6, name="token_hidden")(tokens)
        pooled = keras.layers.GlobalAveragePooling1D()(h, mask=mask)
        return keras.Model(
            {"tokens": tokens, "input_mask": mask},
            {"logits": keras.layers.Dense(3)(pooled), "hidden": h},
            name=name,
        )

    rng = np.random.default_rng(0)
    lengths = [2, 5, 3, 4, 1, 5, 2, 3]

    def examples():
        for i, n in enumerate(lengths):
            yield (
                {"tokens": rng.normal(size=(n, 3)).astype("float32"), "input_mask": np.ones(n, "float32")},
                i % 3,
            )

    spec = (
        {"tokens": tf.TensorSpec((None, 3)), "input_mask": tf.TensorSpec((None,))},
        tf.TensorSpec((), tf.int32),
    )
    dataset = tf.data.Dataset.from_generator(examples, output_signature=spec).cache()
    distiller = Distiller(
        seq_model("s", 1), seq_model("t", 2), features=[FeatureMatch("hidden", mask="input_mask")]
    )
    distiller.compile(alpha=0.5, temperature=2.0)
    cache = TeacherCache(tmp_path, distiller, batch_size=3, progress=False)
    attached = cache.attach(dataset)
    rows = list(attached.as_numpy_iterator())
    assert [r[1]["teacher_outputs"]["hidden"].shape for r in rows] == [(n, 6) for n in lengths]
    for x, targets in attached.padded_batch(4):
        live = distiller.loss_parts(x, targets["labels"])
        cached = distiller.loss_parts(x, targets)
        for key in ("loss", "distillation_loss", "feature_loss"):
            assert float(cached[key]) == pytest.approx(float(live[key]), rel=1e-5, abs=1e-6)


def test_interrupted_run_never_reads_as_complete(tmp_path, data, mlp_teacher):
    x, y = data
    cache = TeacherCache(tmp_path, mlp_teacher, batch_size=16, progress=False)

    def failing_at(index):
        def check(i, example):
            tf.debugging.assert_less(i, tf.constant(index, tf.int64), message="simulated crash")
            return example

        return tf.data.Dataset.from_tensor_slices((x, y)).enumerate().map(check)

    # Same dataset_id on purpose: the interrupted run and the good run share the key.
    with pytest.raises(tf.errors.InvalidArgumentError, match="simulated crash"):
        cache.build(failing_at(100), dataset_id="examples-v1")
    key = cache.key(_examples(x, y), dataset_id="examples-v1")
    assert not cache.is_complete(key)
    assert not os.path.exists(cache.path(key))
    with pytest.raises(FileNotFoundError, match="call build"):
        cache.load(key)
    # A run killed hard (no cleanup) leaves a partial folder, even with a completion record in it:
    # it is never read, and the next run removes it (its owner no longer runs)...
    dead = tmp_path / cache_store.partial_name(key, pid=_dead_pid())
    dead.mkdir()
    (dead / "meta.json").write_text('{"complete": true, "format": 2, "files": {}, "columns": {}}')
    # ...but never the partial folder of a process that still runs (here: this one).
    alive = tmp_path / cache_store.partial_name(key, pid=os.getpid())
    alive.mkdir()
    assert not cache.is_complete(key)
    # So is a final folder without a completion record (e.g. half copied by hand).
    os.makedirs(cache.path(key))
    assert not cache.is_complete(key)
    built = cache.build(_examples(x, y), dataset_id="examples-v1")
    assert built == key and cache.is_complete(key)
    assert not dead.exists() and alive.exists()
    assert cache.load(key)["logits"].shape == (len(x), 3)


def test_damaged_files_are_recomputed_with_a_warning_naming_them(tmp_path, data, mlp_teacher):
    x, y = data
    cache = TeacherCache(tmp_path, mlp_teacher, progress=False)
    key = cache.build(_examples(x, y))
    (name,) = [f for f in os.listdir(cache.path(key)) if f.endswith(".npy")]
    path = os.path.join(cache.path(key), name)
    expected = np.asarray(mlp_teacher(x))
    with open(path, "r+b") as f:  # truncated
        f.truncate(200)
    assert not cache.is_complete(key)
    with pytest.raises(cache_store.CacheDamaged, match=name):
        cache.load(key)
    with pytest.warns(UserWarning, match=f"{name} has 200 bytes"):
        assert cache.build(_examples(x, y)) == key
    np.testing.assert_allclose(cache.load(key)["logits"], expected, atol=1e-5)
    with open(path, "r+b") as f:  # same size, other bytes
        f.seek(-4, os.SEEK_END)
        f.write(np.float32(1e6).tobytes())
    assert cache.is_complete(key)  # sizes agree; only the checksum can tell
    with pytest.raises(cache_store.CacheDamaged, match="SHA-256"):
        cache.verify(key)
    with pytest.warns(UserWarning, match=f"{name} has changed since it was written"):
        rows = list(cache.attach(_examples(x, y)).as_numpy_iterator())
    np.testing.assert_allclose(rows[-1][1]["teacher_outputs"]["logits"], expected[-1], atol=1e-5)


def test_non_finite_teacher_outputs_are_never_cached(tmp_path, data):
    x, y = data
    inputs = keras.Input((8,))
    broken = keras.Model(
        inputs, keras.layers.Lambda(lambda v: tf.math.log(v[:, :3]))(inputs)
    )  # log(<0) = NaN
    cache = TeacherCache(tmp_path, broken, progress=False)
    with pytest.raises(ValueError, match="non-finite"):
        cache.build(_examples(x, y))
    assert [p for p in os.listdir(tmp_path) if not p.endswith(".lock")] == []


SLOW_BUILD = """
import os, sys, time
sys.path.insert(0, {root!r})
import numpy as np, tensorflow as tf
from kd_tf.distill import TeacherCache
from tests.distill_helpers import make_data, mlp
x, y = make_data(64)
def sleep(v):
    time.sleep(0.05)
    return v
def slow(xi, yi):
    return tf.ensure_shape(tf.numpy_function(sleep, [xi], tf.float32, stateful=True), [8]), yi
ds = tf.data.Dataset.from_tensor_slices((x, y)).map(slow)
cache = TeacherCache({path!r}, mlp(16, "t", 1), batch_size=4, progress=False, teacher_id="t")
print("started", flush=True)
cache.build(ds, dataset_id="d")
print("finished", flush=True)
"""


def _start_slow_build(tmp_path):
    script = SLOW_BUILD.format(root=ROOT, path=str(tmp_path))
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "started"
    deadline = time.time() + 60
    while time.time() < deadline and not any(".partial-" in p for p in os.listdir(tmp_path)):
        time.sleep(0.05)
    return proc


def test_kill_during_caching_leaves_no_complete_cache(tmp_path):
    """A process killed (SIGKILL) mid-run never leaves a cache that reads as complete."""
    proc = _start_slow_build(tmp_path)
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    leftovers = [p for p in os.listdir(tmp_path) if not p.endswith(".lock")]
    assert leftovers and all(p.startswith(".") and ".partial-" in p for p in leftovers)
    cache = TeacherCache(tmp_path, mlp(16, "t", 1), teacher_id="t", progress=False)
    key = cache.key(None, dataset_id="d")
    assert not cache.is_complete(key)


def test_a_second_builder_waits_for_the_first_and_reuses_its_cache(tmp_path, capfd):
    """Two processes building one key: the second waits for the first's lock (it used to delete the
    first one's partial folder, which then crashed), then reuses the finished cache."""
    proc = _start_slow_build(tmp_path)
    xs, ys = make_data(64)
    cache = TeacherCache(tmp_path, mlp(16, "t", 1), batch_size=4, teacher_id="t", progress=False)
    started = time.time()
    key = cache.build(_examples(xs, ys), dataset_id="d")  # would compute fast; must wait instead
    waited = time.time() - started
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0 and "finished" in out
    assert "Waiting for another process" in capfd.readouterr().err
    assert cache.is_complete(key) and waited > 0.5
    meta = cache_store.read_meta(cache.path(key))
    assert meta["num_examples"] == 64


def test_training_from_cache_equals_training_live(tmp_path, data, mlp_teacher):
    x, y = data

    def run(distiller_teacher, dataset):
        student = mlp(8, "student", seed=3)
        d = Distiller(student, distiller_teacher)
        d.compile(optimizer=keras.optimizers.SGD(0.1), alpha=0.3, temperature=2.0)
        history = d.fit(dataset, epochs=3, verbose=0)
        return weights_of(student), history.history

    live_w, live_h = run(mlp_teacher, _examples(x, y).batch(32))
    # Cached: computed once by a distiller with the teacher, then trained by one without any teacher.
    cache = TeacherCache(tmp_path, Distiller(mlp(8, "tmp", 3), mlp_teacher), progress=False)
    cached = cache.attach(_examples(x, y))
    cached_w, cached_h = run(None, cached.batch(32))
    assert_weights_close(live_w, cached_w, atol=1e-5)
    np.testing.assert_allclose(live_h["loss"], cached_h["loss"], rtol=1e-5)
    assert set(live_h) == set(cached_h)
    # A second attach reuses the cache (no teacher needed to read it).
    assert len([p for p in os.listdir(tmp_path) if not p.startswith(".")]) == 1
    assert cache.attach(_examples(x, y)).cardinality() == len(x)
    named = TeacherCache(tmp_path / "named", mlp_teacher, teacher_id="teacher-v1", progress=False)
    named.attach(_examples(x, y), dataset_id="examples-v1")
    with pytest.raises(ValueError, match="unbatched dataset that was cached"):
        named.attach(_examples(x[:10], y[:10]), dataset_id="examples-v1")
