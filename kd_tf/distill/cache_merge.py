"""A teacher cache computed by several workers: each runs the teacher over its shards, one process merges.

With N workers (`kd_tf.distribute.worker_of`), the examples are cut into consecutive shards of
`shard_size` rows and shard j goes to worker j % N. Every worker writes its shards in the resumable
format of `kd_tf.distill.cache_shards` (`.K.shards/shard-NNNNN/`, each with its own `meta.json`, sizes
and SHA-256, and its first example's index as `start`) into the same cache directory, which several hosts
must share. `merge_shards` (any process may call it; the first one to hold the key's lock writes) waits for
every shard, checks each one's files, and writes the cache under the key a single process would have used,
in the form a single process writes:

* a dense `TeacherCache`: one folder of columns (`kd_tf.distill.cache_store`), the shards' rows in data
  order, integrity records computed afresh;
* a `SparseTeacherCache`: its own sharded layout with the top `meta.json`, written by its `build`, which
  checks and reuses every shard (the shards are cut at the cache's `shard_size`, as one process cuts them).

A reader cannot tell the result from a single-process build: same key, same files and records, rows equal
to float32 rounding (the teacher ran on other batches). `attach` then streams it from disk as usual.

Example:
```python
index, count = kd_tf.distribute.worker_of(strategy)
cache = TeacherCache("/shared/kd_cache", teacher, progress=False)
build_shards(cache, examples, index, count, dataset_id="imdb-train-v1")
key = merge_shards(cache, examples, count, dataset_id="imdb-train-v1", timeout=3600)
train = cache.attach(examples, dataset_id="imdb-train-v1")     # streamed from the merged cache
```
"""

import math
import os
import shutil
import sys
import time

import numpy as np

from kd_tf.distill import cache_shards as shards
from kd_tf.distill import cache_store as store
from kd_tf.distill.sparse_cache import SparseTeacherCache


def _count(dataset):
    count = int(dataset.cardinality())
    if count < 0:
        count = int(dataset.reduce(np.int64(0), lambda n, _: n + 1))
    return count


def _shard_size(cache, count, num_workers):
    """A sparse cache's own shard size (its single-process layout), else one shard per worker."""
    if isinstance(cache, SparseTeacherCache):
        return cache.shard_size
    return max(1, math.ceil(count / num_workers))


def worker_shards(count, shard_size, worker, num_workers):
    """The shards one worker computes: `(shard index, first example, examples)` for every shard j of
    `count` examples cut every `shard_size` with j % num_workers == worker.

    Args:
        count: Examples in the dataset.
        shard_size: Examples per shard (the last one may be shorter).
        worker: This worker's index, 0 to `num_workers - 1`.
        num_workers: Workers sharing the work.

    Returns:
        A list of `(index, start, size)`.

    Raises:
        ValueError: If `worker` is not in `[0, num_workers)` or `shard_size < 1`.

    Example:
    ```python
    worker_shards(10, 4, worker=1, num_workers=2)   # [(1, 4, 4)]
    ```
    """
    if not 0 <= worker < num_workers:
        raise ValueError(f"worker must be in [0, {num_workers}), got {worker}.")
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}.")
    total = math.ceil(count / shard_size)
    return [
        (j, j * shard_size, min(shard_size, count - j * shard_size))
        for j in range(worker, total, num_workers)
    ]


def _shard_columns(cache, dataset, start, size):
    """The teacher's outputs for examples `start` to `start + size`, in `cache_store.write`'s format, and
    the extra fields of the shard's `meta.json` (what each cache's own build writes)."""
    rows = dataset.skip(start).take(size)
    if isinstance(cache, SparseTeacherCache):
        cache._draws.assign(start)  # the same draws as a single-process build of this shard
        columns = cache._stored(cache._compute(rows))
        return columns, {"vocabulary_size": cache.vocabulary_size}
    return cache._compute(rows), {}


def _work_folder(cache, key):
    return os.path.join(cache.directory, f".{key}.shards")


def _write_shard(cache, dataset, key, index, start, size):
    """Computes shard `index` and writes it atomically; returns its meta dict."""
    columns, extra = _shard_columns(cache, dataset, start, size)
    meta = dict(extra, key=key, shard=index, start=start)
    return shards.write_shard(_work_folder(cache, key), f"shard-{index:05d}", columns, meta)


def build_shards(cache, dataset, worker, num_workers, dataset_id=None):
    """Runs the teacher over this worker's shards of `dataset` (those missing or damaged) and writes them.

    Args:
        cache: A `TeacherCache` or `SparseTeacherCache` (the same on every worker).
        dataset: The whole unbatched, deterministic dataset (every worker passes the same one).
        worker: This worker's index (`kd_tf.distribute.worker_of(strategy)[0]`).
        num_workers: Workers sharing the work.
        dataset_id: As in `TeacherCache.build`: names the dataset's content instead of hashing it.

    Returns:
        The cache key (the same a single-process build gives).

    Raises:
        ValueError: If a teacher output is not finite (nothing of that shard is stored).

    Example:
    ```python
    key = build_shards(cache, examples, *kd_tf.distribute.worker_of(strategy))
    ```
    """
    key = cache.key(dataset, dataset_id)
    if cache.is_complete(key):
        return key
    count = _count(dataset)
    work = _work_folder(cache, key)
    os.makedirs(work, exist_ok=True)
    for index, start, size in worker_shards(
        count, _shard_size(cache, count, num_workers), worker, num_workers
    ):
        if shards.intact_shard(os.path.join(work, f"shard-{index:05d}"), key, size) is None:
            _write_shard(cache, dataset, key, index, start, size)
    return key


def _wait_for_shards(cache, key, expected, timeout, poll):
    """Waits until every expected shard has its `meta.json` (or the cache is complete)."""
    work, deadline, told = _work_folder(cache, key), time.monotonic() + timeout, False
    while True:
        missing = [
            (index, worker)
            for index, worker in expected
            if store.read_meta(os.path.join(work, f"shard-{index:05d}")) is None
        ]
        if not missing or cache.is_complete(key):
            return
        if time.monotonic() >= deadline:
            names = ", ".join(f"shard-{i:05d} (worker {w})" for i, w in missing[:5])
            raise TimeoutError(
                f"Teacher cache {key}: {len(missing)} shard(s) did not appear in {work} within "
                f"{timeout:g} s: {names}{' ...' if len(missing) > 5 else ''}. Check that those workers run "
                "and see the same cache directory, or raise the timeout."
            )
        if not told:
            print(f"Waiting for {len(missing)} shard(s) of teacher cache {key} ...", file=sys.stderr)
            told = True
        time.sleep(poll)


def _merge_dense(cache, dataset, dataset_id, key, layout):
    """Joins a dense cache's shards into one `cache_store` folder named `key`."""
    work = _work_folder(cache, key)
    with store.build_lock(cache.directory, key):
        if cache.is_complete(key):
            return
        parts = []
        for index, start, size in layout:
            folder = os.path.join(work, f"shard-{index:05d}")
            meta = shards.intact_shard(folder, key, size)
            if meta is None:  # damaged after it was written (intact_shard warned): computed again here
                meta = _write_shard(cache, dataset, key, index, start, size)
            parts.append(store.open_columns(folder, meta))
        columns = {}
        for name, first in parts[0].items():
            if isinstance(first, store.RaggedColumn):
                values = np.concatenate([np.asarray(p[name].values) for p in parts])
                lengths = np.concatenate([p[name].lengths for p in parts]).astype(np.int64)
                columns[name] = (values, lengths, first.token_axis)
            else:
                columns[name] = np.concatenate([np.asarray(p[name]) for p in parts])
        meta = dict(teacher_id=cache.teacher_id, dataset_id=dataset_id, key=key)
        meta.update(outputs=cache.outputs, logits_key=cache.logits_key, num_teachers=len(cache._models))
        store.discard(cache.path(key))
        store.remove_dead_partials(cache.directory, key)
        tmp = os.path.join(cache.directory, store.partial_name(key))
        os.makedirs(tmp)
        try:
            store.write(tmp, columns, meta)
            os.replace(tmp, cache.path(key))
        finally:
            if os.path.exists(tmp):
                store.discard(tmp)
        shutil.rmtree(work, ignore_errors=True)


def merge_shards(cache, dataset, num_workers, dataset_id=None, timeout=3600.0, poll=0.5):
    """Waits for every worker's shards, checks them and writes the complete cache; returns its key.

    Any process may call it, as often as it likes: the first to hold the key's lock writes the cache, the
    others find it complete. A shard whose files changed after they were written is computed again here,
    with a warning naming the file.

    Args:
        cache: The cache the workers built shards of (`build_shards`).
        dataset: The same whole dataset.
        num_workers: Workers that built shards.
        dataset_id: As in `build_shards`.
        timeout: Seconds to wait for missing shards.
        poll: Seconds between looks.

    Returns:
        The cache key.

    Raises:
        TimeoutError: Naming the shards (and their workers) still missing after `timeout` seconds.

    Example:
    ```python
    key = merge_shards(cache, examples, num_workers=2)
    logits = np.asarray(cache.load(key)["logits"])
    ```
    """
    key = cache.key(dataset, dataset_id)
    if cache.is_complete(key):
        return key
    count = _count(dataset)
    if count == 0:
        raise ValueError("The dataset is empty: there is no teacher output to cache.")
    size = _shard_size(cache, count, num_workers)
    layout = [s for w in range(num_workers) for s in worker_shards(count, size, w, num_workers)]
    layout.sort()
    owners = {index: index % num_workers for index, _, _ in layout}
    _wait_for_shards(cache, key, sorted(owners.items()), timeout, poll)
    if isinstance(cache, SparseTeacherCache):
        cache.build(dataset, dataset_id)  # checks and reuses every shard, writes the top meta.json
    else:
        _merge_dense(cache, dataset, dataset_id, key, layout)
    return key


__all__ = ["build_shards", "merge_shards", "worker_shards"]
