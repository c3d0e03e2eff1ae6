"""An independent pure-numpy Llama forward pass (tests only).

Works on Hugging Face tensor names (`model.layers.N.self_attn.q_proj.weight`,
Linear weights stored `(out, in)`), in float64. Two rotary conventions:

- `rope="half"`: Hugging Face / KerasHub, a head's first half rotates against
  its second half (`rotate_half`).
- `rope="interleaved"`: llama.cpp / GGUF, adjacent pairs `(x[2i], x[2i+1])`
  rotate together. Raw GGUF query/key rows (not un-permuted) need this one.

The same weights give the same logits under both conventions only if the rows
of Q and K are permuted between them, which is what the converter must undo.
"""

import numpy as np

# GGUF tensor name -> Hugging Face name, written out here on purpose (not imported
# from kd_tf) so that the test does not trust the code under test.
GGUF_TO_HF = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
GGUF_BLOCK_TO_HF = {
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


def gguf_name_to_hf(name):
    if name in GGUF_TO_HF:
        return GGUF_TO_HF[name]
    _, index, kind, suffix = name.split(".")
    return f"model.layers.{index}.{GGUF_BLOCK_TO_HF[kind]}.{suffix}"


def read_gguf_weights(path):
    """Raw (not un-permuted) float32 weights of a GGUF file under Hugging Face names."""
    import gguf

    reader = gguf.GGUFReader(path)
    return {
        gguf_name_to_hf(t.name): np.array(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32)
        for t in reader.tensors
    }


def rms_norm(x, scale, eps):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * scale


def rotary(x, theta, style):
    """Rotary position embedding of x `[T, heads, head_dim]` at positions 0..T-1."""
    steps, _, head_dim = x.shape
    inv_freq = theta ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    angles = np.arange(steps, dtype=np.float64)[:, None] * inv_freq[None, :]  # [T, hd/2]
    cos, sin = np.cos(angles)[:, None, :], np.sin(angles)[:, None, :]
    if style == "half":
        a, b = x[..., : head_dim // 2], x[..., head_dim // 2 :]
        return np.concatenate([a * cos - b * sin, b * cos + a * sin], axis=-1)
    if style == "interleaved":
        a, b = x[..., 0::2], x[..., 1::2]
        out = np.empty_like(x)
        out[..., 0::2], out[..., 1::2] = a * cos - b * sin, b * cos + a * sin
        return out
    raise ValueError(style)


def _silu(x):
    return x / (1.0 + np.exp(-x))


def llama_logits(weights, config, ids, rope="half"):
    """Logits `[T, vocab]` (float64) of one unpadded sequence of token ids.

    Args:
        weights: dict of Hugging Face tensor names to arrays.
        config: Hugging Face config dict (`hidden_size`, `num_attention_heads`,
            `num_key_value_heads`, `num_hidden_layers`, `rms_norm_eps`,
            `rope_theta`, `tie_word_embeddings`).
        ids: 1-D int array.
        rope: "half" or "interleaved" (see the module docstring).
    """
    w = {k: np.asarray(v, dtype=np.float64) for k, v in weights.items()}
    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
    head_dim = config["hidden_size"] // heads
    eps, theta = config["rms_norm_eps"], config["rope_theta"]
    steps = len(ids)
    causal = np.triu(np.full((steps, steps), -np.inf), k=1)
    x = w["model.embed_tokens.weight"][np.asarray(ids)]
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        h = rms_norm(x, w[p + "input_layernorm.weight"], eps)
        q = (h @ w[p + "self_attn.q_proj.weight"].T).reshape(steps, heads, head_dim)
        k = (h @ w[p + "self_attn.k_proj.weight"].T).reshape(steps, kv_heads, head_dim)
        v = (h @ w[p + "self_attn.v_proj.weight"].T).reshape(steps, kv_heads, head_dim)
        q, k = rotary(q, theta, rope), rotary(k, theta, rope)
        group = heads // kv_heads  # grouped-query attention: query head j uses kv head j // group
        k, v = np.repeat(k, group, axis=1), np.repeat(v, group, axis=1)
        scores = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(head_dim) + causal
        scores = np.exp(scores - scores.max(-1, keepdims=True))
        probs = scores / scores.sum(-1, keepdims=True)
        attended = np.einsum("hqk,khd->qhd", probs, v).reshape(steps, heads * head_dim)
        x = x + attended @ w[p + "self_attn.o_proj.weight"].T
        h = rms_norm(x, w[p + "post_attention_layernorm.weight"], eps)
        gate = _silu(h @ w[p + "mlp.gate_proj.weight"].T)
        x = x + (gate * (h @ w[p + "mlp.up_proj.weight"].T)) @ w[p + "mlp.down_proj.weight"].T
    x = rms_norm(x, w["model.norm.weight"], eps)
    head = w["model.embed_tokens.weight"] if config["tie_word_embeddings"] else w["lm_head.weight"]
    return x @ head.T
