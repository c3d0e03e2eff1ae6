"""kd-tf: knowledge distillation of BERT-class language models with TensorFlow, Keras 3 and TF Hub.

`kd_tf.Distiller` and `kd_tf.losses` are loaded on first use, so `import kd_tf`
(and `kd-tf --help`) stays fast and does not start TensorFlow.
"""

import importlib

__version__ = "0.1.0"

_LAZY = {"Distiller": ("kd_tf.distiller", "Distiller"),
         "TeacherCache": ("kd_tf.teacher_cache", "TeacherCache"),
         "losses": ("kd_tf.losses", None)}


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module 'kd_tf' has no attribute {name!r}")
    module_name, attr = _LAZY[name]
    module = importlib.import_module(module_name)
    value = module if attr is None else getattr(module, attr)
    globals()[name] = value
    return value


def __dir__():
    return sorted(list(globals()) + list(_LAZY))
