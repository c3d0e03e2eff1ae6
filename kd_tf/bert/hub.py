"""TF Hub BERT models as Keras 3 layers.

`hub.KerasLayer` is built on tf_keras (Keras 2) and fails inside Keras 3
models. The layers here load the SavedModel with `hub.load` (tfhub.dev and
Kaggle handles, `HANDLES` names and local folders alike) and register its
variables as their own Keras weights, without copying them, so `fit()` trains
the SavedModel's variables and `training=` reaches its dropout.

* `HubEncoder`: a BERT encoder (input dict -> output dict), trainable.
* `HubPreprocessor`: strings (or string pairs) -> encoder input dict at any
  sequence length, usable in `tf.data.Dataset.map`.
Both take the short names of `kd_tf.bert.presets` (published TF Hub names and local presets such as
`kd-tf:all-MiniLM-L6-v2`) as well as URLs and folders.
"""

from __future__ import annotations

import difflib
import os

import keras
import tensorflow as tf

from kd_tf.bert.encoder import INPUT_KEYS
from kd_tf.bert.presets import HANDLES, LOCAL_PRESETS, resolve_handle


class HubHandleError(OSError):
    """A TF Hub handle could not be loaded; the message says how to fix it."""


def _is_remote(handle):
    return handle.startswith(("http://", "https://", "gs://"))


def _fix_message(handle, url):
    if not _is_remote(url):
        url = "<the tfhub.dev or Kaggle URL>"
    cache = os.environ.get("TFHUB_CACHE_DIR")
    cache_note = (
        f"TFHUB_CACHE_DIR is {cache}, which does not hold it" if cache else "TFHUB_CACHE_DIR is not set"
    )
    return (
        f"Fixes: (1) pass a local folder that holds the model's saved_model.pb "
        f"(a TF Hub download extracted, or a folder written by "
        f"kd_tf.bert.hub_format); or (2) pre-fill a TF Hub cache: on a machine with "
        f'network run `TFHUB_CACHE_DIR=/path/to/cache python -c "import '
        f"tensorflow_hub as hub; hub.resolve('{url}')\"`, copy /path/to/cache "
        f"here and set TFHUB_CACHE_DIR to it ({cache_note})."
    )


def load_module(handle, kind="encoder"):
    """Loads a TF Hub SavedModel, failing fast with a message that says what to do.

    Args:
        handle: a `HANDLES` or `LOCAL_PRESETS` name, a tfhub.dev/Kaggle URL or a local folder.
        kind: `"encoder"` or `"preprocessor"`: which model of a local preset to load.

    Returns:
        The restored object of `hub.load`.

    Raises:
        HubHandleError: if the handle cannot be resolved or loaded (no
            network, a typo, a folder that is not a SavedModel); the message
            names the handle and the fixes.

    Example:
    ```python
    module = load_module("/tmp/tiny_bert")
    sorted(module(inputs)["pooled_output"].shape)
    ```
    """
    import tensorflow_hub as hub
    import tensorflow_text  # noqa: F401  (registers the preprocessors' ops)

    original = os.fspath(handle)
    url = resolve_handle(original, kind)
    named = f"'{original}'" + (f" ({url})" if url != original else "")
    if not _is_remote(url):
        if not os.path.exists(url):
            close = difflib.get_close_matches(original, list(HANDLES) + list(LOCAL_PRESETS), n=1)
            hint = f" Did you mean the name '{close[0]}'?" if close else ""
            raise HubHandleError(
                f"TF Hub handle {named} is neither a known name, a URL nor an "
                f"existing folder.{hint} " + _fix_message(original, url)
            )
        if not tf.saved_model.contains_saved_model(url):
            raise HubHandleError(
                f"TF Hub handle {named} is a folder without saved_model.pb, so "
                f"it is not a SavedModel. " + _fix_message(original, url)
            )
    try:
        return hub.load(url)
    except Exception as e:  # hub raises URLError, OSError, ValueError, ...
        raise HubHandleError(
            f"Could not load TF Hub handle {named}: {type(e).__name__}: {e}. "
            f"Without network, downloads fail. " + _fix_message(original, url)
        ) from e


@keras.saving.register_keras_serializable(package="kd_tf")
class HubEncoder(keras.layers.Layer):
    """A TF Hub BERT encoder as a trainable Keras 3 layer.

    The SavedModel's own variables become this layer's weights (the same
    variables, not copies): `fit()` fine-tunes them, `training=True` turns on
    the model's dropout, `predict()` runs without it.

    Args:
        handle: a `HANDLES` name, a tfhub.dev/Kaggle URL or a local folder
            holding a TF-Hub-format ("reusable") SavedModel.
        trainable: whether `fit()` updates the encoder's weights.
        output_key: return only this entry of the output dict (e.g.
            `"pooled_output"`); by default the whole dict (`pooled_output
            [B,H]`, `sequence_output [B,T,H]`, `encoder_outputs` (list of L
            `[B,T,H]`), `default`).
        frozen: substrings of variable names kept frozen even when the layer
            is trainable, e.g. `("word_embeddings",)`: the 30,522-row
            embedding table is half of a small BERT's weights and most of
            its optimizer work, and freezing it speeds up fine-tuning on CPU
            by about a third (and guards small data sets against
            overfitting the vocabulary).
        **kwargs: `keras.layers.Layer` arguments such as `name`.

    Raises:
        HubHandleError: if the handle cannot be loaded.
        ValueError: if the SavedModel is not a callable TF-Hub-format model.

    Example:
    ```python
    inputs = {k: keras.Input((None,), dtype="int32", name=k)
              for k in ("input_word_ids", "input_mask", "input_type_ids")}
    pooled = HubEncoder("/tmp/tiny_bert", output_key="pooled_output")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(2)(pooled))
    ```
    """

    def __init__(self, handle, trainable=True, output_key=None, frozen=(), **kwargs):
        super().__init__(trainable=trainable, **kwargs)
        self.handle = os.fspath(handle)
        self.output_key = output_key
        self.frozen = tuple(frozen or ())
        self._module = load_module(self.handle)
        if not callable(self._module) or not hasattr(self._module, "variables"):
            raise ValueError(
                f"{self.handle} is a SavedModel but not a TF-Hub-format encoder "
                f"(it needs a callable root with a `variables` attribute, the "
                f"TF2 reusable SavedModel format). TF1 Hub modules are not "
                f"supported; use the TF2 version of the model."
            )
        trainable_ids = {id(v) for v in getattr(self._module, "trainable_variables", [])}
        for variable in self._module.variables:
            is_frozen = any(part in variable.name for part in self.frozen)
            weight = keras.Variable(
                initializer=variable,
                trainable=id(variable) in trainable_ids and not is_frozen,
                dtype=variable.dtype,
                shape=variable.shape,
                name=variable.name.split(":")[0].replace("/", "_"),
            )
            self._track_variable(weight)
        self.built = True

    @property
    def saved_variables(self):
        """The SavedModel's variables in their saved order (the same objects as
        this layer's weights, which Keras lists trainable first)."""
        return list(self._module.variables)

    def call(self, inputs, training=None):
        outputs = self._module(dict(inputs), training=bool(training))
        if self.output_key is None:
            return outputs
        if self.output_key not in outputs:
            raise KeyError(
                f"output_key={self.output_key!r} is not an output of {self.handle}; it has {sorted(outputs)}."
            )
        return outputs[self.output_key]

    def get_config(self):
        config = super().get_config()
        config.update(handle=self.handle, output_key=self.output_key, frozen=list(self.frozen))
        return config


@keras.saving.register_keras_serializable(package="kd_tf")
class HubPreprocessor(keras.layers.Layer):
    """A TF Hub BERT preprocessor: strings to encoder inputs at any length.

    Uses the SavedModel's `tokenize` and `bert_pack_inputs`, so the sequence
    length is free (the plain call of bert_en_uncased_preprocess/3 is fixed at
    128). Works on eager tensors, in Keras models and in
    `tf.data.Dataset.map`.

    Args:
        handle: a `HANDLES` name (e.g. `"bert_en_uncased_preprocess"`), a URL
            or a local folder (e.g. written by
            `kd_tf.bert.hub_format.write_bert_preprocessor`).
        seq_length: length of every output row: `[CLS]`, the WordPieces
            (truncated round-robin across segments), `[SEP]` after each
            segment, then padding.
        **kwargs: `keras.layers.Layer` arguments such as `name`.

    Call arguments:
        inputs: a string tensor `[batch]` (or a scalar), or a tuple/list of
            such tensors for text pairs.

    Returns:
        A dict of int32 tensors `input_word_ids`, `input_mask`,
        `input_type_ids`, each `[batch, seq_length]` (`[seq_length]` for a
        scalar input).

    Raises:
        HubHandleError: if the handle cannot be loaded.
        ValueError: if the SavedModel lacks `tokenize`/`bert_pack_inputs` or
            `seq_length` cannot hold `[CLS]` and `[SEP]`.

    Example:
    ```python
    pre = HubPreprocessor("/tmp/tiny_preprocessor", seq_length=16)
    pre(tf.constant(["a good film"]))["input_word_ids"].shape  # TensorShape([1, 16])
    ```
    """

    def __init__(self, handle, seq_length=128, **kwargs):
        kwargs.setdefault("trainable", False)
        super().__init__(**kwargs)
        self.handle = os.fspath(handle)
        self.seq_length = int(seq_length)
        self._module = load_module(self.handle, kind="preprocessor")
        for attr in ("tokenize", "bert_pack_inputs"):
            if not hasattr(self._module, attr):
                raise ValueError(
                    f"{self.handle} has no `{attr}`: it is not a BERT "
                    f"preprocessor with the bert_en_uncased_preprocess/3 "
                    f"interface."
                )
        if self.seq_length < 3:
            raise ValueError(
                f"seq_length={seq_length} is too short: it must hold [CLS], one token and [SEP] (>= 3)."
            )
        self.special_tokens = {}
        getter = getattr(self._module.tokenize, "get_special_tokens_dict", None)
        if getter is not None:
            self.special_tokens = {k: int(v) for k, v in getter().items()}
        self.vocab_size = self.special_tokens.pop("vocab_size", None)
        self.built = True

    def tokenize(self, texts):
        """Returns ragged WordPiece ids `[batch, words, wordpieces]`."""
        return self._module.tokenize(texts)

    def call(self, inputs):
        segments = list(inputs) if isinstance(inputs, (tuple, list)) else [inputs]
        segments = [tf.convert_to_tensor(s, tf.string) for s in segments]
        scalar = segments[0].shape.rank == 0
        if scalar:
            segments = [s[tf.newaxis] for s in segments]
        packed = self._module.bert_pack_inputs(
            [self._module.tokenize(s) for s in segments], seq_length=self.seq_length
        )
        packed = {k: packed[k] for k in INPUT_KEYS}
        if scalar:
            packed = {k: v[0] for k, v in packed.items()}
        return packed

    def compute_output_spec(self, inputs):
        first = inputs[0] if isinstance(inputs, (tuple, list)) else inputs
        shape = tuple(first.shape) + (self.seq_length,)
        return {k: keras.KerasTensor(shape, dtype="int32") for k in INPUT_KEYS}

    def get_config(self):
        config = super().get_config()
        config.update(handle=self.handle, seq_length=self.seq_length)
        return config
