"""The folder of one run and the records of its finished steps.

A run lives in `<output_dir>/<run_name>/`: its resolved `config.yaml`, one folder per step's output, and
`steps/<step>.json`, written when a step finishes. A rerun reuses finished steps; a run stopped between
steps resumes where it stopped; a run folder refuses a config whose training keys differ.
"""

from __future__ import annotations

import contextlib
import json
import os

from kd_tf import config as config_lib


class PipelineError(RuntimeError):
    """A run cannot go on; the message says why and what to do."""


class RunFolder:
    """The folder of one run and the records of its finished steps.

    Args:
        config: a `kd_tf.config.RunConfig`.

    Example:
    ```python
    run = RunFolder(load_config("configs/demo.yaml"))
    run.path("teacher", "model.keras")  # 'saved_models/demo/teacher/model.keras'
    ```
    """

    def __init__(self, config):
        self.config = config
        self.root = config.run_dir

    def path(self, *parts):
        return os.path.join(self.root, *parts)

    def record(self, step):
        """The record of a finished step, or None."""
        try:
            with open(self.path("steps", f"{step}.json")) as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    def finish(self, step, seconds, **details):
        os.makedirs(self.path("steps"), exist_ok=True)
        record = {"step": step, "seconds": round(float(seconds), 3), **details}
        tmp = self.path("steps", f".{step}.json.tmp")
        with open(tmp, "w") as f:
            json.dump(record, f, indent=1)
        os.replace(tmp, self.path("steps", f"{step}.json"))
        return record

    def forget(self, step):
        with contextlib.suppress(FileNotFoundError):
            os.remove(self.path("steps", f"{step}.json"))

    def check_config(self):
        """Writes `config.yaml`, or refuses a different config for an existing run."""
        os.makedirs(self.root, exist_ok=True)
        path = self.path("config.yaml")
        current = config_lib.config_to_dict(self.config)
        if os.path.exists(path):
            previous = config_lib.load_config(path)
            old = config_lib.config_to_dict(previous)
            changed = _changed_keys(old, current)
            # Export and evaluation settings do not change trained models.
            trained = [k for k in changed if not k.startswith(("export.", "evaluate."))]
            if trained:
                raise PipelineError(
                    f"{self.root} holds a run with another config ({', '.join(trained)} "
                    f"differ). Use another run_name, or --fresh to start this one again."
                )
        config_lib.save_config(self.config, path)


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
