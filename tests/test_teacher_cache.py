"""TeacherCache: computed once, keyed by teacher and data, atomic, and training from it equals live."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from kd_tf.distill import Distiller, TeacherCache, dataset_fingerprint, model_fingerprint
from tests.distill_helpers import assert_weights_close, make_data, mlp, trained_teacher, weights_of


@pytest.fixture(scope="module")
def data():
    return make_data(160, seed=0)


@pytest.fixture(scope="module")
def teacher(data):
    return trained_teacher(*data, epochs=10)


def _examples(x, y):
    return tf.data.Dataset.from_tensor_slices((x, y))


def test_cache_rows_are_the_teachers_logits_in_order(tmp_path, data, teacher):
    x, y = data
    cache = TeacherCache(tmp_path, teacher, batch_size=48, progress=False)
    key = cache.build(_examples(x, y))
    assert cache.is_complete(key)
    logits = cache.load(key)["logits"]
    np.testing.assert_allclose(logits, np.asarray(teacher(x)), atol=1e-5)
    # The attached dataset carries each example's own row.
    for i, (xi, targets) in enumerate(cache.attach(_examples(x, y)).take(5)):
        np.testing.assert_allclose(xi.numpy(), x[i])
        assert int(targets["labels"]) == y[i]
        np.testing.assert_allclose(targets["teacher_outputs"]["logits"].numpy(), logits[i], atol=0)


def test_key_depends_on_teacher_weights_and_data(tmp_path, data, teacher):
    x, y = data
    cache = TeacherCache(tmp_path, teacher, progress=False)
    k1 = cache.key(_examples(x, y))
    assert cache.key(_examples(x, y)) == k1
    assert cache.key(_examples(x[:-1], y[:-1])) != k1
    assert cache.key(_examples(x, y), dataset_id="digits-v1") != k1
    other = mlp(64, "other", seed=9)
    assert TeacherCache(tmp_path, other, progress=False).key(_examples(x, y)) != k1
    assert model_fingerprint(teacher) != model_fingerprint(other)
    assert dataset_fingerprint(_examples(x, y))[1] == len(x)


def test_interrupted_run_never_reads_as_complete(tmp_path, data, teacher):
    x, y = data
    cache = TeacherCache(tmp_path, teacher, batch_size=16, progress=False)

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
    # it is never read, and the next run removes it.
    partial = tmp_path / f".{key}.partial-999-deadbeef"
    partial.mkdir()
    (partial / "meta.json").write_text('{"complete": true, "format": 1, "files": {}}')
    assert not cache.is_complete(key)
    # So is a final folder without a completion record (e.g. half copied by hand).
    os.makedirs(cache.path(key))
    assert not cache.is_complete(key)
    built = cache.build(_examples(x, y), dataset_id="examples-v1")
    assert built == key and cache.is_complete(key)
    assert not partial.exists()
    assert cache.load(key)["logits"].shape == (len(x), 3)


def test_kill_during_caching_leaves_no_complete_cache(tmp_path):
    """A process killed (SIGKILL) mid-run never leaves a cache that reads as complete."""
    import signal
    import subprocess
    import sys
    import time

    script = f"""
import os, sys, time
sys.path.insert(0, {os.getcwd()!r})
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
cache = TeacherCache({str(tmp_path)!r}, mlp(16, "t", 1), batch_size=4, progress=False, teacher_id="t")
print("started", flush=True)
cache.build(ds, dataset_id="d")
print("finished", flush=True)
"""
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "started"
    deadline = time.time() + 60
    while time.time() < deadline and not any(p.startswith(".") for p in os.listdir(tmp_path)):
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    leftovers = os.listdir(tmp_path)
    assert leftovers and all(p.startswith(".") and ".partial-" in p for p in leftovers)
    cache = TeacherCache(tmp_path, mlp(16, "t", 1), teacher_id="t", progress=False)
    key = cache.key(None, dataset_id="d")
    assert not cache.is_complete(key)


def test_training_from_cache_equals_training_live(tmp_path, data, teacher):
    x, y = data

    def run(distiller_teacher, dataset):
        student = mlp(8, "student", seed=3)
        d = Distiller(student, distiller_teacher)
        d.compile(optimizer=keras.optimizers.Adam(0.01), alpha=0.3, temperature=2.0)
        history = d.fit(dataset, epochs=3, verbose=0)
        return weights_of(student), history.history

    live_w, live_h = run(teacher, _examples(x, y).batch(32))
    # Cached: computed once by a distiller with the teacher, then trained by one without any teacher.
    cache = TeacherCache(tmp_path, Distiller(mlp(8, "tmp", 3), teacher), progress=False)
    cached = cache.attach(_examples(x, y))
    cached_w, cached_h = run(None, cached.batch(32))
    assert_weights_close(live_w, cached_w, atol=1e-5)
    np.testing.assert_allclose(live_h["loss"], cached_h["loss"], rtol=1e-5)
    assert set(live_h) == set(cached_h)
    # A second attach reuses the cache (no teacher needed to read it).
    assert len(os.listdir(tmp_path)) == 1
    assert cache.attach(_examples(x, y)).cardinality() == len(x)
    named = TeacherCache(tmp_path / "named", teacher, teacher_id="teacher-v1", progress=False)
    named.attach(_examples(x, y), dataset_id="examples-v1")
    with pytest.raises(ValueError, match="unbatched dataset that was cached"):
        named.attach(_examples(x[:10], y[:10]), dataset_id="examples-v1")
