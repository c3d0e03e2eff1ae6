"""A teacher cache written in shards: resumable after a kill, each shard atomic, read as one column.

Folder layout of a sharded cache with key K in a cache directory:

* while building: `.K.shards/` holds the finished shards `shard-00000/`, `shard-00001/`, ... Each shard is
  a complete `kd_tf.distill.cache_store` folder (its `.npy` columns and its own `meta.json` with sizes and
  SHA-256), written under a private `.shard-NNNNN.partial-<host>-<pid>-<id>` name and renamed into place
  only once flushed. A killed build leaves finished shards and at most one partial folder: the next build
  checks the finished shards (sizes and SHA-256), reuses them and computes only the rest.
* complete: `K/`, renamed from `.K.shards/` after its top `meta.json` was written. That record lists every
  shard's files (as `shard-NNNNN/<file>`, with their sizes and SHA-256, so `cache_store.verify` checks them
  all) and each column as a `sharded` column whose rows are the shards' rows in order.

Reading (`open_columns`) memory-maps every shard's files and joins them (`ConcatenatedArray`), so
`cache_store.stream` serves them like one array.
"""

import json
import os
import warnings

import numpy as np

from kd_tf.distill import cache_store as store

SHARDED = "sharded"


class ConcatenatedArray:
    """Several arrays (memory-mapped shards) read as one along their first axis: `len`, `shape`, `dtype`,
    an integer index and a slice (step 1) work as on the concatenation, without building it.

    Args:
        parts: Arrays with the same trailing shape and dtype.

    Example:
    ```python
    ConcatenatedArray([np.arange(3), np.arange(3, 5)])[2:4]  # array([2, 3])
    ```
    """

    def __init__(self, parts):
        self.parts = list(parts)
        self.offsets = np.concatenate([[0], np.cumsum([len(p) for p in self.parts])]).astype(np.int64)
        self.shape = (int(self.offsets[-1]),) + tuple(self.parts[0].shape[1:])
        self.dtype = self.parts[0].dtype

    def __len__(self):
        return self.shape[0]

    def __getitem__(self, index):
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            if step != 1:
                raise ValueError("ConcatenatedArray reads contiguous slices only (step 1).")
            pieces = []
            for part, low in zip(self.parts, self.offsets[:-1]):
                a, b = max(start, low), min(stop, low + len(part))
                if a < b:
                    pieces.append(np.asarray(part[a - low : b - low]))
            return np.concatenate(pieces) if pieces else np.empty((0,) + self.shape[1:], self.dtype)
        index = int(index) + (len(self) if int(index) < 0 else 0)
        part = int(np.searchsorted(self.offsets, index, side="right")) - 1
        return self.parts[part][index - self.offsets[part]]

    def __array__(self, dtype=None, copy=None):
        array = self[:]
        return array if dtype is None else array.astype(dtype)


def intact_shard(folder, key, count):
    """The `meta.json` of a finished shard of cache `key` with `count` examples whose files match it (sizes
    and SHA-256), or None (absent, unfinished, of another key, or damaged: then with a warning).

    Example:
    ```python
    meta = intact_shard(os.path.join(work, "shard-00003"), key, 256)
    ```
    """
    meta = store.read_meta(folder)
    if meta is None or meta.get("key") != key or meta.get("num_examples") != count:
        return None
    try:
        store.verify(folder, meta)
    except store.CacheDamaged as damage:
        warnings.warn(f"{damage} Recomputing that shard.", stacklevel=3)
        return None
    return meta


def write_shard(work, name, columns, meta):
    """Writes one shard atomically: a private partial folder, flushed, then renamed to `work/name`.

    Args:
        work: The build folder (`.K.shards`).
        name: The shard's folder name (`shard-00003`).
        columns: Columns in `cache_store.write`'s format.
        meta: Extra fields of the shard's `meta.json` (at least `key`).

    Returns:
        The shard's meta dict.

    Example:
    ```python
    write_shard(work, "shard-00000", {"sparse_ids": ids}, {"key": key})
    ```
    """
    store.discard(os.path.join(work, name))
    store.remove_dead_partials(work, name)
    tmp = os.path.join(work, store.partial_name(name))
    os.makedirs(tmp)
    try:
        written = store.write(tmp, columns, meta)
        os.replace(tmp, os.path.join(work, name))
    finally:
        if os.path.exists(tmp):
            store.discard(tmp)
    return written


def write_meta(work, shards, meta):
    """Writes the top `meta.json` of a sharded cache (flushed, then renamed into place) and returns it.

    Args:
        work: The build folder holding the shards.
        shards: `(name, shard_meta)` pairs in row order.
        meta: Extra fields.

    Returns:
        The meta dict written.

    Example:
    ```python
    write_meta(work, [("shard-00000", meta0), ("shard-00001", meta1)], {"key": key})
    ```
    """
    columns, files = {}, {}
    for name, shard in shards:
        for file_name, record in shard["files"].items():
            files[f"{name}/{file_name}"] = record
        for column, described in shard["columns"].items():
            entry = columns.setdefault(column, {"kind": SHARDED, "count": 0, "shards": []})
            part = {k: v for k, v in described.items() if k != "files"}
            part["files"] = {role: f"{name}/{f}" for role, f in described["files"].items()}
            entry["shards"].append(part)
            entry["count"] += int(described["count"])
    counts = {c["count"] for c in columns.values()}
    meta = dict(meta, format=store.FORMAT_VERSION, complete=True, num_examples=counts.pop() if counts else 0)
    meta.update(num_shards=len(shards), columns=columns, files=files)
    tmp = os.path.join(work, f".{store.META}.tmp")
    with open(tmp, "w") as f:
        json.dump(meta, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, os.path.join(work, store.META))
    return meta


def open_columns(folder, meta):
    """The columns of a verified sharded cache, each joined across shards: a `ConcatenatedArray` (fixed
    rows) or a `cache_store.RaggedColumn` over one (rows at each example's length).

    Example:
    ```python
    ids = open_columns(folder, read_meta(folder))["sparse_ids"]   # rows of every shard, in order
    ```
    """
    columns = {}
    for name, column in meta["columns"].items():
        parts = column["shards"]
        values = ConcatenatedArray(
            [np.load(os.path.join(folder, p["files"]["values"]), mmap_mode="r") for p in parts]
        )
        if parts[0]["kind"] == store.RAGGED:
            lengths = np.concatenate([np.load(os.path.join(folder, p["files"]["lengths"])) for p in parts])
            columns[name] = store.RaggedColumn(values, lengths, parts[0]["token_axis"])
        else:
            columns[name] = values
    return columns


__all__ = ["ConcatenatedArray", "SHARDED", "intact_shard", "open_columns", "write_meta", "write_shard"]
