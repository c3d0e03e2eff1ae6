"""A classifier whose word-embedding table is int8 with one scale per row, for dynamic-int8 TFLite.

TFLite's dynamic-range quantization stores each dense kernel with one scale per output channel, but the
table of a `GATHER` (the word embeddings) with one scale for the whole table. A typical row's largest value
is a fifth of the table's, so most rows keep two or three bits and a few labels flip
(benchmarks/results/int8_embedding.md). The export's `dynamic_int8` variant therefore converts a model
whose table is already int8, one scale per row:

* `quantize_rows`: a float table to int8 codes and per-row scales. The scales are stored as int32 codes
  times one float unit: the converter would round a float table of scales to int8 with one scale as well.
* `Int8RowLookup`: the layer that gathers the int8 rows and their scales and multiplies them (`GATHER`,
  `CAST`, `MUL`: builtins that LiteRT and MediaPipe run).
* `int8_rows_classifier`: a classifier of `kd_tf.classify.build_classifier` whose TF Hub encoder is
  rebuilt in Keras around an `Int8RowLookup`; every other layer is the classifier's own.

The table costs one byte per weight plus four per row (about 40 KB for a 10,000-word vocabulary).
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

SCALE_CODE_MAX = 2**30
"""The largest row scale's int32 code; a row's scale is `scale_codes[i] * unit`."""


def quantize_rows(table):
    """Rounds each row of `table` to symmetric int8 with its own scale.

    Args:
        table: a float array `[rows, width]`.

    Returns:
        `(codes, scale_codes, unit)`: int8 `[rows, width]`, int32 `[rows]` and a float, so that row `i` is
        about `codes[i] * scale_codes[i] * unit` (within half a step of `max(abs(row)) / 127`).

    Raises:
        ValueError: if the table is not 2-D or holds a value that is not finite.

    Example:
    ```python
    codes, scale_codes, unit = quantize_rows(np.array([[0.5, -1.0], [0.01, 0.02]]))
    codes.tolist()  # [[64, -127], [64, 127]]
    ```
    """
    table = np.asarray(table, dtype=np.float64)
    if table.ndim != 2:
        raise ValueError(f"quantize_rows needs a 2-D table [rows, width], got shape {table.shape}.")
    if not np.isfinite(table).all():
        bad = int(np.argwhere(~np.isfinite(table))[0][0])
        raise ValueError(f"the word-embedding table's row {bad} is not finite; the model cannot be exported.")
    scales = np.maximum(np.abs(table).max(axis=1), np.finfo(np.float32).tiny) / 127.0
    codes = np.clip(np.round(table / scales[:, None]), -127, 127).astype(np.int8)
    unit = float(scales.max()) / SCALE_CODE_MAX
    scale_codes = np.round(scales / unit).astype(np.int32)
    return codes, scale_codes, unit


class Int8RowLookup(keras.layers.Layer):
    """Word vectors gathered from an int8 table with one scale per row (frozen).

    Args:
        table: the float word-embedding table `[vocab_size, hidden_size]`.

    Example:
    ```python
    lookup = Int8RowLookup(encoder.embeddings.word_embeddings.numpy())
    lookup(tf.constant([[2, 5]])).shape  # [1, 2, hidden_size]
    ```
    """

    def __init__(self, table, **kwargs):
        kwargs.setdefault("name", "int8_row_lookup")
        super().__init__(trainable=False, **kwargs)
        codes, scale_codes, unit = quantize_rows(table)
        self.unit = unit
        self.codes = self.add_weight(
            shape=codes.shape, initializer="zeros", dtype="int8", trainable=False, name="codes"
        )
        self.scale_codes = self.add_weight(
            shape=scale_codes.shape, initializer="zeros", dtype="int32", trainable=False, name="scale_codes"
        )
        self.codes.assign(codes)
        self.scale_codes.assign(scale_codes)
        self.built = True

    def call(self, word_ids):
        rows = tf.cast(tf.gather(self.codes, word_ids), self.compute_dtype)
        scales = tf.cast(tf.gather(self.scale_codes, word_ids), self.compute_dtype) * self.unit
        return rows * scales[..., tf.newaxis]


def int8_rows_classifier(classifier):
    """`classifier` with its encoder's word-embedding table stored as int8 rows (`Int8RowLookup`).

    Args:
        classifier: a model of `kd_tf.classify.build_classifier` whose encoder is a kd-tf encoder folder.

    Returns:
        A `keras.Model` on the same inputs. It shares every weight with `classifier` except the encoder's,
        which are copies (the word table rounded, the rest exact).

    Raises:
        ValueError: if the encoder is a published TF Hub SavedModel (kd-tf cannot rebuild it) or returns
            only one of its outputs.

    Example:
    ```python
    quantized = int8_rows_classifier(student)
    write_tflite_source(quantized, 128, "/tmp/source")
    ```
    """
    from kd_tf.bert import hub_format
    from kd_tf.bert.encoder import BertEncoder
    from kd_tf.classify.models import find_encoder

    hub = find_encoder(classifier)
    if not int8_rows_supported(classifier):
        raise ValueError(
            f"the encoder {hub.handle!r} is not a kd-tf encoder folder (or returns only "
            f"{hub.output_key!r}); its word-embedding table cannot be stored as int8 rows. Export it with "
            "TFLite's own dynamic-range quantization (write_tflite_source(..., word_embeddings='float'))."
        )
    original = hub_format.load_bert_encoder(hub.handle, variables=hub.saved_variables)
    lookup = Int8RowLookup(original.embeddings.word_embeddings.numpy())
    encoder = BertEncoder(original.config, word_lookup=lookup, name=f"{original.name}_int8_rows")
    own = [v for v in encoder.weights if all(v is not w for w in lookup.weights)]
    hub_format.assign_weights(own, [v.numpy() for v in original.weights], hub.handle)

    def clone(layer):
        return encoder if layer is hub else layer

    return keras.models.clone_model(classifier, clone_function=clone)


def int8_rows_supported(classifier):
    """Whether `int8_rows_classifier` can rebuild `classifier`'s encoder (a kd-tf encoder folder)."""
    from kd_tf.bert import hub_format
    from kd_tf.classify.models import find_encoder

    hub = find_encoder(classifier)
    return hub.output_key is None and hub_format.is_kd_tf_encoder(hub.handle)


__all__ = ["Int8RowLookup", "int8_rows_classifier", "int8_rows_supported", "quantize_rows"]
