"""`SparseTeacherCache`: a causal LM teacher's distributions kept small (a few hundred bytes per token),
on disk, memory-mapped, resumable.

Dense teacher logits cost vocabulary x 4 bytes per token (196 KB for SmolLM2's 49,152 tokens), so a
`TeacherCache` of an LM corpus does not fit anywhere. This cache runs the teacher once over the windows
and keeps, per token, the sparse targets of `kd_tf.distill.sparse` (top-k ids + log-probabilities + tail
mass, or sampled tokens), computed in-graph so the dense logits never leave the forward pass.

It is a `TeacherCache` (same key rules, integrity records, lock and `attach`) written in shards
(`kd_tf.distill.cache_shards`): a build killed half-way keeps its finished shards, and the next build
checks and reuses them. A shard, or the whole cache, whose files changed after they were written is
recomputed with a warning naming the file; nothing non-finite is ever stored.

Example:
```python
cache = SparseTeacherCache("~/.cache/kd_tf/lm_targets", teacher, k=64)        # 260 bytes per token
train = cache.attach(lm_windows(corpus, teacher, 128))                          # teacher runs once
distiller = kd_tf.Distiller(student)                                            # no teacher in memory
distiller.compile(optimizer="adam", distillation_loss_fn=cache.loss(), alpha=0.0)
distiller.fit(train.shuffle(1024).batch(8), epochs=2)
```
"""

import os
import shutil
import sys
import warnings

import numpy as np
import tensorflow as tf

from kd_tf.distill import cache_shards as shards
from kd_tf.distill import cache_store as store
from kd_tf.distill.cache import TeacherCache
from kd_tf.distill.distiller import Distiller
from kd_tf.distill.sparse import (
    SAMPLE,
    SPARSE_IDS,
    TOP_K,
    SparseKLDistillation,
    check_mode,
    sparse_targets,
    stored_column,
    target_keys,
)
from kd_tf.distill.targets import LOGITS


def _sparse_loss_of(distiller):
    for term in distiller._objective.terms():
        if isinstance(term.source, SparseKLDistillation):
            return term.source
    return None


class SparseTeacherCache(TeacherCache):
    """Sparse teacher targets computed once over a dataset of token windows, stored in resumable shards.

    Args:
        directory: Folder holding the caches (one subfolder per key).
        teacher: A teacher `keras.Model` (a KerasHub `CausalLM`), or a `kd_tf.Distiller` with one teacher:
            then `k`, `mode`, `temperature`, `seed` and `samples` default to its `SparseKLDistillation`'s.
        k: Tokens kept per position. Defaults to 64 (260 bytes per token with a vocabulary up to 65,536).
        mode: `"top_k"` (ids + log-probabilities + tail mass) or `"sample"` (k draws from the teacher).
        temperature: Temperature of the stored distribution; the loss uses the same. Defaults to 1.0.
        seed: Seed of the draws (`mode="sample"` or `samples > 0`): the same seed gives the same cache,
            resumed or not; part of the key only where there are draws.
        samples: With `"top_k"`, tokens drawn from the teacher's tail beyond the k ids (0: the tail is one
            bucket). Each costs 4 bytes per token.
        teacher_id: A string identifying the teacher instead of hashing its weights.
        logits_key: Key of the logits when the teacher returns a dict.
        batch_size: Windows per teacher forward pass.
        shard_size: Windows per shard (the work a kill can lose).
        progress: Show a tqdm progress bar while computing.

    Raises:
        ValueError: For an unknown mode, `k < 1`, a distiller with several teachers, or settings that
            contradict the distiller's sparse loss.

    Example:
    ```python
    cache = SparseTeacherCache("/tmp/lm_cache", teacher, k=16)
    key = cache.build(windows, dataset_id="imdb-train-128")
    cache.bytes_per_token(key)   # ~68
    ```
    """

    def __init__(
        self,
        directory,
        teacher,
        *,
        k=None,
        mode=None,
        temperature=None,
        seed=None,
        samples=None,
        teacher_id=None,
        logits_key=LOGITS,
        batch_size=8,
        shard_size=256,
        progress=True,
    ):
        settings = dict(k=k, mode=mode, temperature=temperature, seed=seed, samples=samples)
        if isinstance(teacher, Distiller):
            if len(teacher.teachers) > 1:
                raise ValueError(
                    "SparseTeacherCache stores one teacher's distribution; this distiller has "
                    f"{len(teacher.teachers)} teachers. Use TeacherCache, or cache one teacher."
                )
            loss = _sparse_loss_of(teacher)
            if loss is not None:
                for name, value in settings.items():
                    own = getattr(loss, name)
                    if value is not None and value != own:
                        raise ValueError(
                            f"{name}={value!r} contradicts the distiller's {loss.name} ({name}={own!r}); "
                            "set it in one place."
                        )
                    settings[name] = own
        super().__init__(
            directory,
            teacher,
            teacher_id=teacher_id,
            logits_key=logits_key,
            batch_size=batch_size,
            progress=progress,
        )
        self.mode, self.k, self.samples = check_mode(
            settings["mode"] or TOP_K,
            64 if settings["k"] is None else settings["k"],
            settings["samples"] or 0,
        )
        self.temperature = 1.0 if settings["temperature"] is None else float(settings["temperature"])
        self.seed = 0 if settings["seed"] is None else int(settings["seed"])
        self.shard_size = int(shard_size)
        if self.shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, not {shard_size}.")
        self.outputs = list(target_keys(self.mode))
        self.vocabulary_size = None
        self.last_build = None
        self._dense_forward = self._forward
        self._draws = tf.Variable(0, dtype=tf.int64, trainable=False, name="sparse_cache_draws")
        self._forward_fn = tf.function(self._sparse_forward, reduce_retracing=True)

    def loss(self):
        """The `SparseKLDistillation` that reads this cache's targets (same k, mode and temperature).

        Example:
        ```python
        distiller.compile(optimizer="adam", distillation_loss_fn=cache.loss(), alpha=0.0)
        ```
        """
        return SparseKLDistillation(
            k=self.k, mode=self.mode, temperature=self.temperature, seed=self.seed, samples=self.samples
        )

    def _outputs_description(self):
        drawn = self.mode == SAMPLE or self.samples
        seed = f"|samples {self.samples}|seed {self.seed}|batch {self.batch_size}" if drawn else ""
        return (
            f"sparse {self.mode}|k {self.k}|T {self.temperature!r}{seed}|shards {self.shard_size}|"
            f"{self.logits_key}"
        )

    def _sparse_forward(self, x):
        logits = self._dense_forward(x)[LOGITS]
        self.vocabulary_size = int(logits.shape[-1])
        batch = tf.cast(tf.shape(logits)[0], tf.int64)
        seed = tf.stack([tf.constant(self.seed, tf.int64), self._draws.assign_add(batch) - batch])
        return sparse_targets(logits, self.k, self.mode, self.temperature, seed=seed, samples=self.samples)

    def teacher_targets(self, x):
        """Sparse targets of one batch from the live teacher, in the cache's stored dtypes (what
        `attach` yields for a cached batch): for batches made on the fly, such as on-policy ones.

        Args:
            x: A batch of inputs (`{"token_ids", "padding_mask"}`).

        Returns:
            Dict of numpy arrays (`sparse_ids`, `sparse_log_probs`, and `sparse_tail` for top-k).

        Example:
        ```python
        targets = cache.teacher_targets(x)    # {"sparse_ids": uint16 [B, L, k], ...}
        ```
        """
        return self._stored(self._forward_fn(x))

    def _stored(self, columns):
        """Columns (arrays, or ragged `(values, lengths, axis)`) in the stored dtypes."""
        out = {}
        for name, column in columns.items():
            if isinstance(column, tuple):
                values, lengths, axis = column
                out[name] = (stored_column(name, values, self.vocabulary_size), lengths, axis)
            else:
                out[name] = stored_column(name, column, self.vocabulary_size)
        return out

    def _column(self, name, parts, lengths):
        """Every sparse output is per token: rows at each example's length when lengths vary."""
        if lengths is None:
            return np.concatenate(parts, axis=0)
        rows = [row[:n] for part, ns in zip(parts, lengths) for row, n in zip(part, ns)]
        return np.concatenate(rows, axis=0), np.concatenate(lengths).astype(np.int64), 1

    # ---------------------------------------------------------------- building
    def _count(self, dataset):
        count = int(dataset.cardinality())
        if count < 0:
            count = int(dataset.reduce(np.int64(0), lambda n, _: n + 1))
        return count

    def build(self, dataset, dataset_id=None):
        """Runs the teacher over `dataset`, shard by shard, unless an intact cache exists; returns its key.

        Finished shards of an interrupted build (same key) are checked (sizes, SHA-256) and reused; a
        damaged shard of a finished cache is recomputed alone, with a warning naming its file.

        Args:
            dataset: Unbatched, deterministic dataset of windows (`kd_tf.lm.lm_windows`), `x`, `(x, y)` or
                `(x, y, w)` elements.
            dataset_id: Optional name of the dataset's content, instead of hashing it.

        Returns:
            The cache key. `last_build` then says how many shards were reused and computed.

        Raises:
            ValueError: If the teacher's outputs are not finite (nothing is stored).

        Example:
        ```python
        key = cache.build(windows)
        cache.last_build   # {"key": ..., "shards": 4, "reused_shards": 3, "computed_shards": 1}
        ```
        """
        key = self.key(dataset, dataset_id)
        os.makedirs(self.directory, exist_ok=True)
        work = os.path.join(self.directory, f".{key}.shards")

        def waiting():
            print(f"Waiting for another process building teacher cache {key} ...", file=sys.stderr)

        with store.build_lock(self.directory, key, on_wait=waiting):
            if store.read_meta(self.path(key)) is not None:
                try:
                    self.verify(key)
                    self.last_build = dict(key=key, shards=None, reused_shards=None, computed_shards=0)
                    return key
                except store.CacheDamaged as damage:
                    warnings.warn(f"{damage} Recomputing its shard of teacher cache {key}.", stacklevel=2)
                    shutil.rmtree(work, ignore_errors=True)
                    os.replace(self.path(key), work)
                    os.remove(os.path.join(work, store.META))
            os.makedirs(work, exist_ok=True)
            self.last_build = self._build_shards(dataset, key, dataset_id, work)
            os.replace(work, self.path(key))
        return key

    def _build_shards(self, dataset, key, dataset_id, work):
        count = self._count(dataset)
        bar = None
        if self.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=count, desc="sparse teacher targets", unit="window")
        written, reused = [], 0
        try:
            for index, start in enumerate(range(0, count, self.shard_size)):
                size = min(self.shard_size, count - start)
                name = f"shard-{index:05d}"
                meta = shards.intact_shard(os.path.join(work, name), key, size)
                if meta is not None:
                    reused += 1
                    if bar is not None:
                        bar.update(size)
                else:
                    self._draws.assign(start)
                    columns = self._stored(self._compute(dataset.skip(start).take(size), bar=bar))
                    extra = dict(key=key, shard=index, start=start, vocabulary_size=self.vocabulary_size)
                    meta = shards.write_shard(work, name, columns, extra)
                written.append((name, meta))
        finally:
            if bar is not None:
                bar.close()
        meta = dict(teacher_id=self.teacher_id, dataset_id=dataset_id, key=key, outputs=self.outputs)
        meta.update(
            mode=self.mode, k=self.k, samples=self.samples, temperature=self.temperature, seed=self.seed
        )
        vocabulary = next((m.get("vocabulary_size") for _, m in written), self.vocabulary_size)
        meta.update(vocabulary_size=vocabulary, logits_key=self.logits_key)
        shards.write_meta(work, written, meta)
        return dict(key=key, shards=len(written), reused_shards=reused, computed_shards=len(written) - reused)

    # ---------------------------------------------------------------- reading
    def _open_columns(self, folder, meta):
        return shards.open_columns(folder, meta)

    def bytes_per_token(self, key):
        """Bytes of the stored targets per stored token position (padding included), from the files.

        Example:
        ```python
        cache.bytes_per_token(key)   # 260.0 for k=64 top-k targets
        ```
        """
        meta = store.read_meta(self.path(key))
        if meta is None:
            raise FileNotFoundError(f"No complete teacher cache {key!r} in {self.directory}.")
        data = sum(
            np.load(os.path.join(self.path(key), part["files"]["values"]), mmap_mode="r").nbytes
            for column in meta["columns"].values()
            for part in column["shards"]
        )
        ids = self.load(key)[SPARSE_IDS]
        positions = len(ids.values) if isinstance(ids, store.RaggedColumn) else int(np.prod(ids.shape[:-1]))
        return data / max(positions, 1)


__all__ = ["SparseTeacherCache"]
