"""Runs: a configured experiment as recorded steps in a run folder.

* `runner`: `Pipeline`, which runs a task's steps in order and records each finished one (task-agnostic).
* `run_folder`: `RunFolder`, the folder of a run: its step records, its lock; `PipelineError`.
* `training`: fitting a model of a run (stop on a non-finite loss, keep the best finite epoch).
* `classification`: the steps of the text-classification run (`ClassificationRun`).
* `causal_lm`: the steps of the causal-LM distillation run (`CausalLMRun`, `task: causal_lm`).
* `classification_data`: its data, splits and their fingerprints.
* `students`: the distilled and the label-only student, trained for one seed.
* `seeds`: the seeds step (both students again with more seeds, scored on the test split).
* `teacher`: the teacher's handles, fine-tuning and cached logits.
* `student_init`: the encoder a student starts from (cut, sliced narrower, vocabulary pruned).
* `hidden_states`: hidden-state distillation (`distill.hidden_states`).
* `measure`: every model measured alike (test predictions, the same `.tflite` files timed in turns).
* `sweep`: `SweepRun`, the compression sweep (`kd-tf sweep`).
* `finished_run`: a finished run opened from its folder (`open_run`, `predict_texts`).
* `test_sets`: its models scored on other labelled files (`evaluate_test_file`).
"""

import kd_tf
from kd_tf.pipeline.causal_lm import CausalLMRun
from kd_tf.pipeline.classification import ClassificationRun, resolve_teacher_handles
from kd_tf.pipeline.classification_data import data_fingerprint, load_splits
from kd_tf.pipeline.finished_run import open_run, predict_texts, read_texts
from kd_tf.pipeline.run_folder import PipelineError, RunFolder
from kd_tf.pipeline.runner import STEPS, Pipeline
from kd_tf.pipeline.students import seed_values
from kd_tf.pipeline.sweep import SweepRun
from kd_tf.pipeline.test_sets import evaluate_test_file

__all__ = [
    "STEPS",
    "CausalLMRun",
    "ClassificationRun",
    "Pipeline",
    "PipelineError",
    "RunFolder",
    "SweepRun",
    "data_fingerprint",
    "evaluate_test_file",
    "load_splits",
    "open_run",
    "predict_texts",
    "read_texts",
    "resolve_teacher_handles",
    "seed_values",
]

kd_tf._finish_import(__name__)
