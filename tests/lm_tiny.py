"""Tiny random Llama checkpoints written as llama.cpp would write them (tests only).

`write_tiny_gguf` trains a ~300-token byte-level BPE tokenizer on a short text,
draws random Llama weights in Hugging Face layout, permutes the query/key rows
the way llama.cpp's converter does (rotary pairs interleaved), quantizes the
token embedding to Q8_0 and one projection to F16, and writes a GGUF file with
the `gguf` package's GGUFWriter. It returns the Hugging Face-layout weights the
converter must recover, so tests can compare exactly.
"""

import collections
import itertools
import re

import numpy as np

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
TRAIN_TEXT = (
    "The quick brown fox jumps over the lazy dog. The dog sleeps in the sun, and the "
    "fox runs into the woods. In the morning the birds sing; in the evening the "
    "river is quiet. There are 12 trees and 3 houses near the river. Students read "
    "the books, teachers write the notes, and the models learn from the teachers."
)
TINY = {
    "num_layers": 2,
    "hidden": 32,
    "heads": 4,
    "kv_heads": 2,
    "ffn": 64,
    "eps": 1e-5,
    "theta": 10000.0,
    "context": 256,
    "num_merges": 41,
}


def byte_to_unicode():
    """GPT-2's reversible map of the 256 byte values to printable characters."""
    keep = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    table, shift = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + shift)
            shift += 1
    return table


def train_bpe(text, num_merges):
    """(tokens, merges): special tokens, the 256 byte symbols, then merged symbols."""
    table = byte_to_unicode()
    words = re.findall(r" ?[A-Za-z]+| ?[0-9]| ?[^\sA-Za-z0-9]+|\s+", text)
    counts = collections.Counter(tuple(table[b] for b in w.encode("utf-8")) for w in words)
    tokens = SPECIAL_TOKENS + [table[b] for b in range(256)]
    merges = []
    for _ in range(num_merges):
        pairs = collections.Counter()
        for word, n in counts.items():
            for pair in itertools.pairwise(word):
                pairs[pair] += n
        if not pairs:
            break
        best = max(pairs, key=lambda p: (pairs[p], p))
        merges.append(f"{best[0]} {best[1]}")
        tokens.append(best[0] + best[1])
        merged = collections.Counter()
        for word, n in counts.items():
            out, i = [], 0
            while i < len(word):
                if word[i : i + 2] == best:
                    out.append(best[0] + best[1])
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            merged[tuple(out)] += n
        counts = merged
    return tokens, merges


def llama_cpp_permute(weight, num_heads):
    """llama.cpp's row order for Q/K: each head's two halves interleaved in pairs."""
    half = weight.shape[0] // num_heads // 2
    return weight.reshape(num_heads, 2, half, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def random_hf_weights(vocab, seed=0, tie=True, **sizes):
    """Random float32 Llama weights under Hugging Face names, and their HF config."""
    s = {**TINY, **sizes}
    rng = np.random.default_rng(seed)
    hidden, head_dim = s["hidden"], s["hidden"] // s["heads"]

    def mat(rows, cols, scale=0.15):
        return (rng.standard_normal((rows, cols)) * scale).astype(np.float32)

    w = {
        "model.embed_tokens.weight": mat(vocab, hidden, 0.5),
        "model.norm.weight": (1 + 0.1 * rng.standard_normal(hidden)).astype(np.float32),
    }
    if not tie:
        w["lm_head.weight"] = mat(vocab, hidden, 0.3)
    for i in range(s["num_layers"]):
        p = f"model.layers.{i}."
        w[p + "input_layernorm.weight"] = (1 + 0.1 * rng.standard_normal(hidden)).astype(np.float32)
        w[p + "post_attention_layernorm.weight"] = (1 + 0.1 * rng.standard_normal(hidden)).astype(np.float32)
        w[p + "self_attn.q_proj.weight"] = mat(s["heads"] * head_dim, hidden, 0.4)
        w[p + "self_attn.k_proj.weight"] = mat(s["kv_heads"] * head_dim, hidden, 0.4)
        w[p + "self_attn.v_proj.weight"] = mat(s["kv_heads"] * head_dim, hidden)
        w[p + "self_attn.o_proj.weight"] = mat(hidden, s["heads"] * head_dim)
        w[p + "mlp.gate_proj.weight"] = mat(s["ffn"], hidden)
        w[p + "mlp.up_proj.weight"] = mat(s["ffn"], hidden)
        w[p + "mlp.down_proj.weight"] = mat(hidden, s["ffn"])
    config = {
        "model_type": "llama",
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": s["ffn"],
        "num_hidden_layers": s["num_layers"],
        "num_attention_heads": s["heads"],
        "num_key_value_heads": s["kv_heads"],
        "rms_norm_eps": s["eps"],
        "rope_theta": s["theta"],
        "max_position_embeddings": s["context"],
        "tie_word_embeddings": tie,
    }
    return w, config


_HF_TO_GGUF_BLOCK = {
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def _gguf_name(hf_name):
    top = {
        "model.embed_tokens.weight": "token_embd.weight",
        "model.norm.weight": "output_norm.weight",
        "lm_head.weight": "output.weight",
    }
    if hf_name in top:
        return top[hf_name]
    _, _, index, rest = hf_name.split(".", 3)
    return f"blk.{index}.{_HF_TO_GGUF_BLOCK[rest.rsplit('.', 1)[0]]}.weight"


def write_tiny_gguf(
    path, seed=0, tie=True, architecture="llama", drop_tensor=None, tokens=None, merges=None, **sizes
):
    """Write a tiny random Llama GGUF at `path`.

    Returns:
        (expected_hf_weights, hf_config, tokens, merges): the float32 weights the
        converter must produce (Hugging Face row order, after the Q8_0/F16 round
        trip), the model's Hugging Face config, the vocabulary and the merges.
    """
    import gguf

    s = {**TINY, **sizes}
    if tokens is None:
        tokens, merges = train_bpe(TRAIN_TEXT, s["num_merges"])
    weights, config = random_hf_weights(len(tokens), seed=seed, tie=tie, **s)
    writer = gguf.GGUFWriter(str(path), architecture)
    arch_key = architecture
    writer.add_string("general.name", "kd-tf tiny llama")
    writer.add_uint32(f"{arch_key}.block_count", s["num_layers"])
    writer.add_uint32(f"{arch_key}.context_length", s["context"])
    writer.add_uint32(f"{arch_key}.embedding_length", s["hidden"])
    writer.add_uint32(f"{arch_key}.feed_forward_length", s["ffn"])
    writer.add_uint32(f"{arch_key}.attention.head_count", s["heads"])
    writer.add_uint32(f"{arch_key}.attention.head_count_kv", s["kv_heads"])
    writer.add_float32(f"{arch_key}.rope.freq_base", s["theta"])
    writer.add_float32(f"{arch_key}.attention.layer_norm_rms_epsilon", s["eps"])
    writer.add_uint32(f"{arch_key}.rope.dimension_count", s["hidden"] // s["heads"])
    writer.add_uint32(f"{arch_key}.vocab_size", len(tokens))
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([3 if t in SPECIAL_TOKENS else 1 for t in tokens])
    writer.add_token_merges(merges)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    expected = {}
    for name, value in weights.items():
        if name == drop_tensor:
            continue
        stored = value
        if name.endswith("q_proj.weight"):
            stored = llama_cpp_permute(value, s["heads"])
        elif name.endswith("k_proj.weight"):
            stored = llama_cpp_permute(value, s["kv_heads"])
        if name == "model.embed_tokens.weight":
            quantized = gguf.quants.quantize(stored, gguf.GGMLQuantizationType.Q8_0)
            writer.add_tensor(_gguf_name(name), quantized, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
            value = gguf.quants.dequantize(quantized, gguf.GGMLQuantizationType.Q8_0)
        elif name == "model.layers.0.mlp.down_proj.weight":
            writer.add_tensor(_gguf_name(name), stored.astype(np.float16))
            value = value.astype(np.float16).astype(np.float32)
        else:
            writer.add_tensor(_gguf_name(name), stored)
        expected[name] = np.asarray(value, dtype=np.float32)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return expected, config, tokens, merges


def write_tiny_gpt2_folder(folder, seed=0, num_layers=2, hidden=32, heads=4, positions=64, num_merges=20):
    """A tiny random GPT-2 as a Hugging Face-format folder (config.json, model.safetensors,
    vocab.json, merges.txt). Its vocabulary is `<|endoftext|>`, the 256 byte symbols
    and `num_merges` merges: a different vocabulary from the tiny Llama's."""
    import json
    import os

    from safetensors.numpy import save_file

    tokens, merges = train_bpe(TRAIN_TEXT, num_merges)
    tokens = ["<|endoftext|>"] + tokens[len(SPECIAL_TOKENS) :]
    rng = np.random.default_rng(seed)

    def mat(*shape):
        return (rng.standard_normal(shape) * 0.1).astype(np.float32)

    w = {
        "wte.weight": mat(len(tokens), hidden),
        "wpe.weight": mat(positions, hidden),
        "ln_f.weight": 1 + mat(hidden),
        "ln_f.bias": mat(hidden),
    }
    for i in range(num_layers):  # GPT-2's Conv1D stores weights (in, out)
        p = f"h.{i}."
        w.update(
            {
                p + "ln_1.weight": 1 + mat(hidden),
                p + "ln_1.bias": mat(hidden),
                p + "ln_2.weight": 1 + mat(hidden),
                p + "ln_2.bias": mat(hidden),
                p + "attn.c_attn.weight": mat(hidden, 3 * hidden),
                p + "attn.c_attn.bias": mat(3 * hidden),
                p + "attn.c_proj.weight": mat(hidden, hidden),
                p + "attn.c_proj.bias": mat(hidden),
                p + "mlp.c_fc.weight": mat(hidden, 4 * hidden),
                p + "mlp.c_fc.bias": mat(4 * hidden),
                p + "mlp.c_proj.weight": mat(4 * hidden, hidden),
                p + "mlp.c_proj.bias": mat(hidden),
            }
        )
    os.makedirs(folder, exist_ok=True)
    save_file(w, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})
    config = {
        "model_type": "gpt2",
        "architectures": ["GPT2LMHeadModel"],
        "vocab_size": len(tokens),
        "n_layer": num_layers,
        "n_head": heads,
        "n_embd": hidden,
        "n_positions": positions,
        "resid_pdrop": 0.0,
        "layer_norm_epsilon": 1e-5,
    }
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f)
    with open(os.path.join(folder, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump({t: i for i, t in enumerate(tokens)}, f, ensure_ascii=False)
    with open(os.path.join(folder, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "\n".join(merges) + "\n")
    return str(folder)
