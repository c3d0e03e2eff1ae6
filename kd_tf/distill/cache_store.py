"""The on-disk form of a teacher cache: one folder of `.npy` columns and a `meta.json` completion record.

A column holds one row per example:

* dense: `<name>.npy`, shape `[N, ...]` (fixed-size rows: logits, pooled features);
* ragged: `<name>.values.npy` (the rows of every example concatenated along their token axis) and
  `<name>.lengths.npy` (`[N]` tokens per example): per-token outputs of examples of different lengths,
  each stored at its own length (no batch padding).

`meta.json` lists the columns and, for every file, its size and SHA-256, written last and flushed: a folder
without it, or whose files differ from it, is never read as complete (`verify`). Folders are written under a
private `.<key>.partial-<host>-<pid>-<id>` name and renamed into place (`os.replace`); `build_lock`
serialises builders of one key across processes, and `remove_dead_partials` removes only leftovers of
processes that no longer run.

Reading streams rows from memory-mapped files (`np.load(mmap_mode="r")`) through a generator-backed
`tf.data` source (`stream`), so a cache larger than memory trains without being loaded or embedded in a graph.
"""

import contextlib
import hashlib
import json
import os
import shutil
import socket
import uuid

import numpy as np
import tensorflow as tf

META = "meta.json"
FORMAT_VERSION = 2
DENSE, RAGGED = "dense", "ragged"
_CHUNK = 1 << 20


class CacheDamaged(ValueError):
    """A complete-looking cache whose files differ from its `meta.json` (the message names the file).

    Example:
    ```python
    try:
        verify(folder, meta)
    except CacheDamaged as damage:
        print(damage)   # Teacher cache file .../logits-1a2b3c4d.npy has 200 bytes; meta.json records 896.
    ```
    """


def file_stem(name):
    """A file-system-safe, unique stem for a column name.

    Example:
    ```python
    file_stem("encoder/pooled_output")  # 'encoder_pooled_output-' + 8 hex digits
    ```
    """
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in name)
    return f"{safe}-{hashlib.md5(name.encode()).hexdigest()[:8]}"


def sha256_file(path):
    """SHA-256 of a file, read in 1 MiB blocks.

    Example:
    ```python
    sha256_file("cache/logits-1a2b3c4d.npy")
    ```
    """
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _save(path, array):
    with open(path, "wb") as f:
        np.save(f, array)
        f.flush()
        os.fsync(f.fileno())


def write(folder, columns, meta):
    """Writes the columns and, last, `meta.json` (with every file's size and SHA-256) into `folder`.

    Args:
        folder: An empty, private folder (renamed into place by the caller).
        columns: Dict name -> `np.ndarray` (dense) or `(values, lengths, token_axis)` (ragged).
        meta: Extra fields for `meta.json`.

    Returns:
        The meta dict written.

    Example:
    ```python
    write(tmp, {"logits": logits}, {"key": key})
    ```
    """
    described, files = {}, {}
    for name, column in columns.items():
        stem = file_stem(name)
        if isinstance(column, tuple):
            values, lengths, token_axis = column
            parts = {"values": (f"{stem}.values.npy", values), "lengths": (f"{stem}.lengths.npy", lengths)}
            described[name] = {"kind": RAGGED, "token_axis": int(token_axis), "count": int(len(lengths))}
        else:
            parts = {"values": (f"{stem}.npy", column)}
            described[name] = {"kind": DENSE, "count": int(column.shape[0])}
        described[name]["files"] = {part: file_name for part, (file_name, _) in parts.items()}
        for file_name, array in parts.values():
            path = os.path.join(folder, file_name)
            _save(path, array)
            files[file_name] = {"bytes": os.path.getsize(path), "sha256": sha256_file(path)}
    counts = {d["count"] for d in described.values()}
    meta = dict(meta, format=FORMAT_VERSION, complete=True, num_examples=counts.pop() if counts else 0)
    meta.update(columns=described, files=files)
    with open(os.path.join(folder, META), "w") as f:
        json.dump(meta, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    return meta


def read_meta(folder):
    """The completion record of a finished cache folder, or None (absent, unreadable, unfinished, old).

    Example:
    ```python
    meta = read_meta(folder)   # {"complete": True, "columns": {...}, "files": {...}, ...} or None
    ```
    """
    try:
        with open(os.path.join(folder, META)) as f:
            meta = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or not meta.get("complete") or meta.get("format") != FORMAT_VERSION:
        return None
    return meta


def verify(folder, meta, checksums=True):
    """Checks every file against `meta.json`.

    Args:
        folder: The cache folder.
        meta: Its completion record.
        checksums: Also compare SHA-256 digests (reads every file); sizes are always compared.

    Raises:
        CacheDamaged: Naming the first file that is missing, has another size, or other bytes.

    Example:
    ```python
    verify(folder, read_meta(folder))
    ```
    """
    for file_name, record in meta["files"].items():
        path = os.path.join(folder, file_name)
        if not os.path.isfile(path):
            raise CacheDamaged(f"Teacher cache file {path} is missing.")
        size = os.path.getsize(path)
        if size != record["bytes"]:
            raise CacheDamaged(
                f"Teacher cache file {path} has {size} bytes; meta.json records {record['bytes']}."
            )
        if checksums and sha256_file(path) != record["sha256"]:
            raise CacheDamaged(
                f"Teacher cache file {path} has changed since it was written (SHA-256 differs)."
            )


class RaggedColumn:
    """Rows of different lengths: `values` (memory-mapped) cut by `lengths`; `column[i]` is row i.

    Args:
        values: The rows concatenated along their token axis (first).
        lengths: Tokens per row.
        token_axis: The token axis of a batch (`column[i]` puts it back at `token_axis - 1`).

    Example:
    ```python
    RaggedColumn(np.zeros([5, 2]), [2, 3], token_axis=1)[1].shape  # (3, 2)
    ```
    """

    def __init__(self, values, lengths, token_axis):
        self.values, self.lengths, self.token_axis = values, np.asarray(lengths), token_axis
        self.offsets = np.concatenate([[0], np.cumsum(self.lengths)])

    def __len__(self):
        return len(self.lengths)

    def __getitem__(self, i):
        row = self.values[self.offsets[i] : self.offsets[i + 1]]
        return np.moveaxis(row, 0, self.token_axis - 1)


def open_columns(folder, meta):
    """The columns of a verified cache: memory-mapped arrays (dense) or `RaggedColumn`s, by name.

    Example:
    ```python
    logits = open_columns(folder, read_meta(folder))["logits"]   # np.memmap [N, C]
    ```
    """
    columns = {}
    for name, column in meta["columns"].items():
        files = {part: os.path.join(folder, f) for part, f in column["files"].items()}
        values = np.load(files["values"], mmap_mode="r")
        if column["kind"] == RAGGED:
            columns[name] = RaggedColumn(values, np.load(files["lengths"]), column["token_axis"])
        else:
            columns[name] = values
    return columns


def stream(columns, count, chunk=1024):
    """A `tf.data.Dataset` of one dict of rows per example, read chunk by chunk from the columns.

    Args:
        columns: As returned by `open_columns`.
        count: Number of examples.
        chunk: Examples read per Python call.

    Returns:
        A dataset of known cardinality `count`; ragged rows come back at their own length.

    Example:
    ```python
    rows = stream(open_columns(folder, meta), meta["num_examples"])
    ```
    """
    signature, ragged = {}, {}
    for name, column in columns.items():
        if isinstance(column, RaggedColumn):
            ragged[name] = column
            values = column.values
            signature[name] = tf.TensorSpec((None,) + values.shape[1:], tf.as_dtype(values.dtype))
            signature[name + "#lengths"] = tf.TensorSpec((None,), tf.int64)
        else:
            signature[name] = tf.TensorSpec((None,) + column.shape[1:], tf.as_dtype(column.dtype))

    def chunks():
        for start in range(0, count, chunk):
            stop = min(count, start + chunk)
            out = {}
            for name, column in columns.items():
                if name in ragged:
                    out[name] = np.asarray(column.values[column.offsets[start] : column.offsets[stop]])
                    out[name + "#lengths"] = column.lengths[start:stop].astype(np.int64)
                else:
                    out[name] = np.asarray(column[start:stop])
            yield out

    dataset = tf.data.Dataset.from_generator(chunks, output_signature=signature)
    if ragged:

        def to_ragged(batch):
            out = {k: v for k, v in batch.items() if not k.endswith("#lengths")}
            for name in ragged:
                out[name] = tf.RaggedTensor.from_row_lengths(batch[name], batch[name + "#lengths"])
            return out

        def to_rows(row):
            out = dict(row)
            for name, column in ragged.items():
                value = row[name] if isinstance(row[name], tf.Tensor) else row[name].flat_values
                if column.token_axis != 1:  # rows were stored token axis first
                    rank = len(column.values.shape)
                    axes = list(range(1, column.token_axis)) + [0] + list(range(column.token_axis, rank))
                    value = tf.transpose(value, axes)
                out[name] = value
            return out

        dataset = dataset.map(to_ragged).unbatch().map(to_rows)
    else:
        dataset = dataset.unbatch()
    return dataset.apply(tf.data.experimental.assert_cardinality(count))


# --------------------------------------------------------------------------- concurrent builders
def partial_name(key, pid=None):
    """A private folder name for one build: `.<key>.partial-<host>-<pid>-<id>` (pid: this process's).

    Example:
    ```python
    tmp = os.path.join(directory, partial_name(key))
    ```
    """
    host = socket.gethostname().replace("-", "_") or "host"
    return f".{key}.partial-{host}-{os.getpid() if pid is None else pid}-{uuid.uuid4().hex[:8]}"


def _owner_alive(name, key):
    """Whether the process that owns partial folder `name` may still run (True when unsure)."""
    fields = name[len(f".{key}.partial-") :].split("-")
    try:
        pid = int(fields[-2])
    except (IndexError, ValueError):
        return True
    host = "-".join(fields[:-2]) if len(fields) > 2 else None  # kd-tf < 0.2 wrote no host
    if host is not None and host != socket.gethostname().replace("-", "_"):
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. another user's process
        return True
    return True


def remove_dead_partials(directory, key):
    """Removes the partial folders of `key` whose owner process no longer runs on this host (a folder of
    another host, or of a process that still runs, is kept).

    Example:
    ```python
    remove_dead_partials(directory, key)
    ```
    """
    for name in os.listdir(directory):
        if name.startswith(f".{key}.partial-") and not _owner_alive(name, key):
            shutil.rmtree(os.path.join(directory, name), ignore_errors=True)


def discard(folder):
    """Moves a damaged or incomplete cache folder aside, then deletes it (readers never see half of it).

    Example:
    ```python
    discard(os.path.join(directory, key))
    ```
    """
    if not os.path.exists(folder):
        return
    parent, base = os.path.split(folder)
    trash = os.path.join(parent, f".{base}.discarded-{uuid.uuid4().hex[:8]}")
    os.replace(folder, trash)
    shutil.rmtree(trash, ignore_errors=True)


@contextlib.contextmanager
def build_lock(directory, key, on_wait=None):
    """Holds an exclusive lock on `<directory>/.<key>.lock` (advisory `flock`; released if the process dies).

    Args:
        directory: The cache directory.
        key: The cache key.
        on_wait: Called once if another process holds the lock (before waiting for it).

    Example:
    ```python
    with build_lock(directory, key):
        ...   # no other process builds this key meanwhile
    ```
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: no cross-process lock
        yield
        return
    with open(os.path.join(directory, f".{key}.lock"), "a+") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait is not None:
                on_wait()
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


__all__ = [
    "CacheDamaged",
    "RaggedColumn",
    "build_lock",
    "discard",
    "file_stem",
    "open_columns",
    "partial_name",
    "read_meta",
    "remove_dead_partials",
    "sha256_file",
    "stream",
    "verify",
    "write",
]
