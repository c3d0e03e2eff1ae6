"""kd-tf: knowledge distillation of BERT-class language models with TensorFlow, Keras 3 and TF Hub."""

__version__ = "0.1.0"

from kd_tf.distiller import Distiller  # noqa: E402
from kd_tf import losses  # noqa: E402
