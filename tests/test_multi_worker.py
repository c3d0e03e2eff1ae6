"""Two worker processes on this machine (loopback addresses, free ports, CPU only) distil like one process.

Each worker (`tests/multi_worker_job.py`) computes its shard of the teacher cache, the shards are merged,
and a `MultiWorkerMirroredStrategy` (`kd_tf.distribute.make_strategy("multi_worker")`) trains the student
from the merged cache, each global batch of 40 split across the two workers (the last batch holds one
example, so one worker's half is empty). The reference is the same training in this process from a cache
built by one process. Killing a worker mid-epoch and restarting both resumes from the chief's last
per-epoch backup (`kd_tf.distribute.WorkerBackupAndRestore`); the data is not shuffled, so the resumed
run must end where the uninterrupted one ends.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from kd_tf.distill import TeacherCache
from tests import multi_worker_job as job

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOLERANCE = 1e-5
"""Weights and losses: float32 sums in another order (gradients all-reduced across the workers)."""
CACHE_TOLERANCE = 1e-6
"""Merged teacher logits against one process's: the teacher ran on other batches."""
START_TIMEOUT = 240


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _start(work, *argv):
    """Starts two workers, `python *argv` each, on fresh loopback ports (logs in `work`); returns their
    `Popen`s."""
    addresses = [f"127.0.0.1:{p}" for p in _free_ports(2)]
    procs = []
    for index in range(2):
        tf_config = {"cluster": {"worker": addresses}, "task": {"type": "worker", "index": index}}
        env = dict(
            os.environ,
            TF_CONFIG=json.dumps(tf_config),
            CUDA_VISIBLE_DEVICES="",
            TF_CPP_MIN_LOG_LEVEL="2",
            PYTHONPATH=ROOT,
        )
        with open(os.path.join(work, f"worker-{index}.log"), "w") as log:
            procs.append(
                subprocess.Popen(
                    [sys.executable, *argv],
                    cwd=ROOT,
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
    return procs


def _start_job(work, *args):
    return _start(work, "-m", "tests.multi_worker_job", str(work), *args)


def _log(work, index):
    with open(os.path.join(work, f"worker-{index}.log")) as f:
        return f.read()


def _wait(work, procs, timeout=START_TIMEOUT):
    """Waits for both workers to succeed (killing both past `timeout`)."""
    deadline = time.monotonic() + timeout
    try:
        for index, proc in enumerate(procs):
            code = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
            assert code == 0, f"worker {index} exited with {code}:\n{_log(work, index)[-3000:]}"
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def _results(work):
    results = []
    for index in range(2):
        with open(os.path.join(work, f"result-{index}.json")) as f:
            results.append(json.load(f))
    return results


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One process: its teacher cache and the student trained from it (the default strategy)."""
    import tensorflow as tf

    cache = TeacherCache(
        tmp_path_factory.mktemp("single_cache"), job.teacher(), batch_size=16, progress=False
    )
    key = cache.build(job.examples(), dataset_id=job.DATASET_ID)
    student, history = job.train(cache, tf.distribute.get_strategy(), epochs=3)
    return dict(
        key=key,
        logits=np.asarray(cache.load(key)["logits"]),
        weights=student.get_weights(),
        history=history,
    )


def _assert_like_reference(result, reference, epochs=3):
    for a, b in zip(result["weights"], reference["weights"]):
        np.testing.assert_allclose(np.array(a), b, atol=TOLERANCE, rtol=0)
    for name in ("loss", "student_loss", "distillation_loss", "accuracy"):
        np.testing.assert_allclose(
            result["history"][name], reference["history"][name][-epochs:], atol=TOLERANCE, rtol=TOLERANCE
        )


def test_two_workers_train_like_one_process_from_a_merged_sharded_cache(tmp_path, reference):
    _wait(tmp_path, _start_job(tmp_path))
    chief, other = _results(tmp_path)
    assert (chief["chief"], other["chief"]) == (True, False)
    assert chief["workers"] == other["workers"] == chief["replicas"] == 2
    assert chief["per_replica_batch"] == 20
    assert "data.batch_size: 41 is the global batch" in chief["uneven_batch_error"]
    # The merged cache: the single-process key and rows, one complete folder, no shard left behind.
    assert chief["key"] == other["key"] == reference["key"]
    merged = TeacherCache(tmp_path / "cache", job.teacher(), progress=False)
    np.testing.assert_allclose(
        np.asarray(merged.load(reference["key"])["logits"]), reference["logits"], atol=CACHE_TOLERANCE, rtol=0
    )
    merged.verify(reference["key"])
    assert sorted(os.listdir(tmp_path / "cache")) == [f".{reference['key']}.lock", reference["key"]]
    # Training: both workers hold the very same student (what keys their teacher caches alike), equal to
    # the single-process one.
    assert chief["weights"] == other["weights"]
    _assert_like_reference(chief, reference)
    _assert_like_reference(other, reference)
    # Only the chief wrote the backup folder (deleted once training ended); worker 1 wrote its own.
    assert other["own_backup"] == str(tmp_path / ".backup.worker-1")
    assert not os.path.exists(tmp_path / "backup") and not os.path.exists(other["own_backup"])


def _wait_for(path, procs, work, timeout=START_TIMEOUT):
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        for index, proc in enumerate(procs):
            assert proc.poll() is None, f"worker {index} ended early:\n{_log(work, index)[-3000:]}"
        assert time.monotonic() < deadline, f"{path} did not appear in {timeout} s"
        time.sleep(0.2)


@pytest.mark.slow
def test_killing_a_worker_mid_epoch_then_restarting_both_resumes_from_the_last_epoch(tmp_path, reference):
    procs = _start_job(tmp_path, "--pause-at-epoch", "1")
    try:
        _wait_for(tmp_path / "paused-1", procs, tmp_path)
        os.killpg(procs[1].pid, signal.SIGKILL)  # worker 1 dies in the middle of epoch 2 of 3
        procs[1].wait()
        # The chief, waiting for worker 1's gradients, stops by itself once its heartbeats stop (~10 s).
        assert procs[0].wait(timeout=120) != 0
        assert "stopped sending heartbeats" in _log(tmp_path, 0)
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    with open(tmp_path / "backup" / "training_metadata.json") as f:
        assert json.load(f)["epoch"] == 1  # the chief's backup of the first epoch
    assert not os.path.exists(tmp_path / "result-0.json")
    _wait(tmp_path, _start_job(tmp_path))
    chief, other = _results(tmp_path)
    assert len(chief["history"]["loss"]) == len(other["history"]["loss"]) == 2  # epochs 2 and 3 only
    _assert_like_reference(chief, reference, epochs=2)
    _assert_like_reference(other, reference, epochs=2)


@pytest.mark.slow
def test_kd_tf_run_on_two_workers(tmp_path, tiny_encoder, tiny_preprocessor):
    """`kd-tf run` with `distribute.strategy: multi_worker` on two processes: the chief's run folder holds the
    whole run, worker 1's own folder the trainings only, both hold the same models."""
    import keras

    from kd_tf.config import load_config
    from tests.test_pipeline import tiny_config

    config = tiny_config(
        tmp_path,
        tiny_encoder,
        tiny_preprocessor,
        data={"transfer_size": 0},
        teacher={"epochs": 1},
        student={"epochs": 1},
        export={"enabled": False},
        evaluate={"latency_runs": 1, "latency_rounds": 1},
        distribute={"strategy": "multi_worker"},
    )
    _wait(tmp_path, _start(tmp_path, "-m", "kd_tf.cli", "run", "--config", config), timeout=1800)
    chief = load_config(config).run_dir
    other = os.path.join(os.path.dirname(chief), f".{os.path.basename(chief)}.worker-1")
    assert f"run folder: {other}" in _log(tmp_path, 1)
    trainings = ["baseline.json", "cache.json", "distill.json", "teacher.json"]
    assert sorted(os.listdir(os.path.join(other, "steps"))) == trainings
    assert sorted(os.listdir(os.path.join(chief, "steps"))) == sorted(
        trainings + ["evaluate.json", "export.json", "report.json"]
    )
    assert os.path.exists(os.path.join(chief, "report.json"))
    # One teacher cache, in the chief's folder, merged from both workers' shards.
    assert not os.path.exists(os.path.join(other, "teacher_cache"))
    cache = sorted(os.listdir(os.path.join(chief, "teacher_cache")))
    assert len(cache) == 2 and not any(name.endswith(".shards") for name in cache)
    for role in ("teacher", "student", "baseline"):
        a, b = (keras.saving.load_model(os.path.join(d, role, "model.keras")) for d in (chief, other))
        for wa, wb in zip(a.get_weights(), b.get_weights()):
            np.testing.assert_array_equal(wa, wb)
