"""LiteRT for causal LMs: a fixed `[1, L]` token window in, next-token logits at every position out.

The signature, and why it is fixed. Keras's own `causal_lm.export("m.tflite", format="litert")` of a
KerasHub causal LM gives `token_ids` and `padding_mask` of dynamic shape `[-1, -1]`, but with the
pinned stack (TensorFlow 2.21, Keras 3.15, KerasHub 0.32) that file needs Flex ops, which stock
LiteRT on phones lacks: `FlexHashTableV2`/`FlexLookupTableImportV2` (Keras tracks the attached
preprocessor, so the tokenizer's tables come along) and `FlexStridedSlice` (the attention mask's
slice over a dynamic length); `ai_edge_litert`'s interpreter refuses to run it without the Flex
delegate. With builtin ops only, the dynamic signature fails to convert. So the
export takes the logits function alone (the model without its preprocessor) at a fixed `[1, L]`:
it converts with builtin ops only, LiteRT allocates its tensors once, and every forward costs the
same, whatever the length of the text.

What a phone app does with it (no KV cache in this signature): tokenize the prompt (the
vocabulary and merges are written beside the model, see `export_causal_lm`), put the last `L`
tokens at the start of the window, right-pad it (`padding_mask` 0 after the text: the model is
causal, so padding never changes the logits of real positions), run one forward and take the
logits at the last real position; append the chosen token and repeat. Each generated token costs
one full forward of `L` tokens; `LiteRTCausalLM.generate` is that loop, and the export report
gives its time per forward.
"""

from __future__ import annotations

import os
import statistics
import time

import numpy as np

from kd_tf.export.litert import convert_saved_model

__all__ = ["LM_VARIANTS", "LiteRTCausalLM", "convert_causal_lm", "write_logits_saved_model"]

LM_VARIANTS = ("float32", "float16", "dynamic_int8")
"""LiteRT variants of a causal LM: float32 weights; float16 weights; int8 weights with float
activations (dynamic range). Full int8 (int8 activations calibrated on text) is not offered: it is
not measured on causal LMs here."""

TOKEN_IDS = "token_ids"
PADDING_MASK = "padding_mask"


def write_logits_saved_model(model, sequence_length, path):
    """Keras's SavedModel of a causal LM's logits function at a fixed `[1, sequence_length]`.

    The source LiteRT converts. Only the logits function is exported: the
    preprocessor (its tokenizer tables would need Flex ops) stays out.

    Args:
        model: a KerasHub `CausalLM` (or any Keras model taking `token_ids` and
            `padding_mask` and returning logits `[batch, length, vocabulary]`).
        sequence_length: L, the fixed window length.
        path: the SavedModel folder to write.

    Returns:
        `path`.

    Example:

    ```python
    write_logits_saved_model(student, 128, "/tmp/student_logits")
    ```
    """
    import functools

    import keras
    import tensorflow as tf

    logits = keras.Model(model.inputs, model.outputs, name="logits")
    spec = {
        name: tf.TensorSpec([1, int(sequence_length)], tf.int32, name=name)
        for name in (TOKEN_IDS, PADDING_MASK)
    }
    # What `logits.export(path, format="tf_saved_model")` does, without `track(logits)`: in Keras 3.15
    # tracking stores every weight a second time (keras-team/keras#23553); the archive saves the
    # variables the endpoint uses anyway, once.
    archive = keras.export.ExportArchive()
    archive.add_endpoint("serve", functools.partial(logits.__call__, training=False), input_signature=[spec])
    archive.write_out(os.fspath(path), verbose=False)
    return path


def convert_causal_lm(model, sequence_length, variant="float32"):
    """A causal LM as a `.tflite` flatbuffer: `[1, L]` int32 `token_ids`/`padding_mask` in, logits out.

    The conversion `export_causal_lm` runs, without its checks: for
    measuring the size of any causal LM (a teacher) as LiteRT.

    Args:
        model: a KerasHub `CausalLM`.
        sequence_length: L, the fixed window length.
        variant: one of `LM_VARIANTS`.

    Returns:
        The `.tflite` flatbuffer as bytes (builtin ops only).

    Raises:
        ValueError: for a variant outside `LM_VARIANTS`.
        ExportError: if the conversion needs Flex or custom ops.

    Example:

    ```python
    len(convert_causal_lm(teacher, 128, "dynamic_int8"))  # bytes
    ```
    """
    import tempfile

    if variant not in LM_VARIANTS:
        raise ValueError(f"variant {variant!r} is not one of {list(LM_VARIANTS)}.")
    with tempfile.TemporaryDirectory() as tmp:
        source = write_logits_saved_model(model, sequence_length, os.path.join(tmp, "source"))
        return convert_saved_model(source, variant, None)


class LiteRTCausalLM:
    """Runs a causal-LM `.tflite` of `export_causal_lm` with the LiteRT interpreter, inputs bound by name.

    The model takes one window of `sequence_length` tokens; shorter inputs
    are right-padded inside (causal attention: the logits of real positions
    do not depend on the padding).

    Args:
        model_path: a `.tflite` written by `export_causal_lm` (or
            `convert_causal_lm`).
        num_threads: CPU threads of the interpreter.

    Attributes:
        sequence_length: L, the window length.
        vocabulary_size: the number of logits per position.
        input_names: `{"token_ids": tensor name, "padding_mask": tensor name}`.

    Raises:
        ValueError: if the file does not have the two named int32 `[1, L]`
            inputs and one float32 `[1, L, vocabulary]` output.

    Example:

    ```python
    runner = LiteRTCausalLM("export/litert/model_dynamic_int8.tflite", num_threads=2)
    logits = runner.logits(windows["token_ids"][:2], windows["padding_mask"][:2])  # [2, L, V]
    runner.generate(prompt_ids, new_tokens=16)  # the greedy loop of a phone app
    ```
    """

    def __init__(self, model_path, num_threads=1):
        from ai_edge_litert.interpreter import Interpreter

        self.model_path = os.fspath(model_path)
        self._interpreter = Interpreter(model_path=self.model_path, num_threads=int(num_threads))
        self._interpreter.allocate_tensors()
        details = self._interpreter.get_input_details()
        self._inputs, self.input_names = {}, {}
        for key in (TOKEN_IDS, PADDING_MASK):
            found = [d for d in details if d["name"].split(":")[0].endswith(key)]
            if len(found) != 1 or found[0]["dtype"] != np.int32 or len(found[0]["shape"]) != 2:
                raise ValueError(
                    f"{self.model_path}: no single int32 [1, L] input named like {key!r} (inputs: "
                    f"{[(d['name'], d['shape'].tolist()) for d in details]}); export the model with "
                    "kd_tf.export.export_causal_lm."
                )
            self._inputs[key] = found[0]["index"]
            self.input_names[key] = found[0]["name"]
        outputs = self._interpreter.get_output_details()
        if len(details) != 2 or len(outputs) != 1 or len(outputs[0]["shape"]) != 3:
            raise ValueError(
                f"{self.model_path} has {len(details)} inputs and {len(outputs)} outputs; a causal LM "
                "export has token_ids, padding_mask and one logits output [1, L, vocabulary]."
            )
        self._output = outputs[0]["index"]
        self.sequence_length = int(found[0]["shape"][1])
        self.vocabulary_size = int(outputs[0]["shape"][2])

    def _window(self, token_ids, padding_mask):
        ids = np.asarray(token_ids).reshape(-1)
        n = len(ids)
        if not 1 <= n <= self.sequence_length:
            raise ValueError(
                f"A window holds 1 to {self.sequence_length} tokens (the model's fixed length), not {n}; "
                "keep the last tokens of a longer text."
            )
        mask = np.ones(n, bool) if padding_mask is None else np.asarray(padding_mask).reshape(-1)
        window = np.zeros((2, 1, self.sequence_length), np.int32)
        window[0, 0, :n], window[1, 0, :n] = ids, mask
        self._interpreter.set_tensor(self._inputs[TOKEN_IDS], window[0])
        self._interpreter.set_tensor(self._inputs[PADDING_MASK], window[1])
        self._interpreter.invoke()
        return n

    def __call__(self, token_ids, padding_mask=None):
        """Logits `[1, n, vocabulary]` of one window of `n <= sequence_length` tokens.

        Args:
            token_ids: int ids `[n]` or `[1, n]`.
            padding_mask: 1/True for real tokens, `[n]` or `[1, n]`; default all real.
        """
        n = self._window(token_ids, padding_mask)
        return self._interpreter.get_tensor(self._output)[:, :n].copy()

    def logits(self, token_ids, padding_mask=None):
        """Logits `[batch, n, vocabulary]` of a batch of windows, run one by one (the model is batch 1).

        Args:
            token_ids: int `[batch, n]` arrays or tensors, `n <= sequence_length`.
            padding_mask: `[batch, n]`; default all real.
        """
        token_ids = np.asarray(token_ids)
        masks = np.ones(token_ids.shape, bool) if padding_mask is None else np.asarray(padding_mask)
        return np.concatenate([self(ids, mask) for ids, mask in zip(token_ids, masks)])

    def generate(self, token_ids, new_tokens, stop_token_ids=()):
        """Greedy continuation, one forward per new token over the last `sequence_length` tokens.

        The loop a phone app runs with this model (see the module docstring).

        Args:
            token_ids: the prompt's ids (with its start token, as the model was
                trained), `[n]`.
            new_tokens: the most tokens to generate.
            stop_token_ids: ids that end the continuation (included in it).

        Returns:
            The new token ids, an int32 array of at most `new_tokens`.

        Example:

        ```python
        runner.generate([1, 504, 3575, 282, 4649, 314], new_tokens=8, stop_token_ids=[2])
        ```
        """
        ids = [int(i) for i in np.asarray(token_ids).reshape(-1)]
        stop = {int(i) for i in stop_token_ids}
        new = []
        for _ in range(int(new_tokens)):
            window = ids[-self.sequence_length :]
            n = self._window(window, None)
            next_id = int(np.argmax(self._interpreter.tensor(self._output)()[0, n - 1]))
            ids.append(next_id)
            new.append(next_id)
            if next_id in stop:
                break
        return np.asarray(new, np.int32)

    def latency_ms(self, token_ids=None, runs=20, warmup=3):
        """Median milliseconds of one batch-1 forward over a full window (after `warmup` runs).

        Args:
            token_ids: the window's ids `[sequence_length]` (a real text is
                best; the cost does not depend on the values); default `0..L-1`
                modulo the vocabulary.
            runs: timed forwards.
            warmup: untimed forwards first.
        """
        if token_ids is None:
            token_ids = np.arange(self.sequence_length) % self.vocabulary_size
        for _ in range(int(warmup)):
            self._window(token_ids, None)
        times = []
        for _ in range(int(runs)):
            start = time.perf_counter()
            self._window(token_ids, None)
            times.append((time.perf_counter() - start) * 1e3)
        return statistics.median(times)
