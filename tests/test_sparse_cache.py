"""SparseTeacherCache: top-k / sampled teacher targets, a few bytes per token, keyed, memory-mapped,
resumable after a kill, checked, and training from it minimises what the live teacher's targets give."""

import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from kd_tf.distill import Distiller, SparseKLDistillation, SparseTeacherCache, cache_store
from kd_tf.distill import sparse as S
from kd_tf.lm import cut_student, lm_windows, load_imdb_corpus
from tests.lm_distill_helpers import log_softmax, tiny_llama, toy_teacher, toy_windows

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    return tiny_llama(tmp_path_factory.mktemp("sparse_cache"))


@pytest.fixture(scope="module")
def windows(teacher):
    return lm_windows(load_imdb_corpus(limit=4), teacher, 32)


def _arrays(columns):
    return {name: np.asarray(column) for name, column in columns.items()}


def test_cached_rows_are_the_teachers_top_k_in_small_dtypes(tmp_path, teacher, windows):
    cache = SparseTeacherCache(tmp_path, teacher, k=8, shard_size=16, progress=False)
    key = cache.build(windows)
    count = int(windows.cardinality())
    assert cache.last_build["shards"] == -(-count // 16) > 1 and cache.last_build["computed_shards"] > 1
    columns = cache.load(key)
    assert {n: c.dtype.name for n, c in columns.items()} == {
        S.SPARSE_IDS: "uint16",
        S.SPARSE_LOG_PROBS: "float16",
        S.SPARSE_TAIL: "float32",
    }
    assert all(isinstance(part, np.memmap) for part in columns[S.SPARSE_IDS].parts)  # read from disk
    assert cache.bytes_per_token(key) == 8 * (2 + 2) + 4
    x, _, _ = next(iter(windows.batch(count)))
    lt = log_softmax(teacher(x).numpy())
    ids = np.asarray(columns[S.SPARSE_IDS]).astype(np.int64)
    np.testing.assert_array_equal(ids, np.argsort(-lt, axis=-1, kind="stable")[..., :8])
    np.testing.assert_allclose(columns[S.SPARSE_LOG_PROBS], np.take_along_axis(lt, ids, -1), atol=2e-2)
    tail = 1 - np.exp(np.take_along_axis(lt, ids, -1)).sum(-1)
    np.testing.assert_allclose(columns[S.SPARSE_TAIL], tail, atol=1e-5)
    # attach: every window carries its own rows, streamed, in the stored dtypes.
    for i, (_, targets, w) in enumerate(cache.attach(windows).take(3)):
        rows = targets["teacher_outputs"]
        assert rows[S.SPARSE_IDS].dtype == tf.uint16 and w.shape == (32,)
        np.testing.assert_array_equal(rows[S.SPARSE_IDS].numpy(), columns[S.SPARSE_IDS][i])
    again = SparseTeacherCache(tmp_path, teacher, k=8, shard_size=16, progress=False)
    assert again.build(windows) == key and again.last_build["computed_shards"] == 0


def test_key_depends_on_teacher_data_and_what_is_kept(tmp_path):
    teacher, ds = toy_teacher(), toy_windows()
    key = SparseTeacherCache(tmp_path, teacher, k=4, progress=False).key(ds)
    assert SparseTeacherCache(tmp_path, teacher, k=4, progress=False).key(ds) == key
    for other in (dict(k=8), dict(k=4, mode="sample"), dict(k=4, temperature=2.0), dict(k=4, samples=4)):
        assert SparseTeacherCache(tmp_path, teacher, progress=False, **other).key(ds) != key
    assert SparseTeacherCache(tmp_path, toy_teacher(seed=2), k=4, progress=False).key(ds) != key
    assert SparseTeacherCache(tmp_path, teacher, k=4, progress=False).key(toy_windows(seed=1)) != key

    def key_of(**settings):
        return SparseTeacherCache(tmp_path, teacher, progress=False, **settings).key(ds)

    # The seed of the draws matters where there are draws (sampled tokens, a sampled tail), not for top-k.
    assert key_of(k=4, mode="sample", seed=1) != key_of(k=4, mode="sample")
    assert key_of(k=4, samples=4, seed=1) != key_of(k=4, samples=4) != key_of(k=4, samples=8)
    assert key_of(k=4, seed=1) == key


def test_the_distillers_sparse_loss_defines_the_cache(tmp_path):
    teacher = toy_teacher()
    distiller = Distiller(toy_teacher(seed=3), teacher)
    distiller.compile(distillation_loss_fn=SparseKLDistillation(k=5, mode="sample", temperature=2.0, seed=4))
    assert distiller.temperature == 2.0  # the loss's own, fixed temperature
    cache = SparseTeacherCache(tmp_path, distiller, progress=False)
    assert (cache.k, cache.mode, cache.temperature, cache.seed) == (5, "sample", 2.0, 4)
    assert cache.loss().get_config() == distiller._objective.compile_term.source.get_config()
    with pytest.raises(ValueError, match="k=6 contradicts the distiller's"):
        SparseTeacherCache(tmp_path, distiller, k=6)
    with pytest.raises(ValueError, match="asked for temperature 3.0"):
        distiller.compile(distillation_loss_fn=SparseKLDistillation(k=5), temperature=3.0)
    distiller.compile(distillation_loss_fn=SparseKLDistillation(k=3, samples=5, seed=6))
    tail = SparseTeacherCache(tmp_path, distiller, progress=False)
    assert (tail.k, tail.mode, tail.samples, tail.seed, tail.temperature) == (3, "top_k", 5, 6, 1.0)
    with pytest.raises(ValueError, match="samples=2 contradicts the distiller's"):
        SparseTeacherCache(tmp_path, distiller, samples=2)
    with pytest.raises(ValueError, match="stores one teacher's distribution"):
        SparseTeacherCache(tmp_path, Distiller(toy_teacher(seed=3), [teacher, toy_teacher(seed=5)]))


def test_training_from_the_cache_follows_the_live_teachers_targets(tmp_path, teacher, windows):
    """A teacher-less distiller on cached top-k targets and a distiller that makes its live teacher's
    logits sparse minimise the same estimator: the same losses and (up to the float16 storage of the
    log-probabilities) the same student."""
    cache = SparseTeacherCache(tmp_path, teacher, k=16, progress=False)

    def run(distiller_teacher, dataset):
        keras.utils.set_random_seed(0)
        student = cut_student(teacher, blocks=[1])
        distiller = Distiller(student, distiller_teacher)
        distiller.compile(keras.optimizers.SGD(0.1), distillation_loss_fn=cache.loss(), alpha=0.0)
        history = distiller.fit(dataset.batch(8), epochs=2, shuffle=False, verbose=0)
        return history.history["loss"], student.get_weights()

    cached_loss, cached = run(None, cache.attach(windows))
    live_loss, live = run(teacher, windows)
    np.testing.assert_allclose(cached_loss, live_loss, rtol=2e-3)
    for a, b in zip(cached, live):
        np.testing.assert_allclose(a, b, atol=2e-3)
    assert cached_loss[-1] < cached_loss[0]


def test_damaged_shard_is_recomputed_alone(tmp_path):
    teacher, ds = toy_teacher(), toy_windows()
    cache = SparseTeacherCache(tmp_path, teacher, k=4, shard_size=8, progress=False)
    key = cache.build(ds)
    before = _arrays(cache.load(key))
    victim = os.path.join(cache.path(key), "shard-00002")
    name = next(f for f in os.listdir(victim) if f.startswith("sparse_log_probs"))
    with open(os.path.join(victim, name), "r+b") as f:  # same size, other bytes
        f.seek(-2, os.SEEK_END)
        f.write(b"\x00\x7c")
    with pytest.raises(cache_store.CacheDamaged, match="SHA-256 differs"):
        cache.verify(key)
    with pytest.warns(UserWarning, match=f"shard-00002/{name}"):
        assert cache.build(ds) == key
    assert cache.last_build == dict(key=key, shards=5, reused_shards=4, computed_shards=1)
    after = _arrays(cache.load(key))
    for column in before:
        np.testing.assert_array_equal(after[column], before[column])
    with open(os.path.join(victim, name), "r+b") as f:
        f.truncate(100)
    with pytest.raises(cache_store.CacheDamaged, match="has 100 bytes"):
        cache.load(key)


def test_non_finite_teacher_outputs_are_never_cached(tmp_path):
    teacher = toy_teacher()
    broken = keras.Model(teacher.input, keras.layers.Lambda(lambda v: tf.math.log(v - 10.0))(teacher.output))
    cache = SparseTeacherCache(tmp_path, broken, k=4, shard_size=8, progress=False)
    with pytest.raises(ValueError, match="non-finite"):
        cache.build(toy_windows())
    assert not cache.is_complete(cache.key(toy_windows()))


SLOW_BUILD = """
import os, sys, time
sys.path.insert(0, {root!r})
import tensorflow as tf
from kd_tf.distill import SparseTeacherCache
from tests.lm_distill_helpers import toy_teacher, toy_windows
def sleep(v):
    time.sleep(0.1)
    return v
def slow(x, y, w):
    ids = tf.ensure_shape(tf.numpy_function(sleep, [x["token_ids"]], tf.int32, stateful=True), [6])
    return dict(x, token_ids=ids), y, w
cache = SparseTeacherCache({path!r}, toy_teacher(), k=4, mode="sample", seed=3, shard_size=8, batch_size=4,
                           teacher_id="toy", progress=False)
print("started", flush=True)
cache.build(toy_windows().map(slow), dataset_id="d")
print("finished", flush=True)
"""


def test_killed_build_resumes_from_its_finished_shards(tmp_path):
    """A build killed (SIGKILL) after two of its five shards: nothing reads as complete, and the next build
    checks and reuses the two shards and gives exactly the cache of an uninterrupted build (the draws of
    sampled targets depend on the window, not on where the build restarted)."""
    settings = dict(k=4, mode="sample", seed=3, shard_size=8, batch_size=4, teacher_id="toy", progress=False)
    cache = SparseTeacherCache(tmp_path / "killed", toy_teacher(), **settings)
    key = cache.key(None, dataset_id="d")
    work = tmp_path / "killed" / f".{key}.shards"
    script = SLOW_BUILD.format(root=ROOT, path=str(tmp_path / "killed"))
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "started"
    deadline = time.time() + 120
    while time.time() < deadline and not (work / "shard-00001").is_dir():
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (work / "shard-00001").is_dir() and not cache.is_complete(key)
    assert cache.build(toy_windows(), dataset_id="d") == key
    assert cache.last_build["reused_shards"] >= 2 and cache.last_build["shards"] == 5
    assert not work.exists() and not [p for p in os.listdir(cache.path(key)) if ".partial-" in p]
    fresh = SparseTeacherCache(tmp_path / "fresh", toy_teacher(), **settings)
    reference = _arrays(fresh.load(fresh.build(toy_windows(), dataset_id="d")))
    for name, values in _arrays(cache.load(key)).items():
        np.testing.assert_array_equal(values, reference[name])


def test_a_distiller_with_a_sparse_loss_saves_and_loads(tmp_path):
    distiller = Distiller(toy_teacher(seed=3))
    distiller.compile(
        optimizer="adam", distillation_loss_fn=SparseKLDistillation(k=5, temperature=2.0), alpha=0.0
    )
    batch = next(
        iter(
            SparseTeacherCache(tmp_path, toy_teacher(), k=5, temperature=2.0, progress=False)
            .attach(toy_windows())
            .batch(8)
        )
    )
    expected = float(distiller.loss_parts(*batch)["loss"])
    distiller.save(tmp_path / "distiller.keras")
    loaded = keras.saving.load_model(tmp_path / "distiller.keras")
    source = loaded._objective.compile_term.source
    assert isinstance(source, SparseKLDistillation) and (source.k, source.temperature) == (5, 2.0)
    assert loaded.temperature == 2.0
    assert float(loaded.loss_parts(*batch)["loss"]) == pytest.approx(expected, rel=1e-6)


def test_a_sampled_tail_is_stored_after_the_top_k(tmp_path):
    teacher, ds = toy_teacher(), toy_windows()
    cache = SparseTeacherCache(tmp_path, teacher, k=4, samples=6, seed=2, progress=False)
    key = cache.build(ds)
    assert cache.bytes_per_token(key) == (4 + 6) * (2 + 2) + 4
    assert (cache.loss().k, cache.loss().samples) == (4, 6)
    ids = np.asarray(cache.load(key)[S.SPARSE_IDS]).astype(np.int64)
    x, _, _ = next(iter(ds.batch(64)))
    head = np.argsort(-log_softmax(teacher(x).numpy()), axis=-1, kind="stable")[..., :4]
    np.testing.assert_array_equal(ids[..., :4], head)
    assert not (ids[..., 4:, None] == head[..., None, :]).any()
    again = SparseTeacherCache(tmp_path / "again", teacher, k=4, samples=6, seed=2, progress=False)
    np.testing.assert_array_equal(np.asarray(again.load(again.build(ds))[S.SPARSE_IDS]), ids)
