"""The folder of one run: its config, the records of its finished steps, its lock.

A run lives in `<output_dir>/<run_name>/`:

* `config.yaml`: the resolved config. It is pinned once a step finished: from then on the folder refuses
  a config whose training keys differ. Before that (a first step that failed, e.g. on a mistyped data
  path) a corrected config simply replaces it.
* `steps/<step>.json`: the record of a finished step (strict JSON, written once the step's outputs are
  in place). A rerun reuses finished steps; a run stopped between steps resumes where it stopped.
* `steps/<step>.running`: written when a step starts, removed when it ends. Before a step writes its
  outputs, `set_aside` moves the previous ones to `.aside/<step>/`. If the step fails, or its process is
  killed (found by `recover` on the next run), its partial outputs are removed and the previous ones
  come back, so `--force` keeps the last good outputs and their records until the new step succeeds,
  and no step ever reads the output of a step that did not finish.

`<output_dir>/.<run_name>.lock` names the process that runs the folder (an OS lock, released when the
process ends, even when it is killed): a second process gets a `PipelineError` instead of a corrupted
run, and the lock of a process that died is taken over with a message.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import shutil
import socket
import sys
import urllib.parse
import uuid

from kd_tf import config as config_lib
from kd_tf.json_files import write_json


class PipelineError(RuntimeError):
    """A run cannot go on; the message says why and what to do."""


def _log(message):
    print(message, flush=True)


class RunFolder:
    """The folder of one run, the records of its finished steps, and its lock.

    Args:
        config: a `kd_tf.config.RunConfig`.

    Example:
    ```python
    run = RunFolder(load_config("configs/demo.yaml"))
    run.path("teacher", "model.keras")  # 'saved_models/demo/teacher/model.keras'
    with run.lock():
        run.record("teacher")  # the teacher step's record, or None
    ```
    """

    def __init__(self, config):
        self.config = config
        self.root = config.run_dir
        self.output_dir = config.output_dir
        self.lock_path = os.path.join(config.output_dir, f".{config.run_name}.lock")
        self._marker = None

    def path(self, *parts):
        """A path inside the run folder."""
        return os.path.join(self.root, *parts)

    # ------------------------------------------------------------------ the lock
    @contextlib.contextmanager
    def lock(self):
        """Holds the run's lock while the block runs.

        Raises:
            PipelineError: if another live process holds it (naming its pid and command).

        Example:
        ```python
        with RunFolder(config).lock():
            ...  # no other kd-tf process works on this run meanwhile
        ```
        """
        os.makedirs(self.output_dir, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = _read_owner(fd)
                raise PipelineError(
                    f"{self.root} is in use by another kd-tf process ({_describe(owner)}); wait "
                    f"until it ends, or use another run_name. The lock is {self.lock_path}."
                ) from None
            try:
                previous = _read_owner(fd)
                if previous:
                    _log(
                        f"taking over the lock of {self.root}: {_describe(previous)} ended without "
                        f"releasing it (it was killed or crashed)"
                    )
                owner = {
                    "pid": os.getpid(),
                    "host": socket.gethostname(),
                    "command": " ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv)),
                    "started": datetime.datetime.now().isoformat(timespec="seconds"),
                }
                os.ftruncate(fd, 0)
                os.pwrite(fd, json.dumps(owner).encode(), 0)
                yield
            finally:
                os.ftruncate(fd, 0)  # released cleanly: nothing to take over
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    # ------------------------------------------------------------------ --fresh
    def is_run_folder(self):
        """Whether the folder holds a kd-tf run record (a `config.yaml` kd-tf wrote for this run)."""
        import yaml

        try:
            with open(self.path("config.yaml")) as f:
                values = yaml.safe_load(f)
        except (OSError, yaml.YAMLError):
            return False
        return (
            isinstance(values, dict)
            and values.get("run_name") == os.path.basename(self.root)
            and ({"data", "teacher", "student"} <= set(values) or "causal_lm" in values)
        )

    def delete(self):
        """Deletes the run folder (`--fresh`): only a kd-tf run folder strictly inside `output_dir`.

        Returns:
            True if a folder was deleted, False if there was none.

        Raises:
            PipelineError: if the folder is a link, lies outside `output_dir`, or holds no kd-tf run
                record; nothing is deleted then.

        Example:
        ```python
        with run.lock():
            run.delete()  # False if there was nothing to delete
        ```
        """
        if not os.path.lexists(self.root):
            return False
        parent, real = os.path.realpath(self.output_dir), os.path.realpath(self.root)
        if os.path.islink(self.root) or os.path.dirname(real) != parent or not os.path.isdir(real):
            raise PipelineError(
                f"--fresh: {self.root} is not a folder directly inside output_dir {self.output_dir} "
                f"(it resolves to {real}); nothing was deleted. Delete it yourself if it is yours to delete."
            )
        if not self.is_run_folder():
            raise PipelineError(
                f"--fresh: {self.root} holds no kd-tf run (no config.yaml that kd-tf wrote for run "
                f"{os.path.basename(self.root)!r}); nothing was deleted. Choose another run_name, or "
                f"delete the folder yourself if it is yours to delete."
            )
        shutil.rmtree(self.root)
        return True

    # ------------------------------------------------------------------ step records
    def _record_path(self, step):
        return self.path("steps", f"{step}.json")

    def _marker_path(self, step):
        return self.path("steps", f"{step}.running")

    def _aside(self, step, name=None):
        """Where a step's previous output `name` lies while it runs (a nested name is one flat entry)."""
        if name is None:
            return self.path(".aside", step)
        return self.path(".aside", step, urllib.parse.quote(name, safe=""))

    def record(self, step):
        """The record of a finished step, or None (never finished, or unreadable)."""
        try:
            with open(self._record_path(step)) as f:
                record = json.load(f)
        except (OSError, ValueError):
            return None
        return record if isinstance(record, dict) and record.get("step") == step else None

    def has_finished_steps(self):
        """Whether any step ever finished in this folder (the config is pinned then)."""
        steps = self.path("steps")
        return os.path.isdir(steps) and any(n.endswith(".json") for n in os.listdir(steps))

    def _write_marker(self, marker):
        write_json(self._marker_path(marker["step"]), marker)

    def begin(self, step):
        """Marks `step` as running (`steps/<step>.running`); call `set_aside` before it writes outputs."""
        shutil.rmtree(self._aside(step), ignore_errors=True)
        self._marker = {
            "step": step,
            "token": uuid.uuid4().hex,
            "pid": os.getpid(),
            "started": datetime.datetime.now().isoformat(timespec="seconds"),
            "outputs": [],
            "set_aside": False,
        }
        self._write_marker(self._marker)

    def set_aside(self, names):
        """Moves the running step's previous outputs away, to be restored if the step does not finish.

        Args:
            names: entries of the run folder the step (re)writes, e.g. `["teacher", "student_init"]`, or
                paths inside it (`"sweep/h256"`).
        """
        step = self._marker["step"]
        self._marker["outputs"] = sorted(set(self._marker["outputs"]) | set(names))
        self._write_marker(self._marker)
        os.makedirs(self._aside(step), exist_ok=True)
        for name in names:
            if os.path.lexists(self.path(name)) and not os.path.lexists(self._aside(step, name)):
                os.replace(self.path(name), self._aside(step, name))
        self._marker["set_aside"] = True
        self._write_marker(self._marker)

    def previous(self, name):
        """Where the running step's previous `name` lies since `set_aside`, or None if it had none.

        A step may copy what it can reuse from there (the outputs stay there until the step finishes).
        """
        path = self._aside(self._marker["step"], name)
        return path if os.path.lexists(path) else None

    def finish(self, step, seconds, forget=(), **details):
        """Records `step` as finished (its outputs are in place) and drops its previous outputs.

        Args:
            step: the step.
            seconds: how long it ran.
            forget: later steps whose records the new outputs make stale.
            **details: what the step returned (written as strict JSON: non-finite numbers become null).

        Returns:
            The record.
        """
        record = {"step": step, "seconds": round(float(seconds), 3), **details}
        write_json(self._record_path(step), {**record, "token": self._marker["token"]})
        for later in forget:
            self.forget(later)
        self._end(step)
        return record

    def abandon(self, step):
        """Ends a step that failed: its partial outputs go, its previous outputs (and record) come back."""
        self._restore(self._marker)
        self._end(step)

    def _end(self, step):
        with contextlib.suppress(FileNotFoundError):
            os.remove(self._marker_path(step))
        shutil.rmtree(self._aside(step), ignore_errors=True)
        with contextlib.suppress(OSError):
            os.rmdir(self.path(".aside"))

    def _restore(self, marker):
        step = marker["step"]
        aside = self._aside(step)
        kept = {urllib.parse.unquote(n) for n in os.listdir(aside)} if os.path.isdir(aside) else set()
        names = set(marker.get("outputs", [])) | kept
        for name in sorted(names):
            if any(name.startswith(parent + "/") for parent in names):
                continue  # inside an output restored (or removed) whole
            if name in kept:
                _remove(self.path(name))
                os.makedirs(os.path.dirname(self.path(name)), exist_ok=True)
                os.replace(self._aside(step, name), self.path(name))
            elif marker.get("set_aside"):  # there was nothing before: what is there now is partial
                _remove(self.path(name))

    def recover(self):
        """Repairs what a killed process left: each step it was running gets its previous outputs back.

        A step whose record was written before the kill keeps its new outputs. Returns the steps whose
        previous outputs were restored.
        """
        restored = []
        folder = self.path("steps")
        for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
            if not name.endswith(".running"):
                continue
            try:
                with open(os.path.join(folder, name)) as f:
                    marker = json.load(f)
            except (OSError, ValueError):
                marker = {"step": name[: -len(".running")], "outputs": [], "set_aside": False}
            step = marker["step"]
            record = self.record(step)
            if record is None or record.get("token") != marker.get("token"):
                self._restore(marker)
                restored.append(step)
                _log(
                    f"[{step}] a process (pid {marker.get('pid', '?')}) was stopped while it ran this "
                    f"step; its partial outputs were removed and the previous ones restored"
                )
            self._end(step)
        return restored

    def forget(self, step):
        """Deletes the record of `step` (it will run again)."""
        with contextlib.suppress(FileNotFoundError):
            os.remove(self._record_path(step))

    # ------------------------------------------------------------------ config
    def check_config(self):
        """Writes `config.yaml`, or refuses a different config for a run with finished steps.

        Raises:
            PipelineError: if a step finished with a config whose training keys differ (naming them).
        """
        os.makedirs(self.root, exist_ok=True)
        path = self.path("config.yaml")
        if os.path.exists(path) and self.has_finished_steps():
            previous = config_lib.config_to_dict(config_lib.load_config(path))
            changed = _changed_keys(previous, config_lib.config_to_dict(self.config))
            # Export and evaluation settings, where training runs, the number of seeds and the sweep's list
            # of students do not change trained models (a sweep student whose shape changed is trained
            # again: its record is stale, see kd_tf.pipeline.sweep).
            trained = [
                k
                for k in changed
                if not k.startswith(("export.", "evaluate.", "distribute.", "causal_lm.evaluate."))
                and k not in ("distill.seeds", "sweep.students")
            ]
            if trained:
                raise PipelineError(
                    f"{self.root} holds a run with another config ({', '.join(trained)} "
                    f"differ). Use another run_name, or --fresh to start this one again."
                )
        config_lib.save_config(self.config, path)


def _remove(path):
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.remove(path)


def _read_owner(fd):
    try:
        data = os.pread(fd, 4096, 0)
        return json.loads(data) if data.strip() else None
    except (OSError, ValueError):
        return {"pid": "?"}


def _describe(owner):
    if not owner:
        return "a process that has not written its pid yet"
    text = f"process {owner.get('pid', '?')}"
    if owner.get("host") and owner.get("host") != socket.gethostname():
        text += f" on {owner['host']}"
    if owner.get("command"):
        text += f", `{owner['command']}`"
    if owner.get("started"):
        text += f", started {owner['started']}"
    return text


def _changed_keys(a, b, prefix=""):
    keys = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            keys += _changed_keys(va, vb, f"{prefix}{k}.")
        elif va != vb:
            keys.append(prefix + k)
    return keys


__all__ = ["PipelineError", "RunFolder"]
