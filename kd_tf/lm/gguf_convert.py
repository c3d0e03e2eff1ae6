"""GGUF Llama checkpoints -> Hugging Face-format folders that KerasHub loads offline.

A GGUF file (llama.cpp's format) holds the weights, most of them quantized, the
model's sizes and its tokenizer. `convert_gguf` turns a Llama-architecture GGUF
with a byte-level BPE tokenizer into the four files that
`keras_hub.models.Llama3CausalLM.from_preset(folder)` reads without network:
`config.json`, `model.safetensors` (float32), `tokenizer.json` and
`tokenizer_config.json`.

Two details matter for correctness:

- llama.cpp permutes the rows of the query and key projections when it writes
  a GGUF, so that rotary pairs are adjacent (`x[2i], x[2i+1]`) rather than the
  two halves of a head (`x[i], x[i + head_dim/2]`) as in Hugging Face/KerasHub.
  `unpermute_rows` undoes that. A wrong un-permute still loads and generates
  plausible-looking text, but the perplexity of SmolLM2 jumps from ~20 to ~450.
- Folders appear atomically: everything is written to a hidden sibling folder
  and renamed into place when complete, so a folder that exists is complete.

The teacher of the `lm` wing, SmolLM2-135M-Instruct, comes as such a GGUF: see
`kd_tf.lm.smollm2`.
"""

import hashlib
import json
import os
import shutil
import tempfile
import time

import numpy as np

__all__ = ["MARKER_FILE", "convert_gguf", "read_gguf_config", "unpermute_rows"]

MARKER_FILE = "kd_tf_conversion.json"
# Bump when the files written by `convert_gguf` change, so caches are rebuilt.
CONVERTER_VERSION = 1

_LAYER_TENSORS = {  # GGUF block tensor -> Hugging Face Llama tensor
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_GLOBAL_TENSORS = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
# GGUF token types (llama.cpp): 1 normal, 2 unknown, 3 control, 4 user defined,
# 5 unused, 6 byte. Control and user-defined tokens are never split by BPE.
_SPECIAL_TOKEN_TYPES = (3, 4)


def _gguf_module():
    try:
        import gguf
    except ImportError as error:  # pragma: no cover - install.sh brings it
        raise ImportError("Reading GGUF files needs the `gguf` package: pip install gguf==0.19.0") from error
    return gguf


def _field(reader, key, default=None, required=True, path=""):
    field = reader.fields.get(key)
    if field is None:
        if required:
            raise ValueError(
                f"GGUF file {path} has no metadata key {key!r}; it is not a "
                "complete llama.cpp checkpoint: re-export it with llama.cpp's "
                "convert_hf_to_gguf.py."
            )
        return default
    return field.contents()


def _f32(value):
    """A float32 metadata value as the short decimal it was written from (1e-05)."""
    return float(str(np.float32(value)))


def read_gguf_config(reader, path=""):
    """Model sizes and tokenizer settings of a Llama GGUF as a Hugging Face config.

    Args:
        reader: a `gguf.GGUFReader` opened on the file.
        path: the file's path, used in error messages.

    Returns:
        A dict in the layout of a Hugging Face `LlamaConfig` (`config.json`).

    Raises:
        ValueError: if the file is not a Llama model, or uses a feature this
            converter does not handle (partial rotary dimensions, rope scaling).

    Example:

    ```python
    import gguf
    config = read_gguf_config(gguf.GGUFReader(smollm2_gguf_path()))
    config["num_hidden_layers"], config["rms_norm_eps"]  # (30, 1e-05)
    ```
    """
    arch = _field(reader, "general.architecture", path=path)
    if arch != "llama":
        raise ValueError(
            f"GGUF file {path} holds a {arch!r} model; only 'llama' "
            "checkpoints (Llama, SmolLM, TinyLlama, ...) are converted."
        )
    key = "llama."
    hidden = int(_field(reader, key + "embedding_length", path=path))
    heads = int(_field(reader, key + "attention.head_count", path=path))
    kv_heads = int(_field(reader, key + "attention.head_count_kv", heads, required=False))
    rope_dim = _field(reader, key + "rope.dimension_count", None, required=False)
    if rope_dim is not None and int(rope_dim) != hidden // heads:
        raise ValueError(
            f"GGUF file {path} rotates {rope_dim} of {hidden // heads} "
            "head dimensions (partial rotary embeddings); KerasHub's "
            "Llama rotates them all, so it cannot be converted."
        )
    if _field(reader, key + "rope.scaling.type", None, required=False) not in (None, "none"):
        raise ValueError(
            f"GGUF file {path} uses rope scaling, which this converter "
            "does not translate; use a checkpoint without it."
        )
    tokens = _field(reader, "tokenizer.ggml.tokens", path=path)
    names = {t.name for t in reader.tensors}
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": int(_field(reader, key + "vocab_size", len(tokens), required=False)),
        "hidden_size": hidden,
        "intermediate_size": int(_field(reader, key + "feed_forward_length", path=path)),
        "num_hidden_layers": int(_field(reader, key + "block_count", path=path)),
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": hidden // heads,
        "hidden_act": "silu",
        "max_position_embeddings": int(_field(reader, key + "context_length", 2048, required=False)),
        "rms_norm_eps": _f32(_field(reader, key + "attention.layer_norm_rms_epsilon", path=path)),
        "rope_theta": _f32(_field(reader, key + "rope.freq_base", 10000.0, required=False)),
        "rope_scaling": None,
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": "output.weight" not in names,
        "bos_token_id": _field(reader, "tokenizer.ggml.bos_token_id", None, required=False),
        "eos_token_id": _field(reader, "tokenizer.ggml.eos_token_id", None, required=False),
        "torch_dtype": "float32",
    }
    if len(tokens) != config["vocab_size"]:
        raise ValueError(
            f"GGUF file {path} declares {config['vocab_size']} tokens but its "
            f"tokenizer lists {len(tokens)}; the file is inconsistent."
        )
    return config


def unpermute_rows(weight, num_heads):
    """Undo llama.cpp's row permutation of a query or key projection.

    llama.cpp stores each head's rows as interleaved rotary pairs; Hugging Face
    and KerasHub rotate the first half of a head against the second half.

    Args:
        weight: array `(num_heads * head_dim, in_features)` read from a GGUF.
        num_heads: the number of heads of this projection (key/value heads
            for the key projection).

    Returns:
        The array in Hugging Face row order, same shape.

    Example:

    ```python
    rows = np.arange(8)[:, None]           # one head, head_dim 8, as stored in a GGUF
    unpermute_rows(rows, num_heads=1)[:, 0]  # [0, 2, 4, 6, 1, 3, 5, 7]
    ```
    """
    rows = weight.shape[0]
    half = rows // num_heads // 2
    grouped = weight.reshape(num_heads, half, 2, *weight.shape[1:])
    return grouped.swapaxes(1, 2).reshape(weight.shape)


def _hf_tensor_name(gguf_name):
    base, _, suffix = gguf_name.rpartition(".")
    if base.startswith("blk."):
        _, index, kind = base.split(".", 2)
        if kind in _LAYER_TENSORS:
            return f"model.layers.{int(index)}.{_LAYER_TENSORS[kind]}.{suffix}"
    elif base in _GLOBAL_TENSORS:
        return f"{_GLOBAL_TENSORS[base]}.{suffix}"
    return None


def _hf_weights(reader, config, path):
    gguf = _gguf_module()
    weights = {}
    for tensor in reader.tensors:
        name = _hf_tensor_name(tensor.name)
        if name is None:
            if tensor.name == "rope_freqs.weight":
                raise ValueError(
                    f"GGUF file {path} has rope frequency factors (Llama 3.1 style), which are not converted."
                )
            continue  # e.g. precomputed rope tables that the model recomputes
        try:
            array = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        except NotImplementedError as error:
            raise ValueError(
                f"GGUF file {path}: tensor {tensor.name} is stored as "
                f"{tensor.tensor_type.name}, which gguf cannot dequantize; "
                "re-export it as F16 or Q8_0."
            ) from error
        array = np.ascontiguousarray(array, dtype=np.float32)
        if name.endswith("q_proj.weight"):
            array = unpermute_rows(array, config["num_attention_heads"])
        elif name.endswith("k_proj.weight"):
            array = unpermute_rows(array, config["num_key_value_heads"])
        weights[name] = np.ascontiguousarray(array)
    expected = ["model.embed_tokens.weight", "model.norm.weight"] + [
        f"model.layers.{i}.{part}.weight"
        for i in range(config["num_hidden_layers"])
        for part in _LAYER_TENSORS.values()
    ]
    missing = [name for name in expected if name not in weights]
    if missing:
        raise ValueError(
            f"GGUF file {path} lacks tensors for {missing[:3]}"
            f"{' ...' if len(missing) > 3 else ''}; it is not a complete "
            "Llama checkpoint."
        )
    return weights


def _tokenizer_files(reader, path):
    model = _field(reader, "tokenizer.ggml.model", path=path)
    if model != "gpt2":
        raise ValueError(
            f"GGUF file {path} has a {model!r} tokenizer; only byte-level "
            "BPE ('gpt2': SmolLM, Llama 3, Qwen, ...) is converted."
        )
    tokens = [str(t) for t in _field(reader, "tokenizer.ggml.tokens", path=path)]
    types = _field(reader, "tokenizer.ggml.token_type", [1] * len(tokens), required=False)
    merges = [str(m) for m in _field(reader, "tokenizer.ggml.merges", path=path)]
    specials = [i for i, kind in enumerate(types) if int(kind) in _SPECIAL_TOKEN_TYPES]

    def token_at(key):
        index = _field(reader, key, None, required=False)
        return None if index is None else tokens[int(index)]

    bos, eos = token_at("tokenizer.ggml.bos_token_id"), token_at("tokenizer.ggml.eos_token_id")
    if bos is None or eos is None:
        raise ValueError(f"GGUF file {path} names no bos/eos token ids; KerasHub's tokenizer needs both.")
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    tokenizer = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {
                "id": i,
                "content": tokens[i],
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                "normalized": False,
                "special": True,
            }
            for i in specials
        ],
        "normalizer": None,
        "pre_tokenizer": byte_level,
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": {token: i for i, token in enumerate(tokens)},
            "merges": merges,
        },
    }
    tokenizer_config = {
        "bos_token": bos,
        "eos_token": eos,
        "pad_token": token_at("tokenizer.ggml.padding_token_id"),
        "unk_token": token_at("tokenizer.ggml.unknown_token_id"),
        "add_bos_token": bool(_field(reader, "tokenizer.ggml.add_bos_token", False, required=False)),
        "model_max_length": int(_field(reader, "llama.context_length", 2048, required=False)),
        "tokenizer_class": "GPT2Tokenizer",
        "clean_up_tokenization_spaces": False,
    }
    template = _field(reader, "tokenizer.chat_template", None, required=False)
    if template is not None:
        tokenizer_config["chat_template"] = template
    return tokenizer, tokenizer_config


def _write_json(folder, name, obj):
    with open(os.path.join(folder, name), "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False, indent=1)


def file_sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _check_target(out_dir):
    if os.path.isdir(out_dir) and os.listdir(out_dir):
        raise FileExistsError(
            f"Target folder {out_dir} exists and is not empty; convert into a new folder, or delete it first."
        )
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise FileExistsError(f"Target {out_dir} exists and is not a folder; choose another path.")


def convert_gguf(gguf_path, out_dir):
    """Convert a Llama GGUF file into a Hugging Face-format folder for KerasHub.

    The folder holds `config.json`, `model.safetensors` (float32, Hugging Face
    tensor names, query/key rows un-permuted), `tokenizer.json`,
    `tokenizer_config.json` and `kd_tf_conversion.json` (source and converter
    version). It is written into a hidden sibling folder and renamed into place
    once complete, so `out_dir` either does not exist or is complete.

    Args:
        gguf_path: path of a `.gguf` file with a `llama` model and a byte-level
            BPE (`gpt2`) tokenizer; weights in any type `gguf` dequantizes
            (F32, F16, BF16, Q8_0, Q4_0, Q4_1, K-quants, ...).
        out_dir: the folder to create. It must not exist or be empty.

    Returns:
        `out_dir`, as given.

    Raises:
        FileNotFoundError: if `gguf_path` does not exist.
        FileExistsError: if `out_dir` exists and is not empty.
        ValueError: if the file is not a Llama GGUF this converter handles; the
            message names the file and what is unsupported.

    Example:

    ```python
    from kd_tf.lm import convert_gguf, load_causal_lm
    folder = convert_gguf("SmolLM2-135M-Instruct.Q4_1.gguf", "smollm2_hf")
    teacher = load_causal_lm(folder)
    teacher.generate("The capital of France is", max_length=16)
    ```
    """
    gguf = _gguf_module()
    gguf_path, out_dir = os.fspath(gguf_path), os.fspath(out_dir)
    if not os.path.isfile(gguf_path):
        raise FileNotFoundError(f"GGUF file {gguf_path} not found.")
    _check_target(out_dir)
    start = time.perf_counter()
    try:
        reader = gguf.GGUFReader(gguf_path)
    except Exception as error:
        raise ValueError(
            f"{gguf_path} could not be read as a GGUF file ({error}); check "
            "that the download is complete (size, sha256)."
        ) from error
    config = read_gguf_config(reader, gguf_path)
    tokenizer, tokenizer_config = _tokenizer_files(reader, gguf_path)
    weights = _hf_weights(reader, config, gguf_path)

    from safetensors.numpy import save_file

    parent = os.path.dirname(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    temp = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.partial-", dir=parent)
    try:
        _write_json(temp, "config.json", config)
        save_file(weights, os.path.join(temp, "model.safetensors"), metadata={"format": "pt"})
        del weights
        _write_json(temp, "tokenizer.json", tokenizer)
        _write_json(temp, "tokenizer_config.json", tokenizer_config)
        _write_json(
            temp,
            MARKER_FILE,
            {
                "source": os.path.abspath(gguf_path),
                "source_bytes": os.path.getsize(gguf_path),
                "source_sha256": file_sha256(gguf_path),
                "converter_version": CONVERTER_VERSION,
                "seconds": round(time.perf_counter() - start, 2),
            },
        )
        os.chmod(temp, 0o755)
        _check_target(out_dir)
        try:
            os.replace(temp, out_dir)  # atomic; replaces only an empty folder
        except OSError as error:  # another writer got there between check and rename
            if os.path.isdir(out_dir) and os.listdir(out_dir):
                raise FileExistsError(
                    f"Target folder {out_dir} was filled while converting; convert into a new folder."
                ) from error
            raise
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    return out_dir
