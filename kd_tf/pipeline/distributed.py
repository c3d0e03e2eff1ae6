"""A classification run under its `distribute` section: where its models are built and trained.

With `distribute.strategy: none` (the default) everything here steps aside and TensorFlow is not touched.
Otherwise (`kd_tf.distribute`, docs/scale.md):

* every model is built and compiled inside the strategy's `scope` (the teacher, both students, the live
  teacher of hidden-state distillation);
* `compile_on_labels`: a model that learns from labels alone (the teacher, the label-only student) trains,
  with several replicas, through a teacher-less `kd_tf.Distiller`, which averages the loss over the global
  batch (Keras's own loss averages each replica's share, which an unevenly split last batch biases);
* `build_teacher_cache`: with several workers, each computes its shards of the teacher's logits into the
  chief's `teacher_cache/` and the shards merge into one cache (`kd_tf.distill.cache_merge`);
* `backup_callbacks`: each training is backed up every epoch under the chief's `backup/`, so that workers
  started again after one died resume from the last finished epoch;
* the evaluate, export and report steps run on the chief only (`CHIEF_ONLY_STEPS`).
"""

from __future__ import annotations

import contextlib
import os

from kd_tf.pipeline.run_folder import PipelineError

CHIEF_ONLY_STEPS = ("evaluate", "export", "report")
"""Steps that train nothing: another multi-worker worker leaves them to the chief."""


def _section(run):
    return run.config.distribute


def strategy(run):
    """The run's `tf.distribute.Strategy` (built once per process), or None with `strategy: none`.

    Example:
    ```python
    strategy(run).num_replicas_in_sync   # 2 on two workers
    ```
    """
    if _section(run).strategy == "none":
        return None
    from kd_tf import distribute

    return distribute.strategy_from_config(_section(run))


def scope(run):
    """The context in which the run's models are built: the strategy's scope, or one that does nothing.

    Example:
    ```python
    with scope(run):
        model = build_classifier(handle, 2)
    ```
    """
    built = strategy(run)
    return contextlib.nullcontext() if built is None else built.scope()


def worker_of(run):
    """`(index, count)` of this process among the run's workers (`(0, 1)` without several workers)."""
    built = strategy(run)
    if built is None:
        return 0, 1
    from kd_tf import distribute

    return distribute.worker_of(built)


def is_chief(run):
    """Whether this process writes the run folder (see `kd_tf.distribute.is_chief`)."""
    return worker_of(run)[0] == 0


def shared_path(run, *parts):
    """A path in the chief's run folder, which every worker sees (this process's own folder on the chief).

    Example:
    ```python
    shared_path(run, "teacher_cache")   # 'saved_models/demo/teacher_cache' on every worker
    ```
    """
    if is_chief(run):
        return run.folder.path(*parts)
    return os.path.join(run.config.run_dir, *parts)


def check_batch(run):
    """Raises PipelineError if `data.batch_size` (the global batch) cannot be shared by the replicas."""
    built = strategy(run)
    if built is None:
        return
    from kd_tf import distribute

    try:
        distribute.check_global_batch(run.config.data.batch_size, built)
    except distribute.DistributeError as e:
        raise PipelineError(str(e)) from None


def compile_on_labels(run, model, optimizer):
    """Compiles `model` to learn from labels alone; returns what `fit` is called on.

    Args:
        run: a `kd_tf.pipeline.ClassificationRun`.
        model: a classifier returning logits, built in `scope(run)`.
        optimizer: its optimizer.

    Returns:
        `model` (sparse categorical cross-entropy, accuracy), or with several replicas a teacher-less
        `kd_tf.Distiller` around it (the same loss and metric, averaged over the global batch).

    Example:
    ```python
    trainer = compile_on_labels(run, model, optimizer)
    run.fit(trainer, model, train_ds, ...)
    ```
    """
    import keras

    metrics = [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]
    built = strategy(run)
    if built is not None and built.num_replicas_in_sync > 1:
        from kd_tf.distill import Distiller

        with built.scope():
            trainer = Distiller(student=model, teacher=None, name=f"{model.name}_trainer")
            trainer.compile(optimizer=optimizer, metrics=metrics, jit_compile=run.jit())
        return trainer
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=metrics,
        jit_compile=run.jit_for_keras(),
    )
    return model


def build_teacher_cache(run, cache, dataset, dataset_id):
    """`cache.build(dataset)`; with several workers, first this worker's shards, then the merged cache.

    Returns:
        The cache key.

    Example:
    ```python
    key = build_teacher_cache(run, cache, examples, dataset_id)
    ```
    """
    index, count = worker_of(run)
    if count > 1:
        from kd_tf.distill.cache_merge import build_shards, merge_shards

        build_shards(cache, dataset, index, count, dataset_id=dataset_id)
        merge_shards(cache, dataset, count, dataset_id=dataset_id, timeout=_section(run).shard_timeout)
    return cache.build(dataset, dataset_id=dataset_id)


def backup_callbacks(run, log_name):
    """`[kd_tf.distribute.WorkerBackupAndRestore]` for the training `log_name` (its backup in the chief's
    `backup/<log_name>`), or `[]` without a strategy or with `distribute.backup: false`.

    Example:
    ```python
    callbacks = backup_callbacks(run, "student")
    ```
    """
    built = strategy(run)
    if built is None or not _section(run).backup:
        return []
    from kd_tf import distribute

    return [distribute.WorkerBackupAndRestore(shared_path(run, run.relative("backup", log_name)), built)]


__all__ = [
    "CHIEF_ONLY_STEPS",
    "backup_callbacks",
    "build_teacher_cache",
    "check_batch",
    "compile_on_labels",
    "is_chief",
    "scope",
    "shared_path",
    "strategy",
    "worker_of",
]
