"""Cached teacher outputs: run the teacher once over a dataset, train every later epoch from disk.

The teacher's forward pass dominates the cost of distilling a BERT-base teacher. `TeacherCache` runs it
once over an *unbatched, deterministic* dataset of examples, stores one row of outputs per example on disk
(`kd_tf.distill.cache_store`: atomic, checksummed, memory-mapped) under a key made from the teacher's
weights, the outputs it stores and the dataset's content, and `attach` streams those rows back onto the
same dataset. Shuffle, bucket and batch after attaching: the outputs travel with their example. For a
causal LM's per-token distributions (196 KB a token dense), `kd_tf.distill.SparseTeacherCache` keeps a few
hundred bytes a token instead.

Example:
```python
cache = TeacherCache("~/.cache/kd_tf/teacher", distiller)   # or a teacher model
train = cache.attach(train_examples)                         # runs the teacher once, with a progress bar
distiller.fit(train.shuffle(10_000).batch(32), epochs=3)     # no teacher call in any epoch
```
"""

import hashlib
import os
import sys
import warnings

import keras
import numpy as np
import tensorflow as tf

from kd_tf.distill import cache_store as store
from kd_tf.distill.distiller import Distiller
from kd_tf.distill.targets import LOGITS, with_teacher_outputs

FORMAT_VERSION = store.FORMAT_VERSION


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

    Example:
    ```python
    model_fingerprint(teacher) != model_fingerprint(other_teacher)
    ```
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

    Example:
    ```python
    digest, count = dataset_fingerprint(tf.data.Dataset.range(3))
    ```
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


def _example_length(dataset):
    """A function giving an element's sequence length (the longest leading axis among the inputs whose
    length varies), or None when every input has a fixed shape."""
    x_spec = _split_element(dataset.element_spec)[0]
    variable = [i for i, s in enumerate(tf.nest.flatten(x_spec)) if s.shape.rank and s.shape[0] is None]
    if not variable:
        return None

    def length(element):
        flat = tf.nest.flatten(_split_element(element)[0])
        return tf.reduce_max(tf.stack([tf.shape(flat[i], out_type=tf.int64)[0] for i in variable]))

    return length


class TeacherCache:
    """Teacher outputs computed once over a dataset and stored on disk.

    Args:
        directory: Folder holding the caches (one subfolder per key).
        teacher: A `kd_tf.Distiller` (caches exactly the teacher outputs it needs: logits of every
            teacher and the teacher features its terms read), or a teacher `keras.Model` (caches its logits).
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
            self.outputs = list(teacher.needed_teacher_outputs())
            self.logits_key = teacher.logits_key
        elif isinstance(teacher, keras.Model):
            self._models = [teacher]

            def forward(x):
                out = teacher(x, training=False)
                return {LOGITS: out[logits_key] if isinstance(out, dict) else out}

            self._forward = forward
            self.outputs = [LOGITS]
            self.logits_key = logits_key
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
        """The cache key of `dataset` for this teacher and these outputs.

        Args:
            dataset: Unbatched dataset of examples.
            dataset_id: A string naming the dataset's content (and version) instead of hashing it.

        Returns:
            A hex string: SHA-256 of the teacher (weights or `teacher_id`), the outputs stored (their names,
            `logits_key`, the number of teachers) and the data (content or `dataset_id`).

        Example:
        ```python
        cache.key(examples, dataset_id="imdb-train-v1")
        ```
        """
        teacher_part = self.teacher_id or model_fingerprint(self._models)
        data_part = dataset_id if dataset_id is not None else dataset_fingerprint(dataset)[0]
        text = f"v{FORMAT_VERSION}|{teacher_part}|{self._outputs_description()}|{data_part}"
        return hashlib.sha256(text.encode()).hexdigest()[:32]

    def _outputs_description(self):
        """What the cache stores, for its key (a subclass that stores another form says so here)."""
        return f"{','.join(self.outputs)}|{self.logits_key}|{len(self._models)}"

    def path(self, key):
        """The folder of a complete cache with this key (which may not exist yet)."""
        return os.path.join(self.directory, key)

    def is_complete(self, key):
        """Whether a complete cache exists for `key`: its completion record, and every file at its
        recorded size (`verify` also compares checksums)."""
        meta = store.read_meta(self.path(key))
        if meta is None:
            return False
        try:
            store.verify(self.path(key), meta, checksums=False)
        except store.CacheDamaged:
            return False
        return True

    def verify(self, key):
        """Checks every file of the cache `key` against the sizes and SHA-256 digests in its `meta.json`.

        Raises:
            FileNotFoundError: If no finished cache has this key.
            kd_tf.distill.cache_store.CacheDamaged: Naming the first file that differs.
        """
        meta = store.read_meta(self.path(key))
        if meta is None:
            raise FileNotFoundError(
                f"No complete teacher cache {key!r} in {self.directory}; call build(dataset) first."
            )
        store.verify(self.path(key), meta)

    # ---------------------------------------------------------------- computing
    def build(self, dataset, dataset_id=None):
        """Runs the teacher over `dataset` unless an intact cache exists; returns its key.

        A cache whose files differ from its `meta.json` (truncated, edited, half-copied) is recomputed with
        a warning that names the file. Another process building the same key is waited for, then reused.

        Args:
            dataset: Unbatched, deterministic `tf.data.Dataset` of `x`, `(x, y)` or `(x, y, w)` elements
                (no shuffling before this point). Examples may have different lengths (token ids cut to
                their real length for bucketing): they are padded per teacher batch, which the teacher's
                padding mask must make harmless; per-token outputs are stored at each example's length.
            dataset_id: Optional name of the dataset's content, instead of hashing it.

        Returns:
            The cache key.

        Raises:
            ValueError: If a teacher output's shape changes between batches without following the
                examples' lengths.

        Example:
        ```python
        key = cache.build(examples, dataset_id="imdb-train-v1")
        ```
        """
        key = self.key(dataset, dataset_id)
        os.makedirs(self.directory, exist_ok=True)

        def waiting():
            print(f"Waiting for another process building teacher cache {key} ...", file=sys.stderr)

        with store.build_lock(self.directory, key, on_wait=waiting):
            if store.read_meta(self.path(key)) is not None:
                try:
                    self.verify(key)
                    return key
                except store.CacheDamaged as damage:
                    warnings.warn(f"{damage} Recomputing teacher cache {key}.", stacklevel=2)
            store.discard(self.path(key))
            store.remove_dead_partials(self.directory, key)
            tmp = os.path.join(self.directory, store.partial_name(key))
            os.makedirs(tmp)
            try:
                meta = dict(teacher_id=self.teacher_id, dataset_id=dataset_id, key=key)
                meta.update(outputs=self.outputs, logits_key=self.logits_key, num_teachers=len(self._models))
                store.write(tmp, self._compute(dataset), meta)
                os.replace(tmp, self.path(key))
            finally:
                if os.path.exists(tmp):
                    store.discard(tmp)
        return key

    def _compute(self, dataset, bar=None):
        """The teacher's outputs as columns (`cache_store.write`'s format), from padded batches.

        Float outputs are stored as float32 (and must be finite), integer outputs (token ids) as they are.
        `bar`: a tqdm bar to advance (else one is made when `progress` is on).
        """
        total = int(dataset.cardinality())
        length = _example_length(dataset)
        batches = dataset.map(lambda *e: {"e": e, "n": length(e[0] if len(e) == 1 else e) if length else 0})
        batches = batches.padded_batch(self.batch_size).prefetch(tf.data.AUTOTUNE)
        own_bar = bar is None and self.progress
        if own_bar:
            from tqdm.auto import tqdm

            bar = tqdm(total=total if total >= 0 else None, desc="teacher outputs", unit="ex")
        columns, lengths = {}, []
        try:
            for batch in batches:
                element = batch["e"][0] if len(batch["e"]) == 1 else batch["e"]
                outputs = self._forward_fn(_split_element(element)[0])
                for name, value in outputs.items():
                    value = np.asarray(value)
                    if value.dtype.kind in "iu":
                        columns.setdefault(name, []).append(value)
                        continue
                    value = value.astype(np.float32)
                    if not np.isfinite(value).all():
                        row = sum(len(n) for n in lengths) + int(np.argwhere(~np.isfinite(value))[0][0])
                        raise ValueError(
                            f"The teacher's output {name!r} is non-finite (NaN or inf) for example {row}: "
                            "nothing was cached. Check the teacher's weights and that example's input."
                        )
                    columns.setdefault(name, []).append(value)
                lengths.append(batch["n"].numpy())
                if bar is not None:
                    bar.update(len(lengths[-1]))
        finally:
            if own_bar:
                bar.close()
        return {
            name: self._column(name, parts, lengths if length else None) for name, parts in columns.items()
        }

    def _column(self, name, parts, lengths):
        """A dense array, or `(values, lengths, token_axis)` for per-token outputs of varying lengths."""
        axis = 2 if name == LOGITS and len(self._models) > 1 else 1  # [B, K, ...] stacks the teachers
        if lengths is not None and parts[0].ndim >= axis + 2:
            if all(p.shape[axis] == max(n, default=0) for p, n in zip(parts, lengths)):
                rows = [
                    np.moveaxis(row, axis - 1, 0)[:k] for p, n in zip(parts, lengths) for row, k in zip(p, n)
                ]
                return np.concatenate(rows, axis=0), np.concatenate(lengths).astype(np.int64), axis
        shapes = sorted({p.shape[1:] for p in parts})
        if len(shapes) > 1:
            raise ValueError(
                f"The teacher output {name!r} has shapes {shapes} that change between batches without "
                "following the examples' lengths; a cache stores fixed-size rows, or per-token rows whose "
                "token axis has each example's length."
            )
        return np.concatenate(parts, axis=0)

    # ---------------------------------------------------------------- reading
    def load(self, key):
        """The cached outputs, one row per example: memory-mapped arrays (fixed-size rows) or
        `cache_store.RaggedColumn`s (per-token rows at each example's length), by output name.

        Raises:
            FileNotFoundError: If no complete cache has this key; call `build` first.
            kd_tf.distill.cache_store.CacheDamaged: If a file's size differs from `meta.json` (the
                message names it; `build` recomputes the cache).

        Example:
        ```python
        logits = np.asarray(cache.load(cache.build(examples))["logits"])
        ```
        """
        meta = store.read_meta(self.path(key))
        if meta is None:
            raise FileNotFoundError(
                f"No complete teacher cache {key!r} in {self.directory}; call build(dataset) first."
            )
        store.verify(self.path(key), meta, checksums=False)
        return self._open_columns(self.path(key), meta)

    def _open_columns(self, folder, meta):
        """The memory-mapped columns of a complete cache folder (a sharded cache joins its shards)."""
        return store.open_columns(folder, meta)

    def attach(self, dataset, dataset_id=None):
        """The dataset with the teacher's outputs attached to each example (computed if needed), streamed
        from the memory-mapped cache files.

        Args:
            dataset: The same unbatched, deterministic dataset as given to `build`.
            dataset_id: As in `build`.

        Returns:
            A dataset of `(x, targets)` or `(x, targets, sample_weight)` where
            `targets = {"labels": y, "teacher_outputs": {...}}` (no `labels` for unlabeled examples),
            ready for `shuffle`/`batch`/bucketing and `Distiller.fit`.

        Raises:
            ValueError: If the dataset's size differs from the cache's.

        Example:
        ```python
        train = cache.attach(examples).shuffle(10_000).padded_batch(32)
        ```
        """
        key = self.build(dataset, dataset_id)
        columns = self.load(key)
        count = len(next(iter(columns.values())))
        cardinality = int(dataset.cardinality())
        if cardinality >= 0 and cardinality != count:
            raise ValueError(
                f"The dataset has {cardinality} examples but the cache {key!r} has {count}: pass the same "
                "unbatched dataset that was cached (attach before shuffling or batching)."
            )

        def join(element, teacher_outputs):
            x, y, w = _split_element(element)
            targets = with_teacher_outputs(y, teacher_outputs)
            return (x, targets) if w is None else (x, targets, w)

        return tf.data.Dataset.zip((dataset, store.stream(columns, count))).map(join)


__all__ = ["TeacherCache", "dataset_fingerprint", "model_fingerprint"]
