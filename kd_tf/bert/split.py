"""A BERT encoder cut in two at a block: the frozen blocks below, the trainable blocks above.

Fine-tuning only the top blocks of an encoder leaves the outputs of the blocks below unchanged from one
epoch to the next, so they can be computed once and reused (the same trick as the teacher cache):

* `EncoderBelow`: the embeddings and the lower blocks, TF Hub input dict in, `{"hidden_states",
  "input_mask"}` out, always run in inference mode (its outputs are what gets cached);
* `EncoderAbove`: the top blocks and the pooler, `{"hidden_states", "input_mask"}` in, the TF Hub output
  dict (`sequence_output`, `pooled_output`) out;
* `split_encoder`: both, sharing the weights of one `kd_tf.bert.BertEncoder`, so training `EncoderAbove`
  trains the encoder itself.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from kd_tf.bert.encoder import BertEncoder, padding_bias

HIDDEN_STATES = "hidden_states"


class EncoderBelow(keras.Model):
    """The embeddings and the first blocks of a `BertEncoder` (weights shared, never trained).

    Args:
        encoder: the `kd_tf.bert.BertEncoder`.
        num_blocks: how many of its blocks, from the bottom (0: the embeddings alone).

    Example:
    ```python
    below = EncoderBelow(encoder, 4)
    below(inputs)["hidden_states"].shape  # [batch, seq, hidden]
    ```
    """

    def __init__(self, encoder, num_blocks, **kwargs):
        kwargs.setdefault("name", "encoder_below")
        super().__init__(**kwargs)
        self.embeddings = encoder.embeddings
        self.blocks = list(encoder.blocks[:num_blocks])
        self.trainable = False

    def call(self, inputs, training=False):
        del training  # what is below is frozen: always its inference-mode output, the one cached
        mask = tf.cast(inputs["input_mask"], self.compute_dtype)
        word_ids = tf.cast(inputs["input_word_ids"], tf.int32)
        x = self.embeddings(word_ids, tf.cast(inputs["input_type_ids"], tf.int32))
        bias = padding_bias(mask)
        for block in self.blocks:
            x = block(x, bias)
        return {HIDDEN_STATES: x, "input_mask": tf.cast(inputs["input_mask"], tf.int32)}


class EncoderAbove(keras.Model):
    """The top blocks and the pooler of a `BertEncoder` (weights shared, trainable).

    Args:
        encoder: the `kd_tf.bert.BertEncoder`.
        num_blocks: how many of its blocks, from the top (0: the pooler alone).

    Example:
    ```python
    above = EncoderAbove(encoder, 2)
    above(below(inputs))["sequence_output"]  # equals encoder(inputs)["sequence_output"]
    ```
    """

    def __init__(self, encoder, num_blocks, **kwargs):
        kwargs.setdefault("name", "encoder_above")
        super().__init__(**kwargs)
        first = len(encoder.blocks) - num_blocks
        self.blocks = list(encoder.blocks[first:])
        self.pooler = encoder.pooler

    def call(self, inputs, training=False):
        x = inputs[HIDDEN_STATES]
        bias = padding_bias(tf.cast(inputs["input_mask"], x.dtype))
        for block in self.blocks:
            x = block(x, bias, training=training)
        pooled = self.pooler(x[:, 0, :])
        return {"sequence_output": x, "pooled_output": pooled, "default": pooled}


def split_encoder(encoder, top_blocks):
    """Cuts `encoder` below its `top_blocks` top blocks.

    `EncoderAbove(EncoderBelow(inputs))` equals the encoder's own `sequence_output` and `pooled_output` in
    inference mode; both parts share its weights.

    Args:
        encoder: a `kd_tf.bert.BertEncoder` (e.g. from `kd_tf.bert.load_bert_encoder`).
        top_blocks: how many blocks stay trainable, from 0 (only the pooler) to the encoder's depth.

    Returns:
        `(EncoderBelow, EncoderAbove)`.

    Raises:
        TypeError: if `encoder` is not a `BertEncoder` (a published TF Hub SavedModel cannot be cut).
        ValueError: if `top_blocks` is outside 0..depth.

    Example:
    ```python
    below, above = split_encoder(load_bert_encoder("/tmp/tiny_bert"), top_blocks=1)
    ```
    """
    if not isinstance(encoder, BertEncoder):
        raise TypeError(
            f"split_encoder needs a kd_tf.bert.BertEncoder, got {type(encoder).__name__}; load a kd-tf "
            f"encoder folder with kd_tf.bert.load_bert_encoder (published TF Hub SavedModels cannot be cut)."
        )
    depth = len(encoder.blocks)
    if not 0 <= int(top_blocks) <= depth:
        raise ValueError(f"top_blocks={top_blocks}; the encoder has {depth} blocks: choose 0..{depth}.")
    top_blocks = int(top_blocks)
    return EncoderBelow(encoder, depth - top_blocks), EncoderAbove(encoder, top_blocks)


__all__ = ["HIDDEN_STATES", "EncoderAbove", "EncoderBelow", "split_encoder"]
