"""Runs: a configured experiment as recorded steps in a run folder.

* `runner`: `Pipeline`, which runs a task's steps in order and records each finished one.
* `run_folder`: `RunFolder`, the folder of a run and its step records; `PipelineError`.
* `classification`: the steps of the text-classification run (`ClassificationRun`).
"""

import kd_tf
from kd_tf.pipeline.classification import ClassificationRun, load_splits, resolve_teacher_handles
from kd_tf.pipeline.run_folder import PipelineError, RunFolder
from kd_tf.pipeline.runner import STEPS, Pipeline

__all__ = [
    "STEPS",
    "ClassificationRun",
    "Pipeline",
    "PipelineError",
    "RunFolder",
    "load_splits",
    "resolve_teacher_handles",
]

kd_tf._finish_import(__name__)
