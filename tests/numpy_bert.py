"""An independent pure-numpy BERT forward pass on Hugging Face tensors (tests only)."""

import math

import numpy as np


def _layer_norm(x, gamma, beta, eps):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * gamma + beta


def _gelu(x):
    erf = np.vectorize(math.erf)
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def _linear(x, t, name):
    return x @ t[name + ".weight"].T + t[name + ".bias"]


def _softmax(x):
    x = x - x.max(-1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(-1, keepdims=True)


def bert_forward(t, hf_config, ids, mask):
    """Returns sequence_output [B, T, H] for int arrays ids, mask [B, T]."""
    t = {k: v.astype(np.float64) for k, v in t.items()}
    eps = hf_config.get("layer_norm_eps", 1e-12)
    heads = hf_config["num_attention_heads"]
    b, n = ids.shape
    x = (
        t["embeddings.word_embeddings.weight"][ids]
        + t["embeddings.position_embeddings.weight"][np.arange(n)][None]
        + t["embeddings.token_type_embeddings.weight"][np.zeros_like(ids)]
    )
    x = _layer_norm(x, t["embeddings.LayerNorm.weight"], t["embeddings.LayerNorm.bias"], eps)
    h = x.shape[-1]
    d = h // heads
    bias = (1.0 - mask[:, None, None, :]) * -10000.0
    for i in range(hf_config["num_hidden_layers"]):
        p = f"encoder.layer.{i}."

        def split(y):
            return y.reshape(b, n, heads, d).transpose(0, 2, 1, 3)

        q = split(_linear(x, t, p + "attention.self.query"))
        k = split(_linear(x, t, p + "attention.self.key"))
        v = split(_linear(x, t, p + "attention.self.value"))
        probs = _softmax(q @ k.transpose(0, 1, 3, 2) / math.sqrt(d) + bias)
        ctx = (probs @ v).transpose(0, 2, 1, 3).reshape(b, n, h)
        x = _layer_norm(
            x + _linear(ctx, t, p + "attention.output.dense"),
            t[p + "attention.output.LayerNorm.weight"],
            t[p + "attention.output.LayerNorm.bias"],
            eps,
        )
        ffn = _linear(_gelu(_linear(x, t, p + "intermediate.dense")), t, p + "output.dense")
        x = _layer_norm(x + ffn, t[p + "output.LayerNorm.weight"], t[p + "output.LayerNorm.bias"], eps)
    return x


def mean_pool(seq, mask):
    m = mask[..., None].astype(seq.dtype)
    return (seq * m).sum(1) / m.sum(1)
