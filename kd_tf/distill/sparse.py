"""Sparse teacher targets: a few hundred bytes per token instead of a whole distribution, and the loss
that distils from them.

A causal LM's teacher distribution over 49,152 tokens costs 196 KB per token in float32. Two sparse forms
keep what distillation needs, per token:

* **top-k + tail bucket** (`mode="top_k"`): the ids of the teacher's k most likely tokens, their
  log-probabilities and the tail mass `1 - sum_j p_t(j)` left outside them. The loss is the exact KL
  divergence between the teacher and the student *coarsened* to k + 1 outcomes (the k ids and one bucket
  for everything else):

      sum_{j in top-k} p_t(j) log(p_t(j) / p_s(j)) + p_t(tail) log(p_t(tail) / p_s(tail))

  where `p_s(tail)` is the student's mass outside the k ids. Unlike plain top-k renormalised to sum 1
  (which Sparse Logit Sampling, Anshumann et al., ACL 2025, shows biases the student towards
  over-confidence), the student is still told how much mass the teacher leaves to the tail; what is lost
  is only how the teacher spreads it there. With k = vocabulary size it is the dense KL exactly.
* **top-k + sampled tail** (`mode="top_k"`, `samples=m`): the top-k ids exactly, and instead of the
  bucket, m tokens drawn from the teacher's tail (its distribution outside the k ids, renormalised). The
  loss

      sum_{j in top-k} p_t(j) log(p_t(j) / p_s(j)) + p_t(tail) * mean_n (log p_t(x_n) - log p_s(x_n))

  is an unbiased estimate of the full `KL(p_t || p_s)` (exact on the head, Monte-Carlo on the tail), and so
  is its gradient: the student learns the shape of the tail too, which the bucket cannot tell it.
* **sampled tokens** (`mode="sample"`): k tokens drawn from the teacher's softened distribution (with
  repetition) and their log-probabilities; the loss `mean_n (log p_t(x_n) - log p_s(x_n))` is an unbiased
  Monte-Carlo estimate of `KL(p_t || p_s)` and its gradient an unbiased estimate of the dense KL's
  (Random-Sampling KD of Sparse Logit Sampling, with the teacher as the proposal).

All are computed from the teacher's logits in-graph by `sparse_targets` (so the dense logits never leave
the forward pass) and stored small by `kd_tf.distill.SparseTeacherCache` (`storage_targets`: ids as uint16
when the vocabulary fits, log-probabilities as float16, the tail mass as float32): k = 64 costs
64 x (2 + 2) + 4 = 260 bytes per token, as do k = 16 with 48 tail samples.

Example:
```python
loss = SparseKLDistillation(k=16, samples=48)      # what to keep, at which temperature
targets = loss.targets(teacher_logits)             # {"sparse_ids", "sparse_log_probs", "sparse_tail"}
values = loss.per_token(targets, student_logits)   # [B, T]
```
"""

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from kd_tf.distill.distributions import reduce_tokens, softened_log_probs, to_float32
from kd_tf.distill.targets import LOGITS

SPARSE_IDS = "sparse_ids"
SPARSE_LOG_PROBS = "sparse_log_probs"
SPARSE_TAIL = "sparse_tail"
TOP_K, SAMPLE = "top_k", "sample"
MODES = (TOP_K, SAMPLE)
_FLOAT16_FLOOR = -6.0e4  # log-probabilities below this (probability 0 for any purpose) are clipped
_OUTSIDE = -1e30  # a finite "minus infinity": no NaN gradient through a log-sum-exp of nothing


def check_mode(mode, k, samples=0):
    """`(mode, k, samples)` checked.

    Raises:
        ValueError: For an unknown mode, `k < 1`, `samples < 0`, or tail samples with `mode="sample"`.

    Example:
    ```python
    check_mode("top_k", 16, samples=48)  # ('top_k', 16, 48)
    ```
    """
    if mode not in MODES:
        raise ValueError(
            f"mode must be one of {MODES} (top-k ids + tail mass, or sampled tokens), not {mode!r}."
        )
    if int(k) < 1:
        raise ValueError(f"k (tokens kept per position) must be >= 1, not {k}.")
    if int(samples) < 0 or (mode == SAMPLE and int(samples)):
        raise ValueError(
            f"samples (tokens drawn from the tail beyond the top k) must be >= 0 and only with mode='top_k', "
            f"not {samples} with mode={mode!r}; mode='sample' draws k tokens from the whole distribution."
        )
    return mode, int(k), int(samples)


def target_keys(mode):
    """The keys of the sparse targets of `mode`.

    Example:
    ```python
    target_keys("sample")  # ('sparse_ids', 'sparse_log_probs')
    ```
    """
    return (SPARSE_IDS, SPARSE_LOG_PROBS, SPARSE_TAIL) if mode == TOP_K else (SPARSE_IDS, SPARSE_LOG_PROBS)


def _draw(log_p, count, seed):
    """`count` ids drawn from `softmax(log_p)` per position (`[..., V]` -> `[..., count]` int32)."""
    rows = tf.reshape(log_p, [-1, tf.shape(log_p)[-1]])
    if isinstance(seed, keras.random.SeedGenerator) or seed is None or isinstance(seed, int):
        draws = tf.cast(keras.random.categorical(rows, count, seed=seed), tf.int32)
    else:
        draws = tf.random.stateless_categorical(rows, count, seed=tf.cast(seed, tf.int64), dtype=tf.int32)
    return tf.reshape(draws, tf.concat([tf.shape(log_p)[:-1], [count]], 0))


def _gather(log_p, ids):
    return tf.gather(log_p, ids, batch_dims=len(log_p.shape) - 1)


def sparse_targets(logits, k, mode=TOP_K, temperature=1.0, seed=None, samples=0):
    """The sparse form of the teacher's softened distribution, computed from its logits.

    Args:
        logits: Teacher logits `[..., V]` (e.g. `[B, T, V]`).
        k: Tokens kept per position (`top_k`: the k most likely; `sample`: k draws).
        mode: `"top_k"` or `"sample"` (see the module docstring).
        temperature: Softmax temperature of the teacher's distribution.
        seed: For draws: a shape-[2] integer tensor or tuple (stateless draws: the same seed gives the
            same tokens), a `keras.random.SeedGenerator`, or None (a fresh draw every call).
        samples: With `top_k`, tokens drawn from the tail (outside the k ids) after them.

    Returns:
        Dict of float32/int32 tensors: `sparse_ids` `[..., k + samples]`, `sparse_log_probs` (the
        teacher's log-probabilities of those ids), and for `top_k` `sparse_tail` `[...]` (the probability
        outside the k ids, >= 0).

    Raises:
        ValueError: For an unknown mode, `k < 1`, `k` larger than the vocabulary in `top_k` mode, or tail
            samples with `mode="sample"`.

    Example:
    ```python
    sparse_targets(tf.math.log([[0.5, 0.3, 0.2]]), k=2)  # ids [[0, 1]], tail [0.2]
    ```
    """
    mode, k, samples = check_mode(mode, k, samples)
    log_p = softened_log_probs(logits, temperature)
    vocabulary = log_p.shape[-1]
    if mode == SAMPLE:
        ids = _draw(log_p, k, seed)
        return {SPARSE_IDS: ids, SPARSE_LOG_PROBS: _gather(log_p, ids)}
    if vocabulary is not None and k > vocabulary:
        raise ValueError(f"k={k} is larger than the vocabulary ({vocabulary} tokens); use k <= {vocabulary}.")
    values, ids = tf.math.top_k(log_p, k=k, sorted=True)
    kept = tf.reduce_sum(tf.exp(tf.cast(values, tf.float64)), axis=-1)
    tail = tf.cast(tf.clip_by_value(1.0 - kept, 0.0, 1.0), tf.float32)
    if k == vocabulary:  # nothing is left outside: no rounding residue either
        tail = tf.zeros_like(tail)
    if samples:
        outside = tf.where(_kept_mask(log_p, ids) > 0, _OUTSIDE, log_p)
        drawn = _draw(outside, samples, seed)
        ids, values = tf.concat([ids, drawn], -1), tf.concat([values, _gather(log_p, drawn)], -1)
    return {SPARSE_IDS: ids, SPARSE_LOG_PROBS: values, SPARSE_TAIL: tail}


def ids_dtype(vocabulary_size):
    """The smallest id dtype for a vocabulary: uint16 up to 65,536 tokens, else int32.

    Example:
    ```python
    ids_dtype(49152)  # 'uint16'
    ```
    """
    return "uint16" if int(vocabulary_size) <= 65536 else "int32"


def stored_column(name, value, vocabulary_size):
    """One sparse target in its stored dtype: ids uint16 (int32 past 65,536 tokens), log-probabilities
    float16 (clipped at -60,000, a probability of 0 for any purpose), the tail mass float32.

    Example:
    ```python
    stored_column("sparse_ids", [[3, 1]], 49152).dtype  # uint16
    ```
    """
    if name == SPARSE_IDS:
        return np.asarray(value).astype(ids_dtype(vocabulary_size))
    if name == SPARSE_LOG_PROBS:
        return np.maximum(np.asarray(value, np.float32), _FLOAT16_FLOOR).astype(np.float16)
    return np.asarray(value, np.float32)


def storage_targets(targets, vocabulary_size):
    """Sparse targets in their stored dtypes (see `stored_column`).

    Args:
        targets: Dict from `sparse_targets` (tensors or arrays).
        vocabulary_size: The teacher's vocabulary size (decides the id dtype).

    Returns:
        Dict of numpy arrays.

    Example:
    ```python
    stored = storage_targets(sparse_targets(logits, 64), 49152)   # 260 bytes per token
    ```
    """
    return {name: stored_column(name, value, vocabulary_size) for name, value in targets.items()}


def bytes_per_token(k, mode=TOP_K, vocabulary_size=49152, samples=0):
    """Bytes one position costs in a sparse cache.

    Example:
    ```python
    bytes_per_token(64)  # 64 * (2 + 2) + 4 = 260
    ```
    """
    mode, k, samples = check_mode(mode, k, samples)
    per_id = np.dtype(ids_dtype(vocabulary_size)).itemsize + 2
    return (k + samples) * per_id + (4 if mode == TOP_K else 0)


def _kept_mask(log_p, ids):
    """1.0 where the id is one of `ids` (`[..., k]`), 0.0 elsewhere, shaped like `log_p` `[..., V]`."""
    rows = tf.reshape(log_p, [-1, tf.shape(log_p)[-1]])
    flat_ids = tf.reshape(ids, [tf.shape(rows)[0], -1])
    row_index = tf.broadcast_to(tf.range(tf.shape(rows)[0])[:, None], tf.shape(flat_ids))
    kept = tf.scatter_nd(
        tf.stack([row_index, flat_ids], axis=-1), tf.ones_like(flat_ids, tf.float32), tf.shape(rows)
    )
    return tf.reshape(kept, tf.shape(log_p))


def _outside_log_mass(log_p, ids):
    """`log sum_{j not in ids} p(j)` per position, from log-probabilities `[..., V]` and ids `[..., k]`."""
    return tf.reduce_logsumexp(tf.where(_kept_mask(log_p, ids) > 0, _OUTSIDE, log_p), axis=-1)


def sparse_kl_distillation(targets, student, temperature=1.0, mask=None, per_token=False, samples=0):
    """KL divergence of the student from sparse teacher targets, times T^2 (estimators in the module
    docstring).

    Args:
        targets: Dict with `sparse_ids`, `sparse_log_probs` (`[..., k + samples]`) and, for top-k targets,
            `sparse_tail` (`[...]`), in any dtype (stored uint16/float16 are cast).
        student: Student logits `[B, C]` or `[B, T, C]`.
        temperature: The temperature the targets were computed at; the student is softened by it too.
        mask: Optional `[B, T]` padding mask for per-token logits.
        per_token: Return `[B, T]` values instead of the masked mean over tokens.
        samples: How many of the last ids of top-k targets were drawn from the tail.

    Returns:
        Float32 tensor `[B]` (or `[B, T]`).

    Example:
    ```python
    sparse_kl_distillation(sparse_targets(t, k=t.shape[-1]), s)  # == kl_distillation(t, s)
    ```
    """
    ids = tf.cast(targets[SPARSE_IDS], tf.int32)
    t_log = to_float32(targets[SPARSE_LOG_PROBS])
    log_p_s = softened_log_probs(student, temperature)
    s_log = _gather(log_p_s, ids)
    if SPARSE_TAIL not in targets:  # sampled tokens
        values = ops.mean(t_log - s_log, axis=-1)
        return reduce_tokens(values, mask, per_token) * ops.cast(temperature, "float32") ** 2
    head = ids.shape[-1] - samples
    tail = to_float32(targets[SPARSE_TAIL])
    total = ops.sum(ops.exp(t_log[..., :head]), axis=-1) + tail  # 1 up to float16 rounding: renormalise
    t_log = t_log - ops.log(total)[..., None]
    tail = tail / total
    kept = ops.sum(ops.exp(t_log[..., :head]) * (t_log[..., :head] - s_log[..., :head]), axis=-1)
    if samples:  # the tail's KL estimated from draws of the teacher's tail
        tail_term = tail * ops.mean(t_log[..., head:] - s_log[..., head:], axis=-1)
    else:  # one bucket for the tail
        s_tail = _outside_log_mass(log_p_s, ids)
        has_tail = (tail > 0) & (s_tail > 0.5 * _OUTSIDE)  # no bucket when the k ids are everything
        tail_term = ops.where(has_tail, tail * (ops.log(ops.maximum(tail, 1e-30)) - s_tail), 0.0)
    return reduce_tokens(kept + tail_term, mask, per_token) * ops.cast(temperature, "float32") ** 2


@keras.saving.register_keras_serializable(package="kd_tf")
class SparseKLDistillation(keras.losses.Loss):
    """KL distillation from sparse teacher targets: top-k ids + tail bucket, or sampled tokens.

    Used with `kd_tf.Distiller` (`compile(distillation_loss_fn=SparseKLDistillation(k=64))`) it reads the
    sparse targets a batch carries (`kd_tf.distill.SparseTeacherCache.attach`); a batch without them has
    its teacher run live and its logits made sparse the same way, so cached and live training minimise the
    same estimator. The temperature is the loss's own, fixed (cached targets were computed at it): the
    distiller's temperature is set to it, and a schedule or `compile(temperature=...)` that differs is
    refused.

    Args:
        k: Tokens kept per position.
        mode: `"top_k"` (default) or `"sample"`.
        temperature: Softmax temperature of teacher and student. Defaults to 1.0.
        seed: Seed of the draws of targets made from live logits.
        samples: With `"top_k"`, tokens drawn from the teacher's tail beyond the k ids (0: one bucket).
        reduction: Keras reduction when called alone.
        name: Loss name.

    Raises:
        ValueError: For an unknown mode, `k < 1` or a non-positive temperature.

    Example:
    ```python
    distiller = kd_tf.Distiller(student)                # no live teacher: targets come cached
    distiller.compile(optimizer="adam", distillation_loss_fn=SparseKLDistillation(k=64), alpha=0.0)
    distiller.fit(SparseTeacherCache(cache_dir, teacher, k=64).attach(windows).batch(8))
    ```
    """

    def __init__(
        self,
        k=64,
        mode=TOP_K,
        temperature=1.0,
        seed=None,
        samples=0,
        reduction="sum_over_batch_size",
        name=None,
    ):
        super().__init__(name=name or "sparse_kl_distillation", reduction=reduction, dtype="float32")
        self.mode, self.k, self.samples = check_mode(mode, k, samples)
        if not float(temperature) > 0:
            raise ValueError(f"temperature must be positive, got {temperature}.")
        self.temperature = float(temperature)
        self.seed = seed
        drawn = mode == SAMPLE or self.samples
        self._seed_generator = keras.random.SeedGenerator(seed) if drawn else None

    def target_keys(self):
        """The keys of the targets this loss reads (what a sparse cache stores)."""
        return target_keys(self.mode)

    def targets(self, logits, seed=None):
        """Sparse targets of teacher `logits` (see `sparse_targets`; `seed` defaults to the loss's draws)."""
        seed = self._seed_generator if seed is None else seed
        return sparse_targets(logits, self.k, self.mode, self.temperature, seed, self.samples)

    def per_token(self, teacher, student):
        """One value per distribution (`[B]` or `[B, T]`).

        Args:
            teacher: Dict of sparse targets, or dense teacher logits (a tensor, or a dict with `logits`),
                made sparse here.
            student: Student logits.

        Returns:
            Float32 tensor `[B]` or `[B, T]`.

        Raises:
            ValueError: For a dict holding neither this loss's sparse targets nor `logits`.

        Example:
        ```python
        SparseKLDistillation(k=16, samples=48).per_token({"logits": t_logits}, s_logits)   # [B, T]
        ```
        """
        if not isinstance(teacher, dict):  # dense teacher logits
            teacher = self.targets(teacher)
        elif not all(key in teacher for key in self.target_keys()):
            if LOGITS not in teacher:
                raise ValueError(
                    f"{self.name} needs sparse targets {list(self.target_keys())} or dense teacher "
                    f"'{LOGITS}'; got {sorted(teacher)}. Attach a SparseTeacherCache built with k={self.k}, "
                    f"mode={self.mode!r}, samples={self.samples} (cache.loss() gives this loss), or run the "
                    "teacher live."
                )
            teacher = self.targets(teacher[LOGITS])
        return sparse_kl_distillation(
            teacher, student, self.temperature, per_token=True, samples=self.samples
        )

    def call(self, y_true, y_pred):
        return self.per_token(y_true, y_pred)

    def get_config(self):
        config = super().get_config()
        config.update(
            k=self.k, mode=self.mode, temperature=self.temperature, seed=self.seed, samples=self.samples
        )
        config.pop("dtype", None)
        return config


__all__ = [
    "MODES",
    "SAMPLE",
    "SPARSE_IDS",
    "SPARSE_LOG_PROBS",
    "SPARSE_TAIL",
    "SparseKLDistillation",
    "TOP_K",
    "bytes_per_token",
    "check_mode",
    "ids_dtype",
    "sparse_kl_distillation",
    "sparse_targets",
    "storage_targets",
    "stored_column",
    "target_keys",
]
