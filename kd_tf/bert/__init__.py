"""BERT under Keras 3 and TF Hub: the Keras BERT, TF Hub models as Keras layers, TF-Hub-format writers,
converters and presets.

* `BertEncoder` / `BertConfig` (`encoder`): the one Keras 3 BERT of kd-tf.
* `HubEncoder` / `HubPreprocessor` (`hub`): any TF Hub BERT (published handle, URL, local folder or local
  preset) as a trainable Keras 3 layer, and its preprocessor inside Keras models and `tf.data`.
* `hub_format`: encoder and preprocessor folders with the published TF Hub interface, written offline.
* `convert`: Hugging Face BERT checkpoints into such folders.
* `presets`: `HANDLES` (published models by name) and `LOCAL_PRESETS` (`kd-tf:all-MiniLM-L6-v2`).
"""

import kd_tf
from kd_tf.bert.convert import convert_hf_bert, hf_bert_config, read_hf_bert_tensors
from kd_tf.bert.encoder import DEFAULT_SEQ_LENGTH, INPUT_KEYS, BertConfig, BertEncoder
from kd_tf.bert.hub import HubEncoder, HubHandleError, HubPreprocessor, load_module
from kd_tf.bert.hub_format import (
    load_bert_encoder,
    read_encoder_metadata,
    save_bert_encoder,
    write_bert_encoder,
    write_bert_preprocessor,
    write_student_from_teacher,
)
from kd_tf.bert.presets import (
    HANDLES,
    LOCAL_PRESETS,
    MINILM,
    minilm_checkpoint_dir,
    preset_folders,
    resolve_handle,
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
    "convert_hf_bert",
    "hf_bert_config",
    "load_bert_encoder",
    "load_module",
    "minilm_checkpoint_dir",
    "preset_folders",
    "read_encoder_metadata",
    "read_hf_bert_tensors",
    "resolve_handle",
    "save_bert_encoder",
    "write_bert_encoder",
    "write_bert_preprocessor",
    "write_student_from_teacher",
]

kd_tf._finish_import(__name__)
