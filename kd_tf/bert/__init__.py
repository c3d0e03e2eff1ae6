"""BERT under Keras 3 and TF Hub: the Keras BERT, TF Hub models as Keras layers, TF-Hub-format writers,
converters and presets.

* `BertEncoder` / `BertConfig` (`encoder`): the one Keras 3 BERT of kd-tf.
* `HubEncoder` / `HubPreprocessor` (`hub`): any TF Hub BERT (published handle, URL, local folder or local
  preset) as a trainable Keras 3 layer, and its preprocessor inside Keras models and `tf.data`.
* `hub_format`: encoder and preprocessor folders with the published TF Hub interface, written offline.
* `convert`: Hugging Face BERT checkpoints into such folders.
* `vocabulary`: a WordPiece vocabulary pruned to a task corpus (`count_wordpieces`, `prune_vocabulary`,
  `write_pruned_bert`), so a student keeps only the embedding rows its texts need.
* `narrow`: narrower, shallower students sliced from a teacher by measured importance
  (`write_narrow_student`, `narrow_projection`).
* `split`: an encoder cut at a block (`split_encoder`): frozen blocks below, trainable blocks above.
* `presets`: `HANDLES` (published models by name) and `LOCAL_PRESETS` (`kd-tf:all-MiniLM-L6-v2`).
"""

import kd_tf
from kd_tf.bert.convert import convert_hf_bert, hf_bert_config, read_hf_bert_tensors
from kd_tf.bert.encoder import DEFAULT_SEQ_LENGTH, INPUT_KEYS, BertConfig, BertEncoder, padding_bias
from kd_tf.bert.hub import HubEncoder, HubHandleError, HubPreprocessor, load_module
from kd_tf.bert.hub_format import (
    SPECIAL_TOKENS,
    load_bert_encoder,
    read_encoder_metadata,
    save_bert_encoder,
    write_bert_encoder,
    write_bert_preprocessor,
    write_pruned_encoder,
    write_student_from_teacher,
)
from kd_tf.bert.narrow import narrow_encoder, narrow_projection, unit_importance, write_narrow_student
from kd_tf.bert.presets import (
    HANDLES,
    LOCAL_PRESETS,
    MINILM,
    minilm_checkpoint_dir,
    preset_folders,
    resolve_handle,
)
from kd_tf.bert.vocabulary import (
    PrunedVocabulary,
    WordpieceCounts,
    count_wordpieces,
    preprocessor_vocab_file,
    prune_vocabulary,
    read_vocabulary,
    write_pruned_bert,
)

__all__ = [
    "BertConfig",
    "BertEncoder",
    "DEFAULT_SEQ_LENGTH",
    "HANDLES",
    "HubEncoder",
    "HubHandleError",
    "HubPreprocessor",
    "INPUT_KEYS",
    "LOCAL_PRESETS",
    "MINILM",
    "PrunedVocabulary",
    "SPECIAL_TOKENS",
    "WordpieceCounts",
    "convert_hf_bert",
    "count_wordpieces",
    "hf_bert_config",
    "load_bert_encoder",
    "load_module",
    "minilm_checkpoint_dir",
    "narrow_encoder",
    "narrow_projection",
    "padding_bias",
    "preprocessor_vocab_file",
    "preset_folders",
    "prune_vocabulary",
    "read_encoder_metadata",
    "read_hf_bert_tensors",
    "read_vocabulary",
    "resolve_handle",
    "save_bert_encoder",
    "unit_importance",
    "write_bert_encoder",
    "write_bert_preprocessor",
    "write_narrow_student",
    "write_pruned_bert",
    "write_pruned_encoder",
    "write_student_from_teacher",
]

kd_tf._finish_import(__name__)
