"""Text classifiers on TF Hub BERT encoders: encoder + pooling + head.

`build_classifier` makes the Keras model that kd-tf fine-tunes as a teacher
and distils as a student: the TF Hub input dict in, class logits out.
`feature_model` exposes the encoder's hidden states next to the logits for
feature distillation. `parameter_count` does the size accounting.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from kd_tf.bert.encoder import INPUT_KEYS
from kd_tf.bert.hub import HubEncoder
from kd_tf.distill.views import symbolic_output

POOLINGS = ("pooled", "cls", "mean")


@keras.saving.register_keras_serializable(package="kd_tf")
class MaskedMeanPooling(keras.layers.Layer):
    """Mean of token vectors over real (mask = 1) tokens only.

    Call arguments:
        sequence: float `[batch, seq, hidden]`.
        mask: int or float `[batch, seq]`, 1 for tokens, 0 for padding.

    Returns:
        `[batch, hidden]`.

    Example:
    ```python
    MaskedMeanPooling()(tf.ones([1, 3, 2]), tf.constant([[1, 1, 0]])).shape  # TensorShape([1, 2])
    ```
    """

    def call(self, sequence, mask):
        mask = tf.cast(mask, sequence.dtype)[:, :, tf.newaxis]
        total = tf.reduce_sum(sequence * mask, axis=1)
        return total / tf.maximum(tf.reduce_sum(mask, axis=1), 1.0)


def encoder_inputs(seq_length=None):
    """The TF Hub BERT input dict as `keras.Input`s (int32 `[batch, seq_length]`)."""
    return {k: keras.Input((seq_length,), dtype="int32", name=k) for k in INPUT_KEYS}


def build_classifier(
    encoder,
    num_classes,
    pooling="pooled",
    dropout=0.1,
    seq_length=None,
    trainable_encoder=True,
    freeze_word_embeddings=False,
    name=None,
):
    """Builds a classifier: TF Hub BERT encoder, pooling, dropout, dense logits.

    Args:
        encoder: a TF Hub handle (a `kd_tf.bert.HANDLES` name, URL or local
            folder) or a `HubEncoder`.
        num_classes: number of labels (>= 2).
        pooling: `"pooled"` (the encoder's tanh pooler over `[CLS]`), `"cls"`
            (the raw `[CLS]` vector) or `"mean"` (mean of `sequence_output`
            over real tokens; right for sentence-embedding models such as
            all-MiniLM-L6-v2).
        dropout: dropout rate before the head.
        seq_length: fixed sequence length, or None for any (bucketed batches).
        trainable_encoder: whether the encoder is fine-tuned.
        freeze_word_embeddings: keep the encoder's word-embedding table fixed
            while the rest is fine-tuned (faster; see `HubEncoder(frozen=)`).
        name: model name.

    Returns:
        A functional `keras.Model` from the input dict to logits
        `[batch, num_classes]`. Its encoder layer is named `"encoder"` and its
        head `"logits"`.

    Raises:
        ValueError: on an unknown `pooling` or `num_classes < 2`.
        kd_tf.bert.HubHandleError: if the handle cannot be loaded.

    Example:
    ```python
    model = build_classifier("/tmp/tiny_bert", num_classes=2, pooling="mean")
    model.output_shape  # (None, 2)
    ```
    """
    check_head(num_classes, pooling)
    if not isinstance(encoder, HubEncoder):
        encoder = HubEncoder(
            encoder,
            trainable=trainable_encoder,
            name="encoder",
            frozen=("word_embeddings",) if freeze_word_embeddings else (),
        )
    inputs = encoder_inputs(seq_length)
    logits = classifier_head(encoder(inputs), inputs["input_mask"], num_classes, pooling, dropout)
    return keras.Model(inputs, logits, name=name)


def check_head(num_classes, pooling):
    """Raises ValueError on an unknown `pooling` or `num_classes < 2`."""
    if pooling not in POOLINGS:
        raise ValueError(f"pooling={pooling!r}; choose one of {POOLINGS}.")
    if int(num_classes) < 2:
        raise ValueError(f"num_classes={num_classes}; a classifier needs >= 2.")


def classifier_head(encoded, mask, num_classes, pooling, dropout):
    """Pooling, dropout and the dense `"logits"` layer on an encoder's TF Hub output dict (symbolic).

    Args:
        encoded: a dict with `sequence_output` and `pooled_output`.
        mask: the `input_mask` (1 for tokens), for mean pooling.
        num_classes: number of labels.
        pooling: `"pooled"`, `"cls"` or `"mean"`.
        dropout: dropout rate before the head.

    Returns:
        The logits `[batch, num_classes]`.

    Example:
    ```python
    logits = classifier_head(encoder(inputs), inputs["input_mask"], 2, "mean", 0.1)
    ```
    """
    if pooling == "pooled":
        features = encoded["pooled_output"]
    elif pooling == "cls":
        features = encoded["sequence_output"][:, 0, :]
    else:
        features = MaskedMeanPooling(name="mean_pooling")(encoded["sequence_output"], mask)
    features = keras.layers.Dropout(dropout, name="head_dropout")(features)
    return keras.layers.Dense(int(num_classes), name="logits")(features)


def find_encoder(model):
    """Returns the (first) `HubEncoder` inside `model`.

    Raises:
        ValueError: if the model has none.
    """
    for layer in model._flatten_layers(include_self=False):
        if isinstance(layer, HubEncoder):
            return layer
    raise ValueError(
        f"model {model.name!r} has no HubEncoder layer; build it with kd_tf.classify.build_classifier."
    )


def feature_model(classifier):
    """A model with the classifier's logits and its encoder's hidden states.

    Args:
        classifier: a model from `build_classifier`.

    Returns:
        A `keras.Model` on the same inputs (sharing the same weights) whose
        output dict holds `logits`, `pooled_output`, `sequence_output`,
        `encoder_outputs` (list of `[batch, seq, hidden]`, one per layer) and
        `input_mask`.

    Example:
    ```python
    features = feature_model(build_classifier("/tmp/tiny_bert", 2))
    sorted(features.output)  # ['encoder_outputs', 'input_mask', 'logits', 'pooled_output', 'sequence_output']
    ```
    """
    encoder = find_encoder(classifier)
    encoded = symbolic_output(encoder)
    if not isinstance(encoded, dict):
        raise ValueError(
            "feature_model needs an encoder that returns the TF Hub "
            "output dict (HubEncoder with output_key=None)."
        )
    inputs = classifier.input
    outputs = {
        "logits": classifier.output,
        "pooled_output": encoded["pooled_output"],
        "sequence_output": encoded["sequence_output"],
        "encoder_outputs": list(encoded["encoder_outputs"]),
        "input_mask": inputs["input_mask"],
    }
    return keras.Model(inputs, outputs, name=f"{classifier.name}_features")


def parameter_count(model):
    """Number of weights (trainable and not) of a Keras model.

    Example:
    ```python
    parameter_count(keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)]))  # 8
    ```
    """
    return int(sum(np.prod(v.shape) for v in model.weights))
