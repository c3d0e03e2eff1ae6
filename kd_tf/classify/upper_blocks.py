"""Fine-tuning only the top blocks of a classifier's encoder, on the lower blocks' outputs computed once.

With the lower blocks frozen, their outputs for a text never change, so an epoch needs only the top blocks'
forward and backward passes: `lower_block_outputs` runs the frozen part once over a dataset (in inference
mode), `outputs_dataset` serves those outputs as shuffled `tf.data` batches cut to their longest text, and
`build_upper_classifier` puts the usual pooling and head on the trainable top blocks. The layer names match
`kd_tf.classify.build_classifier`'s, so `copy_head` carries the trained head over to the whole classifier.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from kd_tf.bert.split import HIDDEN_STATES
from kd_tf.classify.models import check_head, classifier_head

HEAD_LAYER = "logits"


def lower_block_outputs(below, dataset, verbose=0):
    """Runs the frozen lower part of an encoder once over `dataset`.

    Args:
        below: a `kd_tf.bert.split.EncoderBelow`.
        dataset: fixed-length batches of the TF Hub input dict (labels, if any, are ignored), e.g.
            `make_dataset(..., bucketing=False)`.
        verbose: Keras `predict` verbosity (1: a progress bar).

    Returns:
        `{"hidden_states": float32 [N, seq, hidden], "input_mask": int32 [N, seq]}` numpy arrays, in the
        dataset's order.

    Raises:
        ValueError: if an output is not finite (the encoder's weights are broken: nothing to train on).

    Example:
    ```python
    outputs = lower_block_outputs(below, make_dataset(data, preprocessor, bucketing=False))
    outputs["hidden_states"].shape  # (len(data), 128, hidden)
    ```
    """
    outputs = below.predict(dataset, verbose=verbose)
    hidden = np.asarray(outputs[HIDDEN_STATES], np.float32)
    if not np.isfinite(hidden).all():
        bad = int(np.sum(~np.isfinite(hidden).all(axis=(1, 2))))
        raise ValueError(
            f"the frozen lower blocks give non-finite outputs for {bad} of {len(hidden)} texts; the "
            f"encoder's weights are not usable (check the encoder folder, or train every block)."
        )
    return {HIDDEN_STATES: hidden, "input_mask": np.asarray(outputs["input_mask"], np.int32)}


def _cut_to_longest(features, labels):
    longest = tf.reduce_max(tf.reduce_sum(features["input_mask"], axis=1))
    cut = {k: v[:, :longest] for k, v in features.items()}
    return cut, labels


def outputs_dataset(outputs, labels, batch_size, shuffle=False, seed=None):
    """Batches of cached lower-block outputs (and labels) for `fit` and `evaluate`.

    Every batch is cut to its longest text, so short texts cost fewer positions in the top blocks.

    Args:
        outputs: what `lower_block_outputs` returned.
        labels: int labels `[N]`, in the same order.
        batch_size: examples per batch.
        shuffle: reshuffle every epoch (the same order from run to run for a given `seed`).
        seed: the shuffle seed.

    Returns:
        A `tf.data.Dataset` of `({"hidden_states", "input_mask"}, labels)`.

    Raises:
        ValueError: if `labels` and the outputs differ in length.

    Example:
    ```python
    train = outputs_dataset(outputs, data.labels, 32, shuffle=True, seed=42)
    ```
    """
    labels = np.asarray(labels, np.int32)
    if len(labels) != len(outputs[HIDDEN_STATES]):
        raise ValueError(
            f"{len(labels)} labels for {len(outputs[HIDDEN_STATES])} cached outputs; give one label per "
            f"text, in the order the outputs were computed."
        )
    dataset = tf.data.Dataset.from_tensor_slices((dict(outputs), labels))
    if shuffle:
        dataset = dataset.shuffle(len(labels), seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.batch(int(batch_size)).map(_cut_to_longest, num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.prefetch(tf.data.AUTOTUNE)


def build_upper_classifier(above, num_classes, pooling="pooled", dropout=0.1, name=None):
    """The classifier head on the trainable top blocks: lower-block outputs in, class logits out.

    Args:
        above: a `kd_tf.bert.split.EncoderAbove`.
        num_classes: number of labels (>= 2).
        pooling: `"pooled"`, `"cls"` or `"mean"`, as in `kd_tf.classify.build_classifier`.
        dropout: dropout rate before the head.
        name: model name.

    Returns:
        A functional `keras.Model` from `{"hidden_states", "input_mask"}` to logits `[batch, num_classes]`,
        its head named `"logits"` like `build_classifier`'s.

    Raises:
        ValueError: on an unknown `pooling` or `num_classes < 2`.

    Example:
    ```python
    model = build_upper_classifier(above, 2, pooling="mean")
    ```
    """
    check_head(num_classes, pooling)
    hidden_size = above.pooler.kernel.shape[0]
    inputs = {
        HIDDEN_STATES: keras.Input((None, hidden_size), dtype="float32", name=HIDDEN_STATES),
        "input_mask": keras.Input((None,), dtype="int32", name="input_mask"),
    }
    logits = classifier_head(above(inputs), inputs["input_mask"], num_classes, pooling, dropout)
    return keras.Model(inputs, logits, name=name)


def copy_head(source, target):
    """Copies the weights of `source`'s `"logits"` layer into `target`'s (same shape).

    Example:
    ```python
    copy_head(upper_model, teacher_model)
    ```
    """
    target.get_layer(HEAD_LAYER).set_weights(source.get_layer(HEAD_LAYER).get_weights())


__all__ = ["build_upper_classifier", "copy_head", "lower_block_outputs", "outputs_dataset"]
