"""The article's algorithm, knowing no task: the `Distiller`, its losses, feature matches, teacher caches
and callbacks.

A wing (`kd_tf.classify`, `kd_tf.lm`) builds models and data; this package trains a student on a frozen
teacher's softened outputs whatever the task. It imports no wing.
"""

import kd_tf
from kd_tf.distill import losses
from kd_tf.distill.cache import TeacherCache, dataset_fingerprint, model_fingerprint
from kd_tf.distill.callbacks import Constant, DistillationSchedule, Linear, StopAtTarget, StudentCheckpoint
from kd_tf.distill.distiller import Distiller, resolve_jit_compile
from kd_tf.distill.features import FeatureMatch, feature_path, layer_map
from kd_tf.distill.losses import (
    CrossEntropyDistillation,
    HardLabelCrossEntropy,
    KLDistillation,
    LogitsLoss,
    MSEDistillation,
)
from kd_tf.distill.targets import UNLABELED, split_targets, with_teacher_outputs

__all__ = [
    "Constant",
    "CrossEntropyDistillation",
    "DistillationSchedule",
    "Distiller",
    "FeatureMatch",
    "HardLabelCrossEntropy",
    "KLDistillation",
    "Linear",
    "LogitsLoss",
    "MSEDistillation",
    "StopAtTarget",
    "StudentCheckpoint",
    "TeacherCache",
    "UNLABELED",
    "dataset_fingerprint",
    "feature_path",
    "layer_map",
    "losses",
    "model_fingerprint",
    "resolve_jit_compile",
    "split_targets",
    "with_teacher_outputs",
]

kd_tf._finish_import(__name__)
