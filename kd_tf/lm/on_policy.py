"""On-policy distillation (GKD, MiniLLM): the student learns on text it generated itself.

Off-policy distillation trains the student on the corpus's tokens; at generation time, though, the student
reads its own earlier tokens, and its mistakes compound. GKD (Agarwal et al., 2024) and MiniLLM (Gu et al.,
2024) let the student generate continuations, have the teacher score every generated token, and distil
on those tokens. `OnPolicyBatches` does this as a *data source* for the one `kd_tf.Distiller`: it passes
the batches of a token-window dataset through and replaces a chosen share of them (`ratio`, GKD's lambda)
by on-policy batches:

1. the prompts are the first `prompt_length` real tokens of each window of the batch;
2. the student continues each prompt to the window's length plus one token, greedily or sampled (KerasHub's
   `generate_step` with its KV cache, compiled once; XLA only with a GPU/TPU, see
   `kd_tf.distill.resolve_jit_compile`);
3. the new batch is `({"token_ids": generated[:, :L], "padding_mask": all true}, generated[:, 1:],
   sample_weight)` with weight 0 on the labels that are prompt tokens and 1 on the generated ones: the loss
   is masked to the continuation;
4. the teacher scores it: live in the distiller when the batches carry no teacher outputs (the distiller
   has a teacher), or here, through `teacher_targets` (e.g. `SparseTeacherCache.teacher_targets`) when the
   off-policy batches carry cached targets, so both kinds of batch have one structure and one train step.

Generation uses the student's weights at the moment the batch is drawn (the source is not prefetched), and
is timed: `stats` and the `OnPolicyLog` callback report the share of wall time spent generating.

Example:
```python
source = OnPolicyBatches(make_lm_dataset(train, teacher, 128, batch_size=8), student, ratio=0.25)
distiller = kd_tf.Distiller(student, teacher)           # the teacher scores on-policy batches live
distiller.compile(optimizer="adam", distillation_loss_fn="reverse_kl", alpha=0.0, temperature=1.0)
history = distiller.fit(source.dataset(), epochs=2, callbacks=[OnPolicyLog(source)])
history.history["generation_share"]
```
"""

import contextlib
import math
import time

import keras
import keras_hub
import numpy as np
import tensorflow as tf

from kd_tf.distill import resolve_jit_compile
from kd_tf.distill.targets import LABELS, TEACHER_OUTPUTS
from kd_tf.lm.windows import PADDING_MASK, TOKEN_IDS

__all__ = ["OnPolicyBatches", "OnPolicyLog"]

SCHEDULES = ("spread", "random")


@contextlib.contextmanager
def _sampler(model, sampler):
    saved = model.sampler
    model.sampler = sampler
    try:
        yield
    finally:
        model.sampler = saved


class OnPolicyBatches:
    """A token-window dataset with a share of its batches replaced by student-generated ones.

    Args:
        batches: A finite, batched `tf.data.Dataset` of `(x, labels, sample_weight)` windows
            (`kd_tf.lm.make_lm_dataset`) or of `(x, targets, sample_weight)` carrying cached teacher
            outputs (`SparseTeacherCache.attach(...).batch(...)`).
        student: The KerasHub `CausalLM` being distilled (it generates with its current weights).
        ratio: Share of batches made on-policy, in [0, 1] (GKD's lambda).
        prompt_length: Real tokens of each window kept as the prompt; the rest is generated. Defaults to
            half the window.
        sampler: `"greedy"`, a KerasHub sampler name (`"random"`, `"top_k"`, ...) or a
            `keras_hub.samplers.Sampler` (seed it for reproducible draws).
        schedule: `"spread"`: exactly `floor(n * ratio)` of the first n batches, evenly spread;
            `"random"`: each batch independently with probability `ratio` (seeded).
        teacher_targets: A function `x -> dict of teacher outputs` for on-policy batches when `batches`
            carry cached teacher outputs (e.g. `SparseTeacherCache.teacher_targets`); not needed otherwise.
        seed: Seed of the `"random"` schedule.
        jit_compile: XLA for generation: True, False or `"auto"` (accelerators only).

    Raises:
        ValueError: For a ratio outside [0, 1], an unknown schedule, a prompt length outside
            `1..length - 1`, or cached teacher outputs without `teacher_targets`.

    Example:
    ```python
    source = OnPolicyBatches(cache.attach(windows).batch(8), student, ratio=0.5,
                             teacher_targets=cache.teacher_targets)
    distiller.fit(source.dataset(), callbacks=[OnPolicyLog(source)])
    ```
    """

    def __init__(
        self,
        batches,
        student,
        ratio=0.5,
        prompt_length=None,
        sampler="greedy",
        schedule="spread",
        teacher_targets=None,
        seed=0,
        jit_compile="auto",
    ):
        if not 0.0 <= float(ratio) <= 1.0:
            raise ValueError(f"ratio (the share of on-policy batches) must be in [0, 1], not {ratio}.")
        if schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, not {schedule!r}.")
        x_spec, y_spec, w_spec = _element_parts(batches.element_spec)
        self.length = x_spec[TOKEN_IDS].shape[-1]
        if self.length is None:
            raise ValueError("OnPolicyBatches needs windows of a fixed length (make_lm_dataset's).")
        self.prompt_length = self.length // 2 if prompt_length is None else int(prompt_length)
        if not 1 <= self.prompt_length < self.length:
            raise ValueError(
                f"prompt_length must be in 1..{self.length - 1} (the windows hold {self.length} tokens), "
                f"not {prompt_length}."
            )
        self.carries_targets = isinstance(y_spec, dict) and TEACHER_OUTPUTS in y_spec
        if self.carries_targets and teacher_targets is None:
            raise ValueError(
                "The batches carry cached teacher outputs, so on-policy batches need them too: pass "
                "teacher_targets=cache.teacher_targets (the live teacher, in the cache's format)."
            )
        self.batches, self.student, self.ratio = batches, student, float(ratio)
        self.schedule, self.seed = schedule, seed
        self.teacher_targets = teacher_targets
        self.sampler = keras_hub.samplers.get(sampler) if isinstance(sampler, str) else sampler
        self._generate = tf.function(
            student.generate_step,
            jit_compile=resolve_jit_compile(jit_compile),
            input_signature=[
                {
                    TOKEN_IDS: tf.TensorSpec([None, None], tf.int32),
                    PADDING_MASK: tf.TensorSpec([None, None], tf.bool),
                }
            ],
        )
        self._spec = batches.element_spec
        self._rng = np.random.default_rng(seed)  # the "random" schedule's draws, continued epoch after epoch
        self.stats = dict(on_policy_batches=0, off_policy_batches=0, generate_s=0.0, teacher_s=0.0)

    # ---------------------------------------------------------------- which batches
    def is_on_policy(self, index, rng=None):
        """Whether batch `index` (counting from 0 over the whole run) is made on-policy.

        Example:
        ```python
        [OnPolicyBatches(..., ratio=0.25).is_on_policy(i) for i in range(4)]   # [False, False, False, True]
        ```
        """
        if self.schedule == "random":
            return bool(rng.random() < self.ratio)
        return math.floor((index + 1) * self.ratio) > math.floor(index * self.ratio)

    # ---------------------------------------------------------------- one batch
    def generate(self, x):
        """The student's continuations of the prompts of one batch.

        Args:
            x: A batch's inputs (`{"token_ids", "padding_mask"}`, `[B, L]`).

        Returns:
            `(tokens [B, L + 1] int32, prompt_lengths [B])`: each row starts with its prompt (its first
            `prompt_length` real tokens, fewer if the window has fewer) and continues with generated tokens.

        Example:
        ```python
        tokens, prompts = source.generate(x)
        ```
        """
        ids = np.asarray(x[TOKEN_IDS], np.int32)
        real = np.asarray(x[PADDING_MASK], bool)
        prompts = np.minimum(real.sum(axis=1), self.prompt_length)
        width = self.length + 1
        token_ids = np.zeros((len(ids), width), np.int32)
        mask = np.arange(width)[None, :] < prompts[:, None]
        token_ids[:, : self.length] = np.where(mask[:, : self.length], ids, 0)
        with _sampler(self.student, self.sampler):
            out = self._generate({TOKEN_IDS: tf.constant(token_ids), PADDING_MASK: tf.constant(mask)})
        return np.asarray(out[TOKEN_IDS], np.int32), prompts

    def on_policy(self, element):
        """The on-policy version of one batch: its prompts, the student's continuations, the loss masked
        to them (and the teacher's targets, when the batches carry them).

        Example:
        ```python
        x, labels, weights = source.on_policy(next(iter(batches)))
        ```
        """
        x, y, w = element
        start = time.perf_counter()
        tokens, prompts = self.generate(x)
        self.stats["generate_s"] += time.perf_counter() - start
        new_x = {TOKEN_IDS: tokens[:, :-1], PADDING_MASK: np.ones_like(tokens[:, :-1], bool)}
        labels = tokens[:, 1:]
        weights = (np.arange(self.length)[None, :] >= prompts[:, None] - 1).astype(np.float32)
        if self.carries_targets:
            start = time.perf_counter()
            outputs = {k: np.asarray(v) for k, v in self.teacher_targets(new_x).items()}
            self.stats["teacher_s"] += time.perf_counter() - start
            y = {TEACHER_OUTPUTS: outputs, **({LABELS: labels} if LABELS in y else {})}
        else:
            y = labels
        return _cast_like((new_x, y, weights), self._spec)

    # ---------------------------------------------------------------- the dataset
    def _elements(self):
        rng = self._rng
        index = self.stats["on_policy_batches"] + self.stats["off_policy_batches"]
        for element in self.batches:
            element = tuple(element) if isinstance(element, tuple) else (element,)
            x, y, w = (element + (None, None))[:3]
            if self.is_on_policy(index, rng):
                self.stats["on_policy_batches"] += 1
                yield self.on_policy((x, y, w))
            else:
                self.stats["off_policy_batches"] += 1
                yield tf.nest.map_structure(lambda t: t.numpy(), (x, y, w))
            index += 1

    def dataset(self):
        """The mixed batches as a `tf.data.Dataset` with the same element structure as `batches` (one
        train step serves both kinds), generated lazily with the current student, one epoch per pass.

        Example:
        ```python
        distiller.fit(source.dataset(), epochs=2)
        ```
        """
        dataset = tf.data.Dataset.from_generator(self._elements, output_signature=self._spec)
        cardinality = int(self.batches.cardinality())
        if cardinality >= 0:
            dataset = dataset.apply(tf.data.experimental.assert_cardinality(cardinality))
        return dataset


class OnPolicyLog(keras.callbacks.Callback):
    """Adds each epoch's on-policy numbers to the logs (and so to `History`): `on_policy_batches`,
    `generation_s` (seconds generating), `teacher_targets_s` (seconds scoring on-policy batches outside the
    distiller) and `generation_share` (generation over the epoch's wall time).

    Args:
        source: The `OnPolicyBatches` feeding `fit`.

    Example:
    ```python
    history = distiller.fit(source.dataset(), callbacks=[OnPolicyLog(source)])
    history.history["generation_share"]   # e.g. [0.41, 0.39]
    ```
    """

    def __init__(self, source):
        super().__init__()
        self.source = source

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()
        self._before = dict(self.source.stats)

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        wall = time.perf_counter() - self._start
        now, before = self.source.stats, self._before
        generation = now["generate_s"] - before["generate_s"]
        logs["on_policy_batches"] = now["on_policy_batches"] - before["on_policy_batches"]
        logs["generation_s"] = generation
        logs["teacher_targets_s"] = now["teacher_s"] - before["teacher_s"]
        logs["generation_share"] = generation / wall if wall > 0 else 0.0


def _element_parts(spec):
    parts = tuple(spec) if isinstance(spec, tuple) else (spec,)
    if len(parts) != 3 or not isinstance(parts[0], dict) or TOKEN_IDS not in parts[0]:
        raise ValueError(
            "OnPolicyBatches needs batches of ({'token_ids', 'padding_mask'}, labels or targets, "
            "sample_weight), as kd_tf.lm.make_lm_dataset makes them (or a cache's attach(...).batch(...))."
        )
    return parts


def _cast_like(element, spec):
    """numpy arrays in the dtypes of `spec` (the dataset's element spec)."""
    return tf.nest.map_structure(
        lambda value, s: np.asarray(value).astype(s.dtype.as_numpy_dtype), element, spec
    )
