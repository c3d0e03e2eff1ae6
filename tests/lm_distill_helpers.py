"""Shared pieces of the causal-LM distillation tests: a tiny random Llama teacher and numpy references."""

import numpy as np

from kd_tf.lm import TextCorpus, convert_gguf, load_causal_lm, make_lm_dataset
from tests.lm_tiny import write_tiny_gguf

PAIRS = TextCorpus(
    texts=[" the fox runs into the woods.", " a dog sleeps."],
    prompts=["Q: what runs?\nA:", "Q: and the dog?\nA:"],
)


def tiny_llama(folder, seed=5):
    """A tiny random 2-block Llama (hidden 32, ~300-token byte-level BPE vocabulary, `<|endoftext|>` = 0)
    loaded through KerasHub from a GGUF file written like llama.cpp's."""
    write_tiny_gguf(folder / "tiny.gguf", seed=seed)
    return load_causal_lm(convert_gguf(folder / "tiny.gguf", folder / "hf"))


def padded_prompt_batch(model, length=24):
    """One batch of two prompt/response windows with padding: `(x, labels, sample_weight)` tensors whose
    weights are 0 on the prompts and the padding."""
    return next(iter(make_lm_dataset(PAIRS, model, length, batch_size=2, packing=False)))


def log_softmax(logits, temperature=1.0):
    z = np.asarray(logits, np.float64) / temperature
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def kl(log_p, log_q):
    """`KL(p || q)` over the last axis, in float64."""
    return (np.exp(log_p) * (log_p - log_q)).sum(axis=-1)


def toy_teacher(vocabulary=50, seed=1):
    """A tiny causal-LM-shaped Keras model: `{"token_ids", "padding_mask"}` -> logits `[B, L, vocabulary]`
    (an embedding and a dense layer), fast enough for subprocesses."""
    import keras

    keras.utils.set_random_seed(seed)
    ids = keras.Input((None,), dtype="int32", name="token_ids")
    mask = keras.Input((None,), dtype="bool", name="padding_mask")
    hidden = keras.layers.Embedding(vocabulary, 8)(ids)
    logits = keras.layers.Dense(vocabulary)(hidden) * 3.0
    return keras.Model({"token_ids": ids, "padding_mask": mask}, logits, name="toy_teacher")


def toy_windows(n=40, length=6, vocabulary=50, seed=0):
    """`n` windows in the format of `kd_tf.lm.lm_windows` (the last one half padded)."""
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocabulary, size=(n, length + 1)).astype("int32")
    mask = np.ones((n, length), bool)
    mask[-1, length // 2 :] = False
    weights = mask.astype("float32")
    x = {"token_ids": ids[:, :-1], "padding_mask": mask}
    return tf.data.Dataset.from_tensor_slices((x, ids[:, 1:], weights))
