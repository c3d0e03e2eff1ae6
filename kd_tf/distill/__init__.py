"""The article's algorithm, knowing no task: the `Distiller`, its losses (per example or per token),
feature matches, teacher caches (dense, and sparse for causal LMs) and callbacks.

A wing (`kd_tf.classify`, `kd_tf.lm`) builds models and data; this package trains a student on a frozen
teacher's softened outputs whatever the task. It imports no wing.
"""

import kd_tf
from kd_tf.distill import losses, sparse
from kd_tf.distill.cache import TeacherCache, dataset_fingerprint, model_fingerprint
from kd_tf.distill.callbacks import Constant, DistillationSchedule, Linear, StopAtTarget, StudentCheckpoint
from kd_tf.distill.distiller import Distiller, resolve_jit_compile
from kd_tf.distill.features import FeatureMatch, feature_path, layer_map
from kd_tf.distill.losses import (
    CrossEntropyDistillation,
    GeneralizedJSDDistillation,
    HardLabelCrossEntropy,
    KLDistillation,
    LogitsLoss,
    MSEDistillation,
    ReverseKLDistillation,
)
from kd_tf.distill.sparse import SparseKLDistillation, sparse_targets
from kd_tf.distill.sparse_cache import SparseTeacherCache
from kd_tf.distill.targets import UNLABELED, split_targets, with_teacher_outputs

__all__ = [
    "Constant",
    "CrossEntropyDistillation",
    "DistillationSchedule",
    "Distiller",
    "FeatureMatch",
    "GeneralizedJSDDistillation",
    "HardLabelCrossEntropy",
    "KLDistillation",
    "Linear",
    "LogitsLoss",
    "MSEDistillation",
    "ReverseKLDistillation",
    "SparseKLDistillation",
    "SparseTeacherCache",
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
    "sparse",
    "sparse_targets",
    "split_targets",
    "with_teacher_outputs",
]

kd_tf._finish_import(__name__)
