"""Training beyond one device: the strategies of a run's `distribute` section, read from TF_CONFIG.

`make_strategy` builds the `tf.distribute.Strategy` that every model of a run is created and trained under:

* `none`: TensorFlow's default strategy (one device);
* `mirrored`: `tf.distribute.MirroredStrategy`, every GPU of this host (or the listed devices);
* `multi_worker`: `tf.distribute.MultiWorkerMirroredStrategy`, one process per host (or per device), each
  started with its own `TF_CONFIG` (`read_tf_config` checks it and names the field that is wrong);
* `tpu`: `tf.distribute.TPUStrategy` on a TPU VM (`tpu: local`) or a named TPU.

The configured batch size is the *global* batch: Keras splits each batch across the replicas of every
worker (`check_global_batch` refuses a size the replicas cannot share evenly), and the Distiller averages
every loss over the global batch, so N replicas compute the gradient one device would. Only the chief
writes a run's files (`is_chief`); another worker writes into its own folder (`worker_folder`), as Keras
recommends for multi-worker checkpoints. `WorkerBackupAndRestore` checkpoints the training state every epoch
under the run folder: a restarted worker (after a kill or a preemption) resumes from the last finished
epoch. `docs/scale.md` gives the commands for GPUs, several hosts and TPUs.

Example:
```python
strategy = make_strategy("multi_worker")          # first thing in the program: reads TF_CONFIG
check_global_batch(64, strategy)                  # 32 per replica on two workers
with strategy.scope():
    distiller = kd_tf.Distiller(student=build_student(), teacher=None)
    distiller.compile(optimizer="adam", alpha=0.1, temperature=3.0)
distiller.fit(cache.attach(examples).batch(64), epochs=3,
              callbacks=[WorkerBackupAndRestore("saved_models/run/backup/student", strategy)])
```
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil

import keras
import tensorflow as tf

from kd_tf.config_distribute import COMMUNICATIONS, STRATEGIES

NONE, MIRRORED, MULTI_WORKER, TPU = STRATEGIES
TF_CONFIG = "TF_CONFIG"
WORKER_JOBS = ("chief", "worker")
"""The jobs whose tasks train (a `chief` job is optional; its task is the chief)."""

_SCALE_DOC = "docs/scale.md"
_created = {}


class DistributeError(ValueError):
    """A strategy cannot be built as configured; the message names the setting (or TF_CONFIG field) and
    the fix.

    Example:
    ```python
    try:
        make_strategy("multi_worker", environ={})
    except DistributeError as e:
        print(e)   # TF_CONFIG is not set: ...
    ```
    """


@dataclasses.dataclass(frozen=True)
class ClusterTask:
    """This process's place in a multi-worker cluster, from a checked TF_CONFIG.

    Attributes:
        cluster: Job name -> tuple of `host:port` addresses (`{"worker": ("10.0.0.1:12345", ...)}`).
        task_type: This process's job (`"worker"` or `"chief"`).
        task_index: Its index in that job.

    Example:
    ```python
    task = read_tf_config({"TF_CONFIG": '{"cluster": {"worker": ["a:1", "b:2"]}, '
                                        '"task": {"type": "worker", "index": 1}}'})
    task.worker_index, task.num_workers, task.is_chief   # 1, 2, False
    ```
    """

    cluster: dict
    task_type: str
    task_index: int

    @property
    def num_workers(self):
        """Processes that train: the chief (if any) and every worker."""
        return sum(len(self.cluster.get(job, ())) for job in WORKER_JOBS)

    @property
    def worker_index(self):
        """This process's index among those that train (the chief first): what picks its data shards."""
        if self.task_type == "worker":
            return len(self.cluster.get("chief", ())) + self.task_index
        return self.task_index

    @property
    def is_chief(self):
        """The chief writes the run's files: the `chief` task, else worker 0 (TensorFlow's rule)."""
        return self.worker_index == 0

    def cluster_resolver(self):
        """A `tf.distribute.cluster_resolver.SimpleClusterResolver` of this cluster and task."""
        spec = tf.train.ClusterSpec({job: list(addresses) for job, addresses in self.cluster.items()})
        return tf.distribute.cluster_resolver.SimpleClusterResolver(
            spec, task_type=self.task_type, task_id=self.task_index, rpc_layer="grpc"
        )


def _tf_config_error(problem, fix="see docs/scale.md for one TF_CONFIG per worker"):
    return DistributeError(f"TF_CONFIG {problem}; {fix}.")


def _check_address(job, index, address):
    host, sep, port = str(address).rpartition(":")
    if not isinstance(address, str) or not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise _tf_config_error(
            f'field "cluster.{job}[{index}]" is {address!r}, not a "host:port" address',
            'write each task as "host:port", e.g. "10.0.0.2:12345"',
        )


def read_tf_config(environ=None):
    """The cluster and this process's task, from the `TF_CONFIG` environment variable, checked.

    Args:
        environ: The environment to read (default `os.environ`).

    Returns:
        A `ClusterTask`, or None when `TF_CONFIG` is not set.

    Raises:
        DistributeError: Naming the field that is missing or malformed: not JSON, no `cluster`, a job that
            is not a list of `host:port` addresses, no `worker` or `chief` job, no `task`, a task type
            that is not a job of the cluster, an index that is not an integer or is out of range.

    Example:
    ```python
    read_tf_config({"TF_CONFIG": json.dumps({"cluster": {"worker": ["127.0.0.1:20000"]},
                                            "task": {"type": "worker", "index": 0}})}).num_workers  # 1
    ```
    """
    environ = os.environ if environ is None else environ
    text = environ.get(TF_CONFIG)
    if not text:
        return None
    try:
        value = json.loads(text)
    except ValueError as e:
        raise _tf_config_error(f"is not valid JSON ({e})") from None
    if not isinstance(value, dict):
        raise _tf_config_error(f"must be a JSON object with cluster and task, got {text!r}")
    cluster = value.get("cluster")
    if not isinstance(cluster, dict) or not cluster:
        raise _tf_config_error(
            'has no field "cluster"' if cluster is None else f'field "cluster" is {cluster!r}',
            'add "cluster": {"worker": ["host1:port", "host2:port", ...]}, the same on every worker',
        )
    for job, addresses in cluster.items():
        if not isinstance(addresses, list) or not addresses:
            raise _tf_config_error(
                f'field "cluster.{job}" is {addresses!r}, not a list of "host:port" addresses',
                f'write "{job}": ["host1:port", ...]',
            )
        for index, address in enumerate(addresses):
            _check_address(job, index, address)
    if not any(job in cluster for job in WORKER_JOBS):
        raise _tf_config_error(
            f'field "cluster" has no "worker" (or "chief") job, only {sorted(cluster)}',
            'list the training processes under "worker"',
        )
    task = value.get("task")
    if not isinstance(task, dict):
        raise _tf_config_error(
            'has no field "task"' if task is None else f'field "task" is {task!r}',
            'add "task": {"type": "worker", "index": N}, where N is this process\'s place in cluster.worker',
        )
    task_type, index = task.get("type"), task.get("index")
    if task_type not in cluster:
        raise _tf_config_error(
            f'field "task.type" is {task_type!r}, which is not a job of the cluster ({", ".join(cluster)})',
            'set "task": {"type": "worker", ...}',
        )
    if task_type not in WORKER_JOBS:
        raise _tf_config_error(
            f'field "task.type" is {task_type!r}; kd-tf runs only training processes ("worker", "chief")',
            "start the other jobs with TensorFlow's own servers",
        )
    if isinstance(index, bool) or not isinstance(index, int):
        raise _tf_config_error(
            f'field "task.index" is {index!r}, not an integer', 'set "task": {"type": ..., "index": 0}'
        )
    count = len(cluster[task_type])
    if not 0 <= index < count:
        raise _tf_config_error(
            f'field "task.index" is {index}, out of range: cluster.{task_type} has {count} address(es), '
            f"so the index is 0 to {count - 1}",
            "give each worker its own index",
        )
    return ClusterTask({job: tuple(a) for job, a in cluster.items()}, task_type, index)


class MultiWorkerStrategy(tf.distribute.MultiWorkerMirroredStrategy):
    """`tf.distribute.MultiWorkerMirroredStrategy` that Keras 3's `fit` can drive.

    Keras 3.15's TensorFlow trainer calls `strategy.reduce` in two ways that TensorFlow refuses once
    several workers take part (`keras/src/backend/tensorflow/trainer.py`): with a whole batch (a nest of
    per-replica tensors, only to read their shapes before the first step), and with `axis=0` on scalar
    logs. Here a nest gives this worker's first replica's values (TensorFlow leaves nests unsupported), and a
    scalar is averaged across replicas with `axis=None`. Everything else is the parent's.

    Example:
    ```python
    strategy = MultiWorkerStrategy(cluster_resolver=read_tf_config().cluster_resolver())
    ```
    """

    def reduce(self, reduce_op, value, axis=None):
        """`tf.distribute.Strategy.reduce`, with the two cases above."""
        if tf.nest.is_nested(value):
            return tf.nest.map_structure(lambda v: self.experimental_local_results(v)[0], value)
        if axis is not None and self.experimental_local_results(value)[0].shape.rank == 0:
            axis = None
        return super().reduce(reduce_op, value, axis)


def _multi_worker(communication, environ):
    task = read_tf_config(environ)
    if task is None:
        raise DistributeError(
            f"distribute.strategy: multi_worker needs the {TF_CONFIG} environment variable on every "
            'worker, e.g. {"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
            '"task": {"type": "worker", "index": 0}}; see ' + _SCALE_DOC
        )
    implementation = getattr(tf.distribute.experimental.CommunicationImplementation, communication.upper())
    try:
        return MultiWorkerStrategy(
            cluster_resolver=task.cluster_resolver(),
            communication_options=tf.distribute.experimental.CommunicationOptions(
                implementation=implementation
            ),
        )
    except RuntimeError as e:
        if "program startup" not in str(e):
            raise
        raise DistributeError(
            "distribute.strategy: multi_worker must be set up before TensorFlow runs anything in this "
            "process: call kd_tf.distribute.make_strategy first in the program (kd-tf's commands do)."
        ) from None


def _tpu(tpu):
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, RuntimeError, tf.errors.OpError) as e:
        raise DistributeError(
            f"distribute.strategy: tpu found no TPU ({type(e).__name__}: {str(e).splitlines()[0]}). On a "
            "TPU VM set distribute.tpu: local; elsewhere set it to the TPU's name or grpc:// address; "
            f"see {_SCALE_DOC}."
        ) from None
    return tf.distribute.TPUStrategy(resolver)


def make_strategy(strategy=NONE, *, devices=None, tpu=None, communication="auto", environ=None):
    """The `tf.distribute.Strategy` of a run, built once per process.

    Args:
        strategy: `"none"`, `"mirrored"`, `"multi_worker"` or `"tpu"` (see the module docstring).
        devices: `mirrored`: the devices to mirror over (`["/gpu:0", "/gpu:1"]`); None = every GPU of
            this host, or its CPU when it has none.
        tpu: `tpu`: `"local"` on a TPU VM, or the TPU's name or `grpc://` address.
        communication: `multi_worker`: the collective implementation, `"auto"`, `"ring"` (gRPC, works
            everywhere) or `"nccl"` (GPUs).
        environ: Where `TF_CONFIG` is read (default `os.environ`).

    Returns:
        The strategy; the same object for the same settings within one process (a multi-worker or TPU
        strategy can be set up only once per process).

    Raises:
        DistributeError: For an unknown setting, a missing or malformed `TF_CONFIG`, a multi-worker
            strategy asked for after TensorFlow already ran, or no TPU.

    Example:
    ```python
    strategy = make_strategy("mirrored")
    with strategy.scope():
        model = build_model()
    ```
    """
    if strategy not in STRATEGIES:
        raise DistributeError(
            f"distribute.strategy: {strategy!r} is not one of {', '.join(STRATEGIES)}; see {_SCALE_DOC}."
        )
    if communication not in COMMUNICATIONS:
        raise DistributeError(
            f"distribute.communication: {communication!r} is not one of {', '.join(COMMUNICATIONS)}."
        )
    key = (strategy, tuple(devices) if devices else None, tpu, communication)
    if strategy in (MULTI_WORKER, TPU):
        key = (strategy, None, tpu, communication)  # one cluster per process
    if key in _created:
        return _created[key]
    if strategy == NONE:
        built = tf.distribute.get_strategy()
    elif strategy == MIRRORED:
        built = tf.distribute.MirroredStrategy(devices=list(devices) if devices else None)
    elif strategy == MULTI_WORKER:
        built = _multi_worker(communication, environ)
    else:
        built = _tpu(tpu or "local")
    _created[key] = built
    return built


def strategy_from_config(section, environ=None):
    """`make_strategy` with the settings of a config's `distribute` section.

    Args:
        section: An object with `strategy`, `devices`, `tpu` and `communication` attributes
            (`kd_tf.config.DistributeConfig`).
        environ: Where `TF_CONFIG` is read (default `os.environ`).

    Returns:
        The strategy.

    Example:
    ```python
    strategy = strategy_from_config(load_config("configs/demo.yaml").distribute)
    ```
    """
    return make_strategy(
        section.strategy,
        devices=section.devices,
        tpu=section.tpu,
        communication=section.communication,
        environ=environ,
    )


def _task(strategy):
    """The `ClusterTask` of a multi-worker strategy with several workers, else None."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) or resolver is None:
        return None
    if resolver.task_type is None:
        return None
    spec = {job: tuple(a) for job, a in resolver.cluster_spec().as_dict().items()}
    task = ClusterTask(spec, resolver.task_type, int(resolver.task_id))
    return task if task.num_workers > 1 else None


def worker_of(strategy=None):
    """`(index, count)` of this process among the workers that train under `strategy`.

    Args:
        strategy: A strategy (default the current one).

    Returns:
        `(0, 1)` for one process; `(ClusterTask.worker_index, ClusterTask.num_workers)` for a multi-worker
        strategy. Work that is shared out (the shards of a teacher cache) uses it.

    Example:
    ```python
    index, count = worker_of(strategy)   # (1, 2) on the second of two workers
    ```
    """
    task = _task(strategy or tf.distribute.get_strategy())
    return (0, 1) if task is None else (task.worker_index, task.num_workers)


def is_chief(strategy=None):
    """Whether this process writes the run's files: always, except on a multi-worker strategy's
    non-chief workers.

    Example:
    ```python
    if is_chief(strategy):
        student.save("saved_models/run/student/model.keras")
    ```
    """
    return worker_of(strategy)[0] == 0


def worker_folder(folder, strategy=None):
    """Where this process writes what would go to `folder`: `folder` itself on the chief, else a private
    sibling `.<name>.worker-<index>` (what Keras's multi-worker guide does for checkpoints).

    Args:
        folder: The chief's folder.
        strategy: A strategy (default the current one).

    Returns:
        A path.

    Example:
    ```python
    worker_folder("saved_models/demo", strategy)   # 'saved_models/.demo.worker-1' on worker 1
    ```
    """
    index = worker_of(strategy)[0]
    if index == 0:
        return folder
    parent, name = os.path.split(os.path.normpath(folder))
    return os.path.join(parent, f".{name}.worker-{index}")


def check_global_batch(batch_size, strategy=None, key="data.batch_size"):
    """The per-replica batch of a global batch, refusing one the replicas cannot share evenly.

    Args:
        batch_size: The global batch (what the dataset is batched with).
        strategy: A strategy (default the current one).
        key: The config key of `batch_size`, for the message.

    Returns:
        `batch_size // num_replicas_in_sync`.

    Raises:
        DistributeError: If `batch_size` is not a multiple of the replicas.

    Example:
    ```python
    check_global_batch(64, strategy)   # 16 with 4 replicas
    ```
    """
    strategy = strategy or tf.distribute.get_strategy()
    replicas = int(strategy.num_replicas_in_sync)
    if batch_size % replicas:
        lower = max(replicas, batch_size // replicas * replicas)
        raise DistributeError(
            f"{key}: {batch_size} is the global batch (all replicas together) and must be a multiple of the "
            f"{replicas} replicas of this strategy; use {lower} or {lower + replicas}."
        )
    return batch_size // replicas


class WorkerBackupAndRestore(keras.callbacks.BackupAndRestore):
    """`keras.callbacks.BackupAndRestore` for several workers: each restores the chief's backup, only the
    chief writes `backup_dir`, the others write into their own `worker_folder` (deleted when training
    ends).

    Keras 3's callback lets every worker write and delete the same files. Every worker must still save
    (under a strategy, reading some variables takes part in collective operations), and all must restore
    the same epoch, so they read the chief's. With several hosts, `backup_dir` must be on a filesystem all
    of them see.

    Args:
        backup_dir: The chief's backup folder (one per `fit`: nothing else may write there).
        strategy: The strategy training runs under (default the current one).
        **kwargs: Passed to `keras.callbacks.BackupAndRestore` (`save_freq`, `double_checkpoint`, ...).

    Example:
    ```python
    model.fit(train, epochs=3, callbacks=[WorkerBackupAndRestore("saved_models/run/backup/student")])
    ```
    """

    def __init__(self, backup_dir, strategy=None, **kwargs):
        super().__init__(backup_dir, **kwargs)
        self.chief_dir = backup_dir
        self.own_dir = worker_folder(backup_dir, strategy)

    def _use(self, folder):
        self.backup_dir = folder
        self._weights_path = os.path.join(folder, "latest.weights.h5")
        self._training_metadata_path = os.path.join(folder, "training_metadata.json")
        self._prev_weights_path = f"{self._weights_path}.bkp"
        self._prev_training_metadata_path = f"{self._training_metadata_path}.bkp"

    def on_train_begin(self, logs=None):
        self._use(self.chief_dir)
        super().on_train_begin(logs)
        self._use(self.own_dir)

    def on_train_end(self, logs=None):
        super().on_train_end(logs)
        if self.own_dir != self.chief_dir:
            shutil.rmtree(self.own_dir, ignore_errors=True)


__all__ = [
    "COMMUNICATIONS",
    "ClusterTask",
    "DistributeError",
    "MultiWorkerStrategy",
    "STRATEGIES",
    "TF_CONFIG",
    "WorkerBackupAndRestore",
    "check_global_batch",
    "is_chief",
    "make_strategy",
    "read_tf_config",
    "strategy_from_config",
    "worker_folder",
    "worker_of",
]
