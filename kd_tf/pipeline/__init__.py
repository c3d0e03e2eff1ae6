"""Runs: a configured experiment as recorded steps in a run folder.

* `runner`: `Pipeline`, which runs a task's steps in order and records each finished one (task-agnostic).
* `run_folder`: `RunFolder`, the folder of a run: its step records, its lock; `PipelineError`.
* `training`: fitting a model of a run (stop on a non-finite loss, keep the best finite epoch).
* `classification`: the steps of the text-classification run (`ClassificationRun`).
* `classification_data`: its data, splits and their fingerprints.
"""

import kd_tf
from kd_tf.pipeline.classification import ClassificationRun, resolve_teacher_handles
from kd_tf.pipeline.classification_data import data_fingerprint, load_splits
from kd_tf.pipeline.run_folder import PipelineError, RunFolder
from kd_tf.pipeline.runner import STEPS, Pipeline

__all__ = [
    "STEPS",
    "ClassificationRun",
    "Pipeline",
    "PipelineError",
    "RunFolder",
    "data_fingerprint",
    "load_splits",
    "resolve_teacher_handles",
]

kd_tf._finish_import(__name__)
