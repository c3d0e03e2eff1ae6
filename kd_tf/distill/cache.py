"""Cached teacher outputs: run the teacher once over a dataset, train every later epoch from disk.

The teacher's forward pass dominates the cost of distilling a BERT-base teacher. `TeacherCache` runs it
once over an *unbatched, deterministic* dataset of examples, stores one row of outputs per example on disk
under a key made from the teacher's weights and the dataset's content, and `attach` zips those rows back
onto the same dataset. Shuffle, bucket and batch after attaching: the outputs travel with their example.

Writes are atomic: outputs go to a private temporary folder that is renamed into place (`os.replace`)
only after every file and the `meta.json` completion record are written and flushed, so an interrupted
run leaves no folder that is ever read as a complete cache (its leftovers are removed by the next run).

Example:
```python
cache = TeacherCache("~/.cache/kd_tf/teacher", distiller)   # or a teacher model
train = cache.attach(train_examples)                         # runs the teacher once, with a progress bar
distiller.fit(train.shuffle(10_000).batch(32), epochs=3)     # no teacher call in any epoch
```
"""

import hashlib
import json
import os
import shutil
import uuid

import keras
import numpy as np
import tensorflow as tf

from kd_tf.distill.distiller import Distiller
from kd_tf.distill.targets import LOGITS, with_teacher_outputs

META = "meta.json"
FORMAT_VERSION = 1


def _hash_array(h, value):
    array = np.asarray(value)
    h.update(str(array.dtype).encode())
    h.update(str(array.shape).encode())
    if array.dtype == object:  # strings
        for item in array.reshape(-1):
            h.update(item if isinstance(item, bytes) else str(item).encode())
            h.update(b"\0")
    else:
        h.update(np.ascontiguousarray(array).tobytes())


def model_fingerprint(models):
    """SHA-256 of the models' weights (names, shapes and values).

    Args:
        models: A Keras model or a list of them.

    Returns:
        A hex digest.
    """
    models = models if isinstance(models, (list, tuple)) else [models]
    h = hashlib.sha256()
    for model in models:
        for w in model.weights:
            h.update(w.path.encode() if hasattr(w, "path") else w.name.encode())
            _hash_array(h, keras.ops.convert_to_numpy(w))
    return h.hexdigest()


def dataset_fingerprint(dataset):
    """SHA-256 of every element of a (finite) dataset, in order.

    Args:
        dataset: A `tf.data.Dataset`.

    Returns:
        `(hex digest, number of elements)`.
    """
    h = hashlib.sha256()
    count = 0
    for element in dataset.as_numpy_iterator():
        for leaf in tf.nest.flatten(element):
            _hash_array(h, leaf)
        count += 1
    h.update(
        str(tf.nest.map_structure(lambda s: (s.dtype.name, str(s.shape)), dataset.element_spec)).encode()
    )
    return h.hexdigest(), count


def _split_element(element):
    """`(x, y, sample_weight)` from a dataset element: `x`, `(x,)`, `(x, y)` or `(x, y, w)`."""
    if isinstance(element, tuple):
        if len(element) == 1:
            return element[0], None, None
        if len(element) == 2:
            return element[0], element[1], None
        if len(element) == 3:
            return element
        raise ValueError(
            f"Dataset elements must be x, (x, y) or (x, y, sample_weight); got {len(element)} parts."
        )
    return element, None, None


def _file_name(key):
    return (
        "".join(c if c.isalnum() or c in "-_" else "_" for c in key)
        + f"-{hashlib.md5(key.encode()).hexdigest()[:8]}.npy"
    )


class TeacherCache:
    """Teacher outputs computed once over a dataset and stored on disk.

    Args:
        directory: Folder holding the caches (one subfolder per teacher and dataset).
        teacher: A `kd_tf.Distiller` (caches exactly the teacher outputs it needs: logits of every
            teacher and the teacher features of its `FeatureMatch`es), or a teacher `keras.Model` (caches
            its logits).
        teacher_id: A string that identifies the teacher (e.g. its path and version) instead of hashing
            its weights.
        logits_key: Key of the logits when a teacher model returns a dict.
        batch_size: Batch size of the teacher's forward pass.
        progress: Show a tqdm progress bar while computing.

    Raises:
        ValueError: If `teacher` is neither a Distiller with a teacher nor a Keras model.

    Example:
    ```python
    cache = TeacherCache("/tmp/kd_cache", teacher_model)
    ds = cache.attach(examples)        # elements (x, {"labels": y, "teacher_outputs": {"logits": t}})
    ```
    """

    def __init__(
        self, directory, teacher, *, teacher_id=None, logits_key=LOGITS, batch_size=64, progress=True
    ):
        self.directory = os.path.abspath(os.path.expanduser(directory))
        if isinstance(teacher, Distiller):
            if not teacher.teachers:
                raise ValueError("The distiller has no teacher to cache; pass Distiller(student, teacher).")
            self._models = list(teacher.teachers)
            self._forward = teacher.teacher_outputs
        elif isinstance(teacher, keras.Model):
            self._models = [teacher]

            def forward(x):
                out = teacher(x, training=False)
                return {LOGITS: out[logits_key] if isinstance(out, dict) else out}

            self._forward = forward
        else:
            raise ValueError(
                f"teacher must be a kd_tf.Distiller or a keras.Model, got {type(teacher).__name__}."
            )
        self.teacher_id = teacher_id
        self.batch_size = int(batch_size)
        self.progress = progress
        self._forward_fn = tf.function(self._forward, reduce_retracing=True)

    # ---------------------------------------------------------------- keys and state
    def key(self, dataset, dataset_id=None):
        """The cache key of `dataset` for this teacher: SHA-256 of the two fingerprints.

        Args:
            dataset: Unbatched dataset of examples.
            dataset_id: A string naming the dataset's content (and version) instead of hashing it.

        Returns:
            A hex string.
        """
        teacher_part = self.teacher_id or model_fingerprint(self._models)
        data_part = dataset_id if dataset_id is not None else dataset_fingerprint(dataset)[0]
        return hashlib.sha256(f"v{FORMAT_VERSION}|{teacher_part}|{data_part}".encode()).hexdigest()[:32]

    def path(self, key):
        """The folder of a complete cache with this key (which may not exist yet)."""
        return os.path.join(self.directory, key)

    def is_complete(self, key):
        """Whether a complete cache exists for `key` (its completion record and every file)."""
        meta = self._read_meta(key)
        return meta is not None and all(
            os.path.exists(os.path.join(self.path(key), f)) for f in meta["files"].values()
        )

    def _read_meta(self, key):
        try:
            with open(os.path.join(self.path(key), META)) as f:
                meta = json.load(f)
        except (OSError, ValueError):
            return None
        return meta if meta.get("complete") and meta.get("format") == FORMAT_VERSION else None

    # ---------------------------------------------------------------- computing
    def build(self, dataset, dataset_id=None):
        """Runs the teacher over `dataset` unless a complete cache exists; returns its key.

        Args:
            dataset: Unbatched, deterministic `tf.data.Dataset` of `x`, `(x, y)` or `(x, y, w)` elements
                (no shuffling before this point). Examples may have different lengths (token ids cut to
                their real length for bucketing): they are padded per teacher batch, which the
                teacher's padding mask must make harmless.
            dataset_id: Optional name of the dataset's content, instead of hashing it.

        Returns:
            The cache key.
        """
        key = self.key(dataset, dataset_id)
        if self.is_complete(key):
            return key
        os.makedirs(self.directory, exist_ok=True)
        self._remove_partials(key)
        tmp = os.path.join(self.directory, f".{key}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        os.makedirs(tmp)
        try:
            columns = self._compute(dataset)
            files = {}
            for name, rows in columns.items():
                files[name] = _file_name(name)
                with open(os.path.join(tmp, files[name]), "wb") as f:
                    np.save(f, rows)
                    f.flush()
                    os.fsync(f.fileno())
            meta = {
                "format": FORMAT_VERSION,
                "complete": True,
                "key": key,
                "num_examples": int(next(iter(columns.values())).shape[0]) if columns else 0,
                "files": files,
                "teacher_id": self.teacher_id,
                "dataset_id": dataset_id,
            }
            with open(os.path.join(tmp, META), "w") as f:
                json.dump(meta, f, indent=1)
                f.flush()
                os.fsync(f.fileno())
            try:
                os.replace(tmp, self.path(key))
            except OSError:  # another run finished first
                if not self.is_complete(key):
                    raise
        finally:
            if os.path.exists(tmp):
                shutil.rmtree(tmp, ignore_errors=True)
        return key

    def _remove_partials(self, key):
        for name in os.listdir(self.directory):
            if name.startswith(f".{key}.partial-"):
                shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)
        final = self.path(key)
        if os.path.isdir(final) and not self.is_complete(key):
            shutil.rmtree(final, ignore_errors=True)

    def _compute(self, dataset):
        total = int(dataset.cardinality())
        # padded_batch: examples cut to their own length (for bucketing later) are padded per batch;
        # the padding is masked, so each example's outputs do not depend on its batch-mates.
        batches = dataset.padded_batch(self.batch_size).prefetch(tf.data.AUTOTUNE)
        bar = None
        if self.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=total if total >= 0 else None, desc="teacher outputs", unit="ex")
        columns = {}
        try:
            for element in batches:
                x, _, _ = _split_element(element)
                outputs = self._forward_fn(x)
                for name, value in outputs.items():
                    columns.setdefault(name, []).append(np.asarray(value, dtype=np.float32))
                if bar is not None:
                    bar.update(int(next(iter(outputs.values())).shape[0]))
        finally:
            if bar is not None:
                bar.close()
        return {name: np.concatenate(parts, axis=0) for name, parts in columns.items()}

    # ---------------------------------------------------------------- reading
    def load(self, key):
        """The cached outputs as a dict of NumPy arrays (memory-mapped), one row per example.

        Raises:
            FileNotFoundError: If no complete cache has this key; call `build` first.
        """
        meta = self._read_meta(key)
        if meta is None:
            raise FileNotFoundError(
                f"No complete teacher cache {key!r} in {self.directory}; call build(dataset) first."
            )
        return {
            name: np.load(os.path.join(self.path(key), f), mmap_mode="r") for name, f in meta["files"].items()
        }

    def attach(self, dataset, dataset_id=None):
        """The dataset with the teacher's outputs attached to each example (computed if needed).

        Args:
            dataset: The same unbatched, deterministic dataset as given to `build`.
            dataset_id: As in `build`.

        Returns:
            A dataset of `(x, targets)` or `(x, targets, sample_weight)` where
            `targets = {"labels": y, "teacher_outputs": {...}}` (no `labels` for unlabeled examples),
            ready for `shuffle`/`batch`/bucketing and `Distiller.fit`.

        Raises:
            ValueError: If the dataset's size differs from the cache's.
        """
        key = self.build(dataset, dataset_id)
        arrays = self.load(key)
        count = next(iter(arrays.values())).shape[0]
        cardinality = int(dataset.cardinality())
        if cardinality >= 0 and cardinality != count:
            raise ValueError(
                f"The dataset has {cardinality} examples but the cache {key!r} has {count}: pass the same "
                "unbatched dataset that was cached (attach before shuffling or batching)."
            )
        outputs = tf.data.Dataset.from_tensor_slices({k: np.asarray(v) for k, v in arrays.items()})

        def join(element, teacher_outputs):
            x, y, w = _split_element(element)
            targets = with_teacher_outputs(y, teacher_outputs)
            return (x, targets) if w is None else (x, targets, w)

        return tf.data.Dataset.zip((dataset, outputs)).map(join)


__all__ = ["TeacherCache", "dataset_fingerprint", "model_fingerprint"]
