"""`kd_tf.distribute` (TF_CONFIG checks, strategies in one process) and `kd_tf.distill.cache_merge` (shards
computed by several workers merge into the cache one process builds). Two real worker processes run in
`tests/test_multi_worker.py`."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from kd_tf import distribute
from kd_tf.distill import Distiller, FeatureMatch, SparseTeacherCache, TeacherCache, cache_store
from kd_tf.distill.cache_merge import build_shards, merge_shards, worker_shards
from tests.lm_distill_helpers import toy_teacher, toy_windows

TOLERANCE = 1e-6
"""Merged rows against one process's: the teacher ran on other batches."""


def _env(value):
    return {distribute.TF_CONFIG: value if isinstance(value, str) else json.dumps(value)}


WORKERS = {"worker": ["127.0.0.1:20001", "127.0.0.1:20002"]}


def test_tf_config_gives_this_processs_place_in_the_cluster():
    assert distribute.read_tf_config({}) is None
    task = distribute.read_tf_config(_env({"cluster": WORKERS, "task": {"type": "worker", "index": 1}}))
    assert (task.worker_index, task.num_workers, task.is_chief) == (1, 2, False)
    with_chief = {"chief": ["10.0.0.1:2222"], **WORKERS}
    chief = distribute.read_tf_config(_env({"cluster": with_chief, "task": {"type": "chief", "index": 0}}))
    worker = distribute.read_tf_config(_env({"cluster": with_chief, "task": {"type": "worker", "index": 0}}))
    assert (chief.is_chief, chief.num_workers, worker.worker_index, worker.is_chief) == (True, 3, 1, False)
    spec = worker.cluster_resolver().cluster_spec().as_dict()
    assert spec == {"chief": ["10.0.0.1:2222"], "worker": WORKERS["worker"]}


@pytest.mark.parametrize(
    "tf_config, names",
    [
        ("{cluster: 1}", "is not valid JSON"),
        ({"task": {"type": "worker", "index": 0}}, 'has no field "cluster"'),
        ({"cluster": {"worker": "a:1"}, "task": {"type": "worker", "index": 0}}, 'field "cluster.worker" is'),
        (
            {"cluster": {"worker": ["a:1", "b"]}, "task": {}},
            'field "cluster.worker[1]" is \'b\', not a "host:port"',
        ),
        (
            {"cluster": {"ps": ["a:1"]}, "task": {"type": "ps", "index": 0}},
            'has no "worker" (or "chief") job',
        ),
        ({"cluster": WORKERS}, 'has no field "task"'),
        ({"cluster": WORKERS, "task": {"type": "chief", "index": 0}}, "field \"task.type\" is 'chief'"),
        (
            {"cluster": WORKERS, "task": {"type": "worker", "index": "1"}},
            "field \"task.index\" is '1', not an",
        ),
        (
            {"cluster": WORKERS, "task": {"type": "worker", "index": 2}},
            'field "task.index" is 2, out of range',
        ),
    ],
)
def test_a_malformed_tf_config_names_its_field(tf_config, names):
    with pytest.raises(distribute.DistributeError, match="TF_CONFIG") as error:
        distribute.read_tf_config(_env(tf_config))
    assert names in str(error.value)


def test_strategies_from_settings():
    assert distribute.make_strategy("none") is tf.distribute.get_strategy()
    mirrored = distribute.make_strategy("mirrored", devices=["/cpu:0"])
    assert isinstance(mirrored, tf.distribute.MirroredStrategy) and mirrored.num_replicas_in_sync == 1
    assert distribute.make_strategy("mirrored", devices=["/cpu:0"]) is mirrored  # built once
    assert distribute.worker_of(mirrored) == (0, 1) and distribute.is_chief(mirrored)
    assert distribute.worker_folder("runs/demo", mirrored) == "runs/demo"
    assert distribute.check_global_batch(30, mirrored) == 30
    with pytest.raises(distribute.DistributeError, match="distribute.strategy: 'multi_gpu' is not one of"):
        distribute.make_strategy("multi_gpu")
    with pytest.raises(distribute.DistributeError, match="distribute.communication: 'mpi'"):
        distribute.make_strategy("multi_worker", communication="mpi")
    with pytest.raises(distribute.DistributeError, match="multi_worker needs the TF_CONFIG environment"):
        distribute.make_strategy("multi_worker", environ={})
    with pytest.raises(distribute.DistributeError, match='field "task.index" is 5'):
        distribute.make_strategy(
            "multi_worker", environ=_env({"cluster": WORKERS, "task": {"type": "worker", "index": 5}})
        )


def test_a_multi_worker_strategy_after_tensorflow_ran_says_to_set_it_up_first():
    tf.constant(1.0) + 1.0  # this process has long run TensorFlow
    with pytest.raises(distribute.DistributeError, match="before TensorFlow runs anything"):
        distribute.make_strategy(
            "multi_worker", environ=_env({"cluster": WORKERS, "task": {"type": "worker", "index": 0}})
        )


def test_worker_shards_cover_every_example_once_in_order():
    for count, size, workers in [(10, 4, 2), (121, 16, 3), (5, 8, 2), (7, 1, 7)]:
        shards = sorted(s for w in range(workers) for s in worker_shards(count, size, w, workers))
        assert [index for index, _, _ in shards] == list(range(len(shards)))
        assert np.concatenate([np.arange(start, start + n) for _, start, n in shards]).tolist() == list(
            range(count)
        )
        assert all(
            index % workers == w
            for w in range(workers)
            for index, _, _ in worker_shards(count, size, w, workers)
        )
    with pytest.raises(ValueError, match=r"worker must be in \[0, 2\)"):
        worker_shards(10, 4, 2, 2)


def _examples(mlp_data):
    x, y = mlp_data
    return tf.data.Dataset.from_tensor_slices((x[:101], y[:101]))


def _arrays(cache, key):
    return {
        name: np.asarray(c.values if isinstance(c, cache_store.RaggedColumn) else c)
        for name, c in cache.load(key).items()
    }


def test_dense_shards_of_three_workers_merge_into_the_single_process_cache(tmp_path, mlp_data, mlp_teacher):
    examples = _examples(mlp_data)
    single = TeacherCache(tmp_path / "single", mlp_teacher, batch_size=32, progress=False)
    key = single.build(examples)
    cache = TeacherCache(tmp_path / "workers", mlp_teacher, batch_size=16, progress=False)
    assert build_shards(cache, examples, 0, 3) == key and build_shards(cache, examples, 2, 3) == key
    with pytest.raises(TimeoutError, match=r"1 shard\(s\) did not appear .* shard-00001 \(worker 1\)"):
        merge_shards(cache, examples, 3, timeout=0.3, poll=0.1)
    build_shards(cache, examples, 1, 3)
    shard = tmp_path / "workers" / f".{key}.shards" / "shard-00002"
    damaged = next(shard.glob("*.npy"))
    with open(damaged, "r+b") as f:  # same size, other bytes: the merge computes that shard again
        f.seek(-4, os.SEEK_END)
        f.write(b"\0\0\0\0")
    with pytest.warns(UserWarning, match="shard-00002"):
        assert merge_shards(cache, examples, 3) == key
    assert sorted(os.listdir(tmp_path / "workers")) == [f".{key}.lock", key]  # no shard left behind
    cache.verify(key)
    merged, expected = cache_store.read_meta(cache.path(key)), cache_store.read_meta(single.path(key))
    assert {k: v for k, v in merged.items() if k != "files"} == {
        k: v for k, v in expected.items() if k != "files"
    }
    np.testing.assert_allclose(
        _arrays(cache, key)["logits"], _arrays(single, key)["logits"], atol=TOLERANCE, rtol=0
    )
    # A reader of the single-process cache reads the merged one, streamed from its files.
    reader = TeacherCache(tmp_path / "workers", mlp_teacher, progress=False)
    rows = [t["teacher_outputs"]["logits"] for _, t in reader.attach(examples).as_numpy_iterator()]
    np.testing.assert_allclose(np.stack(rows), _arrays(single, key)["logits"], atol=TOLERANCE, rtol=0)


def _token_model(seed):
    keras.utils.set_random_seed(seed)
    tokens = keras.Input((None, 3), name="tokens")
    mask = keras.Input((None,), name="input_mask")
    hidden = keras.layers.Dense(4, name="token_hidden")(tokens)
    logits = keras.layers.Dense(2)(keras.layers.GlobalAveragePooling1D()(hidden, mask=mask))
    return keras.Model({"tokens": tokens, "input_mask": mask}, {"logits": logits, "hidden": hidden})


def test_per_token_rows_of_varying_length_merge_in_data_order(tmp_path):
    features = [FeatureMatch("hidden", mask="input_mask")]
    distiller = Distiller(_token_model(4), teacher=_token_model(5), features=features)
    rng = np.random.default_rng(0)
    lengths = [2, 5, 3, 4, 1, 5, 2, 3, 4]
    rows = [rng.normal(size=(n, 3)).astype("float32") for n in lengths]
    spec = {"tokens": tf.TensorSpec((None, 3)), "input_mask": tf.TensorSpec((None,))}
    examples = tf.data.Dataset.from_generator(
        lambda: ({"tokens": r, "input_mask": np.ones(len(r), "float32")} for r in rows), output_signature=spec
    ).cache()
    single = TeacherCache(tmp_path / "single", distiller, batch_size=4, progress=False)
    key = single.build(examples)
    cache = TeacherCache(tmp_path / "workers", distiller, batch_size=2, progress=False)
    for worker in (1, 0):
        build_shards(cache, examples, worker, 2)
    assert merge_shards(cache, examples, 2) == key
    merged = cache.load(key)["hidden"]
    assert [merged[i].shape for i in range(len(lengths))] == [(n, 4) for n in lengths]
    for name, values in _arrays(single, key).items():
        np.testing.assert_allclose(_arrays(cache, key)[name], values, atol=TOLERANCE, rtol=0)


def test_sparse_shards_merge_into_the_single_process_layout(tmp_path):
    teacher, windows = toy_teacher(), toy_windows(n=40)
    settings = dict(k=4, samples=2, shard_size=8, batch_size=4, progress=False)
    single = SparseTeacherCache(tmp_path / "single", teacher, **settings)
    key = single.build(windows)
    cache = SparseTeacherCache(tmp_path / "workers", teacher, **settings)
    assert worker_shards(40, 8, 0, 2) == [(0, 0, 8), (2, 16, 8), (4, 32, 8)]
    for worker in (0, 1):
        build_shards(cache, windows, worker, 2)
    assert merge_shards(cache, windows, 2) == key
    assert cache.last_build == dict(key=key, shards=5, reused_shards=5, computed_shards=0)
    # The same shards as one process cuts, the same draws: the very same files and records.
    assert cache_store.read_meta(cache.path(key)) == cache_store.read_meta(single.path(key))
    for name, values in _arrays(single, key).items():
        np.testing.assert_array_equal(_arrays(cache, key)[name], values)
