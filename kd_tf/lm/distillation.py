"""Distil a causal LM student from a causal LM teacher over a corpus, token by token: one function.

`distill_causal_lm` is the recipe the pipeline step, the command line and the notebooks call. It is the
one `kd_tf.Distiller` (no second trainer) on the token windows of `kd_tf.lm.windows`:

* it refuses a student whose tokenizer differs from the teacher's (`check_tokenizers_match`);
* every loss is per token, weighted by the windows' `[B, L]` sample weights (padding and prompt tokens
  weigh 0; the pad id is a real token and is never used as a mask), averaged over the batch's positions
  as Keras's and KerasHub's own losses are (`kd_tf.distill.reduction`);
* the teacher's targets come from one of three sources (`targets=`):

  - `"sparse"` (default): a `kd_tf.distill.SparseTeacherCache` (top-k ids + tail mass, or sampled
    tokens; ~260 bytes per token at k = 64), built once and memory-mapped: the teacher is not in memory
    while the student trains (unless on-policy batches need it);
  - `"dense"`: a `kd_tf.distill.TeacherCache` of the full logits (vocabulary x 4 bytes per token: only
    for small vocabularies);
  - `"live"`: the teacher runs on every batch;
  - `"none"`: no teacher, next-token cross-entropy alone (`alpha` = 1): the baseline a distilled student
    is compared with.

* `on_policy_ratio > 0` replaces that share of batches by student-generated ones (`kd_tf.lm.on_policy`),
  and the history then logs the share of time spent generating.

Example:
```python
teacher = load_causal_lm(smollm2_preset_dir())
student = cut_student(teacher, blocks=[0, 3, 6, 9, 12, 15, 18, 21, 24, 29])
train, heldout = load_imdb_corpus(limit=2000).split(0.05, seed=0)
history = distill_causal_lm(teacher, student, train, epochs=2, cache_dir="~/.cache/kd_tf/lm_targets")
token_metrics({"student": student}, make_lm_dataset(heldout, teacher, 128))
```
"""

import os
import warnings

import keras
import tensorflow as tf

from kd_tf.distill import Distiller, SparseTeacherCache, TeacherCache
from kd_tf.distill import losses as kd_losses
from kd_tf.distill.targets import LOGITS
from kd_tf.lm.models import check_tokenizers_match
from kd_tf.lm.on_policy import OnPolicyBatches, OnPolicyLog
from kd_tf.lm.windows import lm_windows, make_lm_dataset
from kd_tf.paths import model_cache_dir

__all__ = ["TARGETS", "distill_causal_lm"]

TARGETS = ("sparse", "dense", "live", "none")
DEFAULT_LEARNING_RATE = 2e-4  # DESIGN.md's calibration run: lr 2e-4 with Adam on a cut SmolLM2 student


def _windows(train, teacher, sequence_length):
    if isinstance(train, tf.data.Dataset):
        if len(train.element_spec[0]["token_ids"].shape) != 1:
            raise ValueError("Pass unbatched windows (kd_tf.lm.lm_windows), or a TextCorpus.")
        return train
    return lm_windows(train, teacher, sequence_length)


def distill_causal_lm(
    teacher,
    student,
    train,
    *,
    sequence_length=128,
    batch_size=8,
    epochs=1,
    targets="sparse",
    cache_dir=None,
    k=64,
    mode="top_k",
    samples=0,
    loss="kl",
    temperature=1.0,
    alpha=0.0,
    optimizer=None,
    on_policy_ratio=0.0,
    prompt_length=None,
    sampler="greedy",
    validation=None,
    seed=0,
    callbacks=None,
    verbose="auto",
    teacher_id=None,
    dataset_id=None,
):
    """Distils `student` from `teacher` over `train` with `Distiller.fit()`; returns the history.

    The windows are packed in corpus order (so the cache is reused by any seed) and shuffled every epoch
    with `seed`; the student is trained in place.

    Args:
        teacher: The teacher KerasHub `CausalLM` (frozen).
        student: The student `CausalLM` with the teacher's tokenizer (`cut_student`, `build_student`).
        train: A `kd_tf.lm.TextCorpus`, or unbatched windows from `kd_tf.lm.lm_windows`.
        sequence_length: Tokens per window (for a corpus).
        batch_size: Windows per step.
        epochs: Passes over the windows.
        targets: `"sparse"`, `"dense"`, `"live"` or `"none"` (see the module docstring).
        cache_dir: Folder of the teacher caches. Defaults to `<kd_tf.paths.model_cache_dir()>/lm_targets`.
        k: Tokens kept per position by the sparse cache.
        mode: `"top_k"` (ids + tail mass) or `"sample"` (sampled tokens) for the sparse cache.
        samples: With `"top_k"`, tokens drawn from the teacher's tail beyond the k ids, which makes the
            sparse KL an unbiased estimate of the dense one (0: the tail is one bucket).
        loss: The logits loss for `"dense"`/`"live"` targets: `"kl"`, `"reverse_kl"`, `"jsd"`, or a
            `kd_tf.distill` loss (`GeneralizedJSDDistillation(beta=0.1)`); sparse targets use their KL.
        temperature: Softmax temperature of teacher and student.
        alpha: Weight of next-token cross-entropy on the corpus's labels; `1 - alpha` weighs distillation.
        optimizer: A Keras optimizer. Defaults to Adam at 2e-4.
        on_policy_ratio: Share of batches replaced by student-generated continuations (0: off-policy).
        prompt_length: Prompt tokens kept per window for on-policy batches (default: half the window).
        sampler: How the student generates: `"greedy"`, a KerasHub sampler name or instance.
        validation: Optional held-out `TextCorpus` (plain next-token loss, and the distillation loss when
            the teacher runs live).
        seed: Shuffling seed, the schedule of on-policy batches, and the draws of a sparse cache with
            `mode="sample"` or `samples > 0` (one cache per seed; top-k caches serve every seed).
        callbacks: More Keras callbacks.
        verbose: As in `fit`.
        teacher_id: A string naming the teacher for the cache key instead of hashing its weights.
        dataset_id: A string naming the windows for the cache key instead of hashing them.

    Returns:
        The `keras.callbacks.History` of `fit` (`history.model` is the `Distiller`); with on-policy
        batches it also holds `on_policy_batches`, `generation_s` and `generation_share` per epoch.

    Raises:
        ValueError: If the tokenizers differ (the message names the first differing tokens), `targets` is
            unknown, a loss other than KL is asked of sparse targets, or on-policy batches of no teacher.

    Example:
    ```python
    history = distill_causal_lm(teacher, student, train, targets="sparse", k=64, epochs=2)
    history.history["distillation_loss"]
    ```
    """
    if targets not in TARGETS:
        raise ValueError(f"targets must be one of {TARGETS}, not {targets!r}.")
    if targets == "sparse" and loss not in ("kl", "kl_distillation"):
        raise ValueError(
            f"Sparse cached targets distil with their KL estimator; loss={loss!r} needs the full "
            "distribution: use targets='live' (or 'dense' for a small vocabulary)."
        )
    if targets == "none" and on_policy_ratio > 0:
        raise ValueError(
            "On-policy batches need a teacher to score them; targets='none' has none. Use "
            "targets='sparse' or 'live', or on_policy_ratio=0."
        )
    check_tokenizers_match(teacher, student)
    windows = _windows(train, teacher, sequence_length)
    count = int(windows.cardinality())
    cache_dir = cache_dir or os.path.join(model_cache_dir(), "lm_targets")
    distiller = Distiller(student, teacher if targets == "live" else None)  # else cached: no teacher
    teacher_targets = None
    if targets == "sparse":
        cache = SparseTeacherCache(
            cache_dir,
            teacher,
            k=k,
            mode=mode,
            temperature=temperature,
            seed=seed,
            samples=samples,
            teacher_id=teacher_id,
        )
        data, distillation_loss = cache.attach(windows, dataset_id), cache.loss()
        teacher_targets = cache.teacher_targets
    elif targets == "dense":
        vocabulary = student.backbone.vocabulary_size
        if vocabulary > 4096:
            warnings.warn(
                f"A dense teacher cache costs {vocabulary * 4:,} bytes per token; use targets='sparse'.",
                stacklevel=2,
            )
        data = TeacherCache(cache_dir, teacher, teacher_id=teacher_id).attach(windows, dataset_id)
        distillation_loss = kd_losses.get(loss)
        teacher_targets = lambda x: {LOGITS: teacher(x, training=False)}  # noqa: E731
    else:
        data, distillation_loss = windows, kd_losses.get(loss)
        if targets == "none":
            alpha = 1.0
    data = data.shuffle(max(count, 1), seed=seed, reshuffle_each_iteration=True).batch(batch_size)
    callbacks = list(callbacks or [])
    if on_policy_ratio > 0:
        source = OnPolicyBatches(
            data.prefetch(tf.data.AUTOTUNE),
            student,
            ratio=on_policy_ratio,
            prompt_length=prompt_length,
            sampler=sampler,
            teacher_targets=teacher_targets if targets != "live" else None,
            seed=seed,
        )
        data = source.dataset()
        callbacks.append(OnPolicyLog(source))
    else:
        data = data.prefetch(tf.data.AUTOTUNE)
    distiller.compile(
        optimizer=optimizer or keras.optimizers.Adam(DEFAULT_LEARNING_RATE),
        distillation_loss_fn=distillation_loss,
        alpha=alpha,
        temperature=None if targets == "sparse" else temperature,
    )
    validation_data = None
    if validation is not None:
        validation_data = make_lm_dataset(validation, teacher, sequence_length, batch_size)
    return distiller.fit(  # the windows are shuffled above, every epoch
        data,
        epochs=epochs,
        validation_data=validation_data,
        callbacks=callbacks,
        verbose=verbose,
        shuffle=False,
    )
