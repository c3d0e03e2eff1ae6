"""One Keras 3 implementation of the BERT encoder.

Embeddings (word + position + segment, LayerNorm, dropout), post-LayerNorm
transformer blocks with exact GELU, and a tanh pooler over `[CLS]`: the
architecture of the original BERT and of every TF Hub `bert_en_uncased_*`
encoder. `kd_tf.bert.hub_format` saves it with the TF Hub interface; nothing else in
kd-tf builds a transformer.

The call takes the TF Hub input dict (`input_word_ids`, `input_mask`,
`input_type_ids`, int32 `[batch, seq]`) and returns the TF Hub output dict
(`pooled_output`, `sequence_output`, `encoder_outputs`, `default`).
"""

from __future__ import annotations

import dataclasses
import math

import keras
import tensorflow as tf

INPUT_KEYS = ("input_word_ids", "input_mask", "input_type_ids")
"""The TF Hub BERT input dict: int32 `[batch, seq]` word ids, padding mask, segment ids."""

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
"""The special WordPiece tokens every BERT vocabulary kd-tf writes or exports must hold."""

DEFAULT_SEQ_LENGTH = 128
"""Tokens per example when nothing else says (the plain call of bert_en_uncased_preprocess/3)."""


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """Sizes and regularisation of a BERT encoder.

    Args:
        vocab_size: number of WordPiece ids.
        hidden_size: width H of every token vector.
        num_layers: number of transformer blocks L.
        num_heads: attention heads A; must divide `hidden_size`.
        intermediate_size: width of the feed-forward layer (4H in BERT).
        max_position_embeddings: longest sequence the encoder accepts.
        type_vocab_size: number of segment ids (2 for sentence pairs).
        dropout_rate: dropout on embeddings and block outputs (training only).
        attention_dropout_rate: dropout on attention probabilities.
        layer_norm_epsilon: LayerNorm epsilon (1e-12 in BERT).
        initializer_range: stddev of the truncated-normal initialiser.

    Raises:
        ValueError: if a size is not positive or `num_heads` does not divide
            `hidden_size`.

    Example:
    ```python
    BertConfig(vocab_size=100, hidden_size=32, num_layers=2, num_heads=2,
               intermediate_size=64).head_size
    # 16
    ```
    """

    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    dropout_rate: float = 0.1
    attention_dropout_rate: float = 0.1
    layer_norm_epsilon: float = 1e-12
    initializer_range: float = 0.02

    def __post_init__(self):
        for name in (
            "vocab_size",
            "hidden_size",
            "num_layers",
            "num_heads",
            "intermediate_size",
            "max_position_embeddings",
            "type_vocab_size",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"BertConfig.{name} must be a positive integer, got {value!r}.")
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"BertConfig.num_heads={self.num_heads} must divide "
                f"hidden_size={self.hidden_size}; choose e.g. "
                f"num_heads={max(1, self.hidden_size // 64)}."
            )
        for name in ("dropout_rate", "attention_dropout_rate"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"BertConfig.{name} must be in [0, 1).")

    @property
    def head_size(self) -> int:
        return self.hidden_size // self.num_heads

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "BertConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


def _dropout(x, rate, training):
    """Stateless-variable dropout: no seed variable to save or mirror."""
    if training and rate > 0.0:
        return tf.nn.dropout(x, rate=rate)
    return x


def padding_bias(mask):
    """The additive attention bias of a padding mask.

    0 for real tokens, -10000 for padding: added to the attention scores, it
    keeps every token from attending to padding.

    Args:
        mask: float `[B, T]`, 1 for tokens and 0 for padding.

    Returns:
        `[B, 1, 1, T]` in the mask's dtype.

    Example:
    ```python
    padding_bias(tf.constant([[1.0, 0.0]]))[0, 0, 0].numpy().tolist()  # [0.0, -10000.0]
    ```
    """
    return (1.0 - mask[:, tf.newaxis, tf.newaxis, :]) * -10000.0


def _initializer(config: BertConfig):
    return keras.initializers.TruncatedNormal(stddev=config.initializer_range)


class BertEmbeddings(keras.layers.Layer):
    """Word + position + segment embeddings, then LayerNorm and dropout.

    Args:
        config: a `BertConfig`.
        word_lookup: optional layer from int32 word ids `[batch, seq]` to word vectors
            `[batch, seq, hidden]`, used instead of gathering rows of the `word_embeddings` weight
            (`kd_tf.export.int8_rows` passes one that stores the table as int8 rows).
    """

    def __init__(self, config: BertConfig, word_lookup=None, **kwargs):
        super().__init__(**kwargs)
        self.config = config
        self.word_lookup = word_lookup
        init = _initializer(config)
        self.word_embeddings = self.add_weight(
            shape=(config.vocab_size, config.hidden_size), initializer=init, name="word_embeddings"
        )
        self.position_embeddings = self.add_weight(
            shape=(config.max_position_embeddings, config.hidden_size),
            initializer=init,
            name="position_embeddings",
        )
        self.type_embeddings = self.add_weight(
            shape=(config.type_vocab_size, config.hidden_size), initializer=init, name="type_embeddings"
        )
        self.layer_norm = keras.layers.LayerNormalization(
            epsilon=config.layer_norm_epsilon, name="layer_norm"
        )
        self.layer_norm.build((None, None, config.hidden_size))

    def call(self, word_ids, type_ids, training=False):
        seq_length = tf.shape(word_ids)[1]
        if self.word_lookup is None:
            x = tf.gather(self.word_embeddings, word_ids)
        else:
            x = self.word_lookup(word_ids)
        x += self.position_embeddings[tf.newaxis, :seq_length, :]
        x += tf.gather(self.type_embeddings, type_ids)
        return _dropout(self.layer_norm(x), self.config.dropout_rate, training)


class TransformerBlock(keras.layers.Layer):
    """Post-LayerNorm transformer block: self-attention, then a GELU FFN."""

    def __init__(self, config: BertConfig, **kwargs):
        super().__init__(**kwargs)
        self.config = config
        h, init = config.hidden_size, _initializer(config)

        def dense(units, name, activation=None):
            layer = keras.layers.Dense(units, activation=activation, kernel_initializer=init, name=name)
            return layer

        self.query = dense(h, "query")
        self.key = dense(h, "key")
        self.value = dense(h, "value")
        self.attention_output = dense(h, "attention_output")
        self.attention_layer_norm = keras.layers.LayerNormalization(
            epsilon=config.layer_norm_epsilon, name="attention_layer_norm"
        )
        self.intermediate = dense(
            config.intermediate_size,
            "intermediate",
            activation=lambda x: keras.activations.gelu(x, approximate=False),
        )
        self.output_dense = dense(h, "output")
        self.output_layer_norm = keras.layers.LayerNormalization(
            epsilon=config.layer_norm_epsilon, name="output_layer_norm"
        )
        for layer in (
            self.query,
            self.key,
            self.value,
            self.attention_output,
            self.attention_layer_norm,
            self.output_layer_norm,
        ):
            layer.build((None, None, h))
        self.intermediate.build((None, None, h))
        self.output_dense.build((None, None, config.intermediate_size))

    def _split_heads(self, x):
        batch, seq = tf.shape(x)[0], tf.shape(x)[1]
        x = tf.reshape(x, [batch, seq, self.config.num_heads, self.config.head_size])
        return tf.transpose(x, [0, 2, 1, 3])

    def internals(self, x, attention_bias, training=False):
        """The block's intermediate tensors (what `kd_tf.bert.narrow` measures).

        Args:
            x: the block input `[B, T, H]`.
            attention_bias: `padding_bias` of the input mask.
            training: whether dropout is on.

        Returns:
            A dict of tensors: `query`, `key`, `value` `[B, T, H]` (heads side
            by side), `context` `[B, T, H]` (the attended values of every
            head, before the output projection), `attention` `[B, T, H]`
            (after the first LayerNorm), `intermediate` `[B, T, I]` (after
            GELU) and `output` `[B, T, H]` (what `call` returns).

        Example:
        ```python
        parts = encoder.blocks[0].internals(x, padding_bias(mask))
        parts["intermediate"].shape  # TensorShape([B, T, 1536])
        ```
        """
        query, key, value = self.query(x), self.key(x), self.value(x)
        q, k, v = self._split_heads(query), self._split_heads(key), self._split_heads(value)
        scores = tf.matmul(q, k, transpose_b=True)
        scores = scores / math.sqrt(self.config.head_size) + attention_bias
        probs = tf.nn.softmax(scores, axis=-1)
        probs = _dropout(probs, self.config.attention_dropout_rate, training)
        context = tf.transpose(tf.matmul(probs, v), [0, 2, 1, 3])
        context = tf.reshape(context, tf.shape(x))
        attended = _dropout(self.attention_output(context), self.config.dropout_rate, training)
        attention = self.attention_layer_norm(x + attended)
        intermediate = self.intermediate(attention)
        ffn = _dropout(self.output_dense(intermediate), self.config.dropout_rate, training)
        output = self.output_layer_norm(attention + ffn)
        return {
            "query": query,
            "key": key,
            "value": value,
            "context": context,
            "attention": attention,
            "intermediate": intermediate,
            "output": output,
        }

    def call(self, x, attention_bias, training=False):
        return self.internals(x, attention_bias, training=training)["output"]


class BertEncoder(keras.Model):
    """A BERT encoder with the TF Hub input and output dicts.

    Args:
        config: a `BertConfig`.
        word_lookup: optional layer that replaces the word-embedding gather (see `BertEmbeddings`).

    Example:
    ```python
    config = BertConfig(vocab_size=100, hidden_size=32, num_layers=2,
                        num_heads=2, intermediate_size=64)
    encoder = BertEncoder(config)
    ids = tf.constant([[2, 5, 3, 0]])
    out = encoder({"input_word_ids": ids, "input_mask": tf.sign(ids),
                   "input_type_ids": tf.zeros_like(ids)})
    out["sequence_output"].shape, len(out["encoder_outputs"])  # (TensorShape([1, 4, 32]), 2)
    ```
    """

    def __init__(self, config: BertConfig, word_lookup=None, **kwargs):
        kwargs.setdefault("name", "bert_encoder")
        super().__init__(**kwargs)
        self.config = config
        self.embeddings = BertEmbeddings(config, word_lookup=word_lookup, name="embeddings")
        self.blocks = [TransformerBlock(config, name=f"layer_{i}") for i in range(config.num_layers)]
        self.pooler = keras.layers.Dense(
            config.hidden_size, activation="tanh", kernel_initializer=_initializer(config), name="pooler"
        )
        self.pooler.build((None, config.hidden_size))
        self.built = True

    def call(self, inputs, training=False):
        missing = [k for k in INPUT_KEYS if k not in inputs]
        if missing:
            raise ValueError(
                f"BertEncoder inputs lack {missing}; pass a dict with "
                f"{list(INPUT_KEYS)} (what a TF Hub BERT preprocessor returns)."
            )
        word_ids = tf.cast(inputs["input_word_ids"], tf.int32)
        mask = tf.cast(inputs["input_mask"], self.compute_dtype)
        type_ids = tf.cast(inputs["input_type_ids"], tf.int32)
        attention_bias = padding_bias(mask)
        x = self.embeddings(word_ids, type_ids, training=training)
        encoder_outputs = []
        for block in self.blocks:
            x = block(x, attention_bias, training=training)
            encoder_outputs.append(x)
        pooled = self.pooler(x[:, 0, :])
        return {
            "pooled_output": pooled,
            "sequence_output": x,
            "encoder_outputs": encoder_outputs,
            "default": pooled,
        }

    def get_config(self):
        return {"config": self.config.to_dict(), "name": self.name}

    @classmethod
    def from_config(cls, config):
        return cls(BertConfig.from_dict(config["config"]), name=config.get("name"))
