"""The teacher of a classification run: its handles, its fine-tuning, its cached logits.

* `resolve_teacher_handles`: the encoder and preprocessor handles of the configured teacher;
* `train_teacher` (the teacher step): fine-tune encoder + head on the labelled training split (AdamW, linear
  warmup then cosine decay, early stopping on validation accuracy, best weights kept) -> `teacher/`, and
  the fine-tuned encoder in TF Hub format (`teacher/hub_encoder`, what students are cut from). With
  `teacher.train_top_blocks: N` only the top N blocks and the head learn, on the lower blocks' outputs
  computed once (`kd_tf.classify.upper_blocks`);
* `cached_logits` (the cache step): its logits over the training (and transfer) texts, tokenized by the
  teacher's own preprocessor, computed once -> `teacher_cache/`. They are per text, so students with
  another tokenizer (a pruned vocabulary) use them as they are.
"""

from __future__ import annotations

import numpy as np

from kd_tf.pipeline import distributed
from kd_tf.pipeline.classification_data import data_fingerprint
from kd_tf.pipeline.run_folder import PipelineError


def _log(message):
    print(message, flush=True)


def resolve_teacher_handles(config):
    """`(encoder, preprocessor)` handles of the teacher of a run config.

    A local preset (`kd-tf:all-MiniLM-L6-v2`) is converted once into `kd_tf.paths.model_cache_dir()`
    and brings its own preprocessor.

    Args:
        config: a `kd_tf.config.RunConfig`.

    Returns:
        `(encoder handle, preprocessor handle)`.

    Raises:
        PipelineError: if no preprocessor is given for a teacher that brings none.

    Example:
    ```python
    encoder, preprocessor = resolve_teacher_handles(load_config("configs/demo.yaml"))
    ```
    """
    from kd_tf.bert.presets import LOCAL_PRESETS, preset_folders

    encoder, preprocessor = config.teacher.encoder, config.teacher.preprocessor
    if encoder in LOCAL_PRESETS:
        folders = preset_folders(encoder, log=_log)
        encoder, preprocessor = folders["encoder"], preprocessor or folders["preprocessor"]
    if preprocessor is None:
        raise PipelineError(
            "teacher.preprocessor: give a TF Hub preprocessor handle "
            "(only kd-tf:all-MiniLM-L6-v2 brings its own)."
        )
    return encoder, preprocessor


def train_teacher(run):
    """Fine-tunes the teacher of `run` and saves it (the teacher step).

    Args:
        run: a `kd_tf.pipeline.ClassificationRun`.

    Returns:
        The step's record details: `training_seconds`, `best_val_accuracy`, `best_epoch`, `status` and
        `hub_encoder` (the fine-tuned encoder in TF Hub format, or None for a published teacher).

    Raises:
        kd_tf.pipeline.training.TrainingDiverged: if no epoch ended finite (nothing is saved).

    Example:
    ```python
    train_teacher(run)["hub_encoder"]  # 'saved_models/demo/teacher/hub_encoder'
    ```
    """
    import keras

    from kd_tf.bert import hub_format
    from kd_tf.classify import models
    from kd_tf.pipeline import training

    t, d = run.config.teacher, run.config.data
    keras.utils.set_random_seed(run.config.seed)
    splits = run.splits
    with distributed.scope(run):
        model = models.build_classifier(
            run.handles[0],
            len(splits["label_names"]),
            pooling=t.pooling,
            dropout=t.dropout,
            freeze_word_embeddings=t.freeze_word_embeddings,
            name="teacher",
        )
        total = training.steps_per_epoch(len(splits["train"]), d.batch_size) * t.epochs
        optimizer = training.optimizer(t.learning_rate, t.weight_decay, t.warmup_fraction, total)
    if t.train_top_blocks is None:
        trainer = distributed.compile_on_labels(run, model, optimizer)
        train_ds = run.dataset(splits["train"], shuffle=True)
        result = run.fit(
            trainer, model, train_ds, t.early_stopping_patience, "teacher", "the teacher", "teacher"
        )
    else:
        result = _fit_top_blocks(run, model, optimizer)
    details = run._save("teacher", model, result)
    encoder = models.find_encoder(model)
    hub_dir = run.folder.path("teacher", "hub_encoder")
    if hub_format.is_kd_tf_encoder(encoder.handle):
        # The fine-tuned encoder in TF Hub format: students are cut from it.
        keras_encoder = hub_format.load_bert_encoder(encoder.handle, variables=encoder.saved_variables)
        hub_format.save_bert_encoder(keras_encoder, hub_dir)
    else:  # a published TF Hub encoder: kd-tf cannot rebuild its architecture
        hub_dir = None
    return {**details, "hub_encoder": hub_dir}


def _fit_top_blocks(run, model, optimizer):
    """Trains the top `teacher.train_top_blocks` blocks and the head of `model` on the lower blocks'
    outputs, computed once; the trained weights end in `model`. Returns the `FitResult` (its seconds
    include the lower blocks' pass)."""
    import time

    from kd_tf.bert import hub_format
    from kd_tf.bert.split import split_encoder
    from kd_tf.classify import models, upper_blocks

    t, splits = run.config.teacher, run.splits
    hub_layer = models.find_encoder(model)
    try:
        with distributed.scope(run):
            encoder = hub_format.load_bert_encoder(hub_layer.handle, variables=hub_layer.saved_variables)
            below, above = split_encoder(encoder, t.train_top_blocks)
            upper = upper_blocks.build_upper_classifier(
                above, len(splits["label_names"]), pooling=t.pooling, dropout=t.dropout, name="teacher_top"
            )
    except (ValueError, OSError) as e:
        raise PipelineError(
            f"teacher.train_top_blocks={t.train_top_blocks}: {e} Training only the top blocks needs a "
            f"kd-tf-written encoder (kd-tf:all-MiniLM-L6-v2, or a folder from kd_tf.bert.hub_format) with "
            f"at least that many blocks; set teacher.train_top_blocks to null to fine-tune every block."
        ) from None
    start = time.perf_counter()
    _log(f"The teacher's lower {len(below.blocks)} blocks are frozen: computing their outputs once.")
    try:
        cached = {
            name: upper_blocks.lower_block_outputs(
                below, run.dataset(splits[name], bucketing=False), verbose=run.verbose
            )
            for name in ("train", "validation")
        }
    except ValueError as e:
        raise PipelineError(f"the teacher step of {run.folder.root}: {e} ({t.encoder})") from None
    lower_seconds = time.perf_counter() - start
    d = run.config.data
    train_ds = upper_blocks.outputs_dataset(
        cached["train"], splits["train"].labels, d.batch_size, shuffle=True, seed=run.config.seed
    )
    val_ds = upper_blocks.outputs_dataset(cached["validation"], splits["validation"].labels, d.batch_size)
    trainer = distributed.compile_on_labels(run, upper, optimizer)
    result = run.fit(
        trainer,
        upper,
        train_ds,
        t.early_stopping_patience,
        "teacher",
        "the teacher",
        "teacher",
        validation=val_ds,
    )
    for target, value in zip(hub_layer.saved_variables, encoder.variables):
        target.assign(value)  # the trained top blocks back into the teacher's TF Hub encoder
    upper_blocks.copy_head(upper, model)
    result.seconds += lower_seconds
    return result


def cached_logits(run):
    """The teacher's logits over `run.train_set()`, from its cache (computed if missing).

    Args:
        run: a `kd_tf.pipeline.ClassificationRun` whose teacher step finished.

    Returns:
        `(cache key, logits [N, C] numpy array)` in the order of the texts.

    Raises:
        PipelineError: if the teacher gives a non-finite logit (nothing is cached), or a cached logit is
            not finite (nothing is distilled from it); the message names the fix.

    Example:
    ```python
    key, logits = cached_logits(run)
    ```
    """
    from kd_tf.distill import TeacherCache

    data = run.train_set()
    cache = TeacherCache(
        distributed.shared_path(run, "teacher_cache"),  # every worker's shards meet in the chief's
        run.load_model("teacher"),
        batch_size=run.config.data.batch_size,
        progress=run.verbose == 1,
    )
    dataset = run.dataset(data, bucketing=False, include_labels=False).unbatch()
    try:
        dataset_id = f"{data_fingerprint(data)}/{run.config.data.seq_length}"
        key = distributed.build_teacher_cache(run, cache, dataset, dataset_id)
    except ValueError as e:
        if "non-finite" not in str(e):
            raise
        lr = run.config.teacher.learning_rate
        raise PipelineError(
            f"the cache step of {run.folder.root} stopped: {e} The fine-tuned teacher "
            f"({run.model_path('teacher')}) has finite weights, yet gives NaN or infinite logits, so no "
            f"student can learn from it. Train it again with a lower teacher.learning_rate (now {lr:g}): "
            f"kd-tf finetune-teacher --config {run.folder.path('config.yaml')} --force "
            f"--set teacher.learning_rate={lr / 10:g}, then rerun this command."
        ) from None
    logits = np.asarray(cache.load(key)["logits"])
    bad = int(np.sum(~np.isfinite(logits).all(axis=-1)))
    if bad:
        raise PipelineError(
            f"the teacher's cached logits ({cache.path(key)}) are not finite for {bad} of "
            f"{len(logits)} texts; delete that folder and rerun the teacher step with --force."
        )
    return key, logits


__all__ = ["cached_logits", "resolve_teacher_handles", "train_teacher"]
