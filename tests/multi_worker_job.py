"""One worker of a two-process distillation on this machine, started by `tests/test_multi_worker.py`.

Run with `TF_CONFIG` set (loopback addresses): it sets up `kd_tf.distribute.make_strategy("multi_worker")`,
builds its shards of the teacher cache and merges them, distils a tiny student from the merged cache
(streamed from disk) under the strategy with `WorkerBackupAndRestore`, and writes `result-<worker>.json`
into the work folder. `--pause-at-epoch E` makes worker 1 write `paused-1` after the second batch of epoch E
and sleep (worker 0 then waits for it in the next batch), so that a test can kill it mid-epoch.

Usage: python -m tests.multi_worker_job WORK_DIR [--epochs N] [--pause-at-epoch E]
"""

import argparse
import json
import os
import time

from kd_tf import distribute

EXAMPLES, BATCH, DATASET_ID = 121, 40, "make_data-121-seed0"


def examples():
    """The labelled examples every worker and the single-process reference use (the last batch has one)."""
    import tensorflow as tf

    from tests.distill_helpers import make_data

    x, y = make_data(EXAMPLES, seed=0)
    return tf.data.Dataset.from_tensor_slices((x, y))


def teacher():
    from tests.distill_helpers import mlp

    return mlp(32, "teacher", seed=1)


def train(cache, strategy, epochs, callbacks=()):
    """Distils the student from `cache`'s rows under `strategy`; returns `(student, history)`."""
    import keras

    from kd_tf.distill import Distiller
    from tests.distill_helpers import mlp

    with strategy.scope():
        student = mlp(8, "student", seed=3)
        distiller = Distiller(student=student, teacher=None)
        distiller.compile(
            optimizer=keras.optimizers.SGD(0.1),
            alpha=0.3,
            temperature=2.0,
            metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
        )
    data = cache.attach(examples(), dataset_id=DATASET_ID).batch(BATCH)
    history = distiller.fit(data, epochs=epochs, verbose=0, callbacks=list(callbacks)).history
    return student, history


def _pause_at(epoch, marker):
    import keras

    class Pause(keras.callbacks.Callback):
        def on_epoch_begin(self, index, logs=None):
            self.epoch = index

        def on_train_batch_end(self, batch, logs=None):
            if self.epoch == epoch and batch == 1:
                with open(marker, "w") as f:
                    f.write(str(os.getpid()))
                time.sleep(600)

    return Pause()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("work")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--pause-at-epoch", type=int, default=None)
    args = parser.parse_args()
    strategy = distribute.make_strategy("multi_worker")  # before TensorFlow runs anything

    from kd_tf.distill import TeacherCache
    from kd_tf.distill.cache_merge import build_shards, merge_shards

    index, count = distribute.worker_of(strategy)
    cache = TeacherCache(os.path.join(args.work, "cache"), teacher(), batch_size=16, progress=False)
    build_shards(cache, examples(), index, count, dataset_id=DATASET_ID)
    key = merge_shards(cache, examples(), count, dataset_id=DATASET_ID, timeout=120)
    try:
        distribute.check_global_batch(BATCH + 1, strategy)
        uneven = None
    except distribute.DistributeError as e:
        uneven = str(e)
    backup = os.path.join(args.work, "backup")
    callbacks = [distribute.WorkerBackupAndRestore(backup, strategy)]
    if args.pause_at_epoch is not None and index == 1:
        callbacks.append(_pause_at(args.pause_at_epoch, os.path.join(args.work, f"paused-{index}")))
    student, history = train(cache, strategy, args.epochs, callbacks)
    result = dict(
        worker=index,
        workers=count,
        chief=distribute.is_chief(strategy),
        replicas=int(strategy.num_replicas_in_sync),
        per_replica_batch=distribute.check_global_batch(BATCH, strategy),
        uneven_batch_error=uneven,
        key=key,
        own_backup=distribute.worker_folder(backup, strategy),
        history={k: [float(v) for v in vs] for k, vs in history.items()},
        weights=[w.tolist() for w in student.get_weights()],
    )
    with open(os.path.join(args.work, f"result-{index}.json"), "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
