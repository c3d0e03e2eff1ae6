"""TFLite for LiteRT and MediaPipe: conversion with builtin ops only, and a runner bound by input name.

`convert_to_tflite` turns a classifier into a batch-1 `.tflite` (float32, float16, dynamic-range int8 or full
int8) whose inputs are the three int32 BERT inputs at a fixed sequence length and whose output is float32
probabilities; `LiteRTClassifier` runs such a file with the LiteRT interpreter.

`convert_variants` converts one model to several variants. Its `dynamic_int8` files store the word-embedding
table as int8 rows with one scale per row (`kd_tf.export.int8_rows`) where the encoder is a kd-tf folder,
and are TFLite's own dynamic-range quantization (one scale for the table) otherwise; `word_embeddings_storage`
names which.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
import warnings

import numpy as np

from kd_tf.bert.encoder import INPUT_KEYS
from kd_tf.export.report import LATENCY_THREADS, ExportError
from kd_tf.export.saved_model import track_weights


class LiteRTClassifier:
    """Runs an exported .tflite with the LiteRT interpreter, inputs bound by name.

    TFLite reorders a model's inputs, so they are matched to
    `input_word_ids`, `input_mask` and `input_type_ids` by tensor name, never
    by position.

    Args:
        model_path: a .tflite written by `export_student`.
        num_threads: CPU threads of the interpreter.

    Raises:
        ValueError: if the model does not have the three named int32 inputs
            and one output.

    Example:
    ```python
    runner = LiteRTClassifier("export/tflite/model_float32.tflite")
    runner.predict(preprocessor(tf.constant(["a fine film"]))).shape  # (1, 2)
    ```
    """

    def __init__(self, model_path, num_threads=1):
        from ai_edge_litert.interpreter import Interpreter

        self.model_path = os.fspath(model_path)
        self._interpreter = Interpreter(model_path=self.model_path, num_threads=int(num_threads))
        self._interpreter.allocate_tensors()
        details = self._interpreter.get_input_details()
        self.input_names = {}
        self._inputs = {}
        for key in INPUT_KEYS:
            found = [d for d in details if d["name"].split(":")[0].endswith(key)]
            if len(found) != 1:
                raise ValueError(
                    f"{self.model_path}: no single input named like {key!r} "
                    f"(inputs: {[d['name'] for d in details]})."
                )
            self._inputs[key] = found[0]["index"]
            self.input_names[key] = found[0]["name"]
        if len(details) != len(INPUT_KEYS):
            raise ValueError(f"{self.model_path} has {len(details)} inputs; expected {list(INPUT_KEYS)}.")
        outputs = self._interpreter.get_output_details()
        if len(outputs) != 1:
            raise ValueError(
                f"{self.model_path} has {len(outputs)} outputs; expected one (the probabilities)."
            )
        self._output = outputs[0]["index"]
        self.seq_length = int(found[0]["shape"][1])

    def __call__(self, inputs):
        """Probabilities `[1, classes]` for one example (`[1, seq_length]` each)."""
        for key, index in self._inputs.items():
            self._interpreter.set_tensor(index, np.asarray(inputs[key], np.int32).reshape(1, -1))
        self._interpreter.invoke()
        return self._interpreter.get_tensor(self._output).copy()

    def predict(self, inputs):
        """Probabilities `[batch, classes]`, running the rows one by one.

        Args:
            inputs: dict of int `[batch, seq_length]` arrays or tensors.
        """
        inputs = {k: np.asarray(inputs[k]) for k in INPUT_KEYS}
        rows = len(inputs[INPUT_KEYS[0]])
        return np.concatenate([self({k: v[i : i + 1] for k, v in inputs.items()}) for i in range(rows)])

    def latency_ms(self, inputs, runs=50, warmup=5):
        """Median milliseconds of `runs` batch-1 invocations (after `warmup`).

        Args:
            inputs: dict of int `[1, seq_length]` arrays.
        """
        for _ in range(warmup):
            self(inputs)
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            self(inputs)
            times.append((time.perf_counter() - start) * 1e3)
        return statistics.median(times)


def interleaved_latency_ms(models, threads=LATENCY_THREADS, rounds=3, runs=20, warmup=3):
    """Batch-1 LiteRT latency of several `.tflite` files, measured in turns so that they compare.

    On a machine shared with other work, a model timed alone may run while something else holds the
    cores. Here the models take turns: every round runs each model `runs` times in a row, and a model's
    figure is its best round median. Each `(model, threads)` pair gets its own interpreter, created before
    any timing starts. At 1 thread the interpreter runs in the calling thread, so its CPU time (which does
    not count the time other processes hold the core) is measured too.

    Args:
        models: `{name: (path, inputs)}`: each `.tflite` file and a one-example input dict for it (int
            `[1, seq_length]` arrays, its own tokenization of the same text).
        threads: the interpreter thread counts to time.
        rounds: rounds of turns.
        runs: timed calls per model per round (after `warmup` untimed ones).
        warmup: untimed calls before each model's timed calls.

    Returns:
        `{name: {"latency_ms": {"1": ms, "2": ms, ...}, "cpu_ms": {"1": ms}}}` (thread counts as strings,
        as in JSON).

    Raises:
        ValueError: if a file is not a BERT classifier with the three named inputs (`LiteRTClassifier`).

    Example:
    ```python
    times = interleaved_latency_ms({"teacher": ("t_int8.tflite", row), "student": ("s_int8.tflite", row)})
    times["teacher"]["latency_ms"]["1"] / times["student"]["latency_ms"]["1"]  # the speed-up at 1 thread
    ```
    """
    runners = {
        (name, n): (LiteRTClassifier(path, num_threads=n), inputs)
        for name, (path, inputs) in models.items()
        for n in threads
    }
    wall = {key: float("inf") for key in runners}
    cpu = {key: float("inf") for key in runners if key[1] == 1}
    for _ in range(rounds):
        for key, (runner, inputs) in runners.items():
            for _ in range(warmup):
                runner(inputs)
            times = []
            for _ in range(runs):
                start_wall, start_cpu = time.perf_counter_ns(), time.thread_time_ns()
                runner(inputs)
                times.append((time.perf_counter_ns() - start_wall, time.thread_time_ns() - start_cpu))
            wall[key] = min(wall[key], statistics.median(t[0] for t in times) / 1e6)
            if key in cpu:
                cpu[key] = min(cpu[key], statistics.median(t[1] for t in times) / 1e6)
    return {
        name: {
            "latency_ms": {str(n): wall[(name, n)] for n in threads},
            "cpu_ms": {str(n): cpu[(name, n)] for n in threads if (name, n) in cpu},
        }
        for name in models
    }


def tflite_operators(model_bytes):
    """The operators a .tflite uses: builtin names, custom ops as "CUSTOM:<name>".

    Flex (TensorFlow) ops appear as custom ops named "Flex...".

    Example:
    ```python
    "FULLY_CONNECTED" in tflite_operators(open("m.tflite", "rb").read())  # True
    ```
    """
    from tensorflow.lite.python import schema_py_generated as schema

    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    model = schema.Model.GetRootAs(bytearray(model_bytes), 0)
    operators = set()
    for i in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(i)
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        if builtin == schema.BuiltinOperator.CUSTOM:
            operators.add(f"CUSTOM:{code.CustomCode().decode('utf-8')}")
        else:
            operators.add(names.get(builtin, str(builtin)))
    return sorted(operators)


def tflite_input_names(model_bytes):
    """Maps `input_word_ids`, `input_mask`, `input_type_ids` to .tflite tensor names.

    Raises:
        ValueError: if the model lacks one of them.

    Example:
    ```python
    tflite_input_names(open("m.tflite", "rb").read())["input_mask"]  # 'serving_default_input_mask:0'
    ```
    """
    from tensorflow.lite.python import schema_py_generated as schema

    graph = schema.Model.GetRootAs(bytearray(model_bytes), 0).Subgraphs(0)
    names = [graph.Tensors(graph.Inputs(i)).Name().decode("utf-8") for i in range(graph.InputsLength())]
    found = {}
    for key in INPUT_KEYS:
        matches = [n for n in names if n.split(":")[0].endswith(key)]
        if len(matches) != 1:
            raise ValueError(f"the .tflite has no single input named like {key!r} (inputs: {names}).")
        found[key] = matches[0]
    return found


WORD_EMBEDDINGS = ("float", "int8_rows")
"""How a TFLite source holds the word-embedding table: as the model's floats (TFLite quantizes them, if at
all, with one scale for the table), or as int8 rows with one scale each (`kd_tf.export.int8_rows`)."""


def write_tflite_source(student, seq_length, path, word_embeddings="float"):
    """Writes a SavedModel of the batch-1 probabilities function TFLite converts (`convert_saved_model`).

    Args:
        student: a classifier from `kd_tf.classify.build_classifier` (logits out).
        seq_length: the fixed sequence length of the three int32 inputs.
        path: the folder to write.
        word_embeddings: one of `WORD_EMBEDDINGS`; `"int8_rows"` needs a kd-tf encoder folder.

    Raises:
        ValueError: on an unknown `word_embeddings`, or `"int8_rows"` for a published TF Hub encoder.

    Example:
    ```python
    write_tflite_source(student, 128, "/tmp/source")
    ```
    """
    import tensorflow as tf

    if word_embeddings not in WORD_EMBEDDINGS:
        raise ValueError(f"word_embeddings={word_embeddings!r}; choose one of {WORD_EMBEDDINGS}.")
    if word_embeddings == "int8_rows":
        from kd_tf.export.int8_rows import int8_rows_classifier

        student = int8_rows_classifier(student)

    root = tf.Module()
    track_weights(root, student)
    spec = [tf.TensorSpec([1, seq_length], tf.int32, name=k) for k in INPUT_KEYS]

    @tf.function(input_signature=spec, autograph=False)
    def probabilities(input_word_ids, input_mask, input_type_ids):
        inputs = {
            "input_word_ids": input_word_ids,
            "input_mask": input_mask,
            "input_type_ids": input_type_ids,
        }
        logits = tf.cast(student(inputs, training=False), tf.float32)
        return {"probabilities": tf.nn.softmax(logits, axis=-1)}

    root.probabilities = probabilities
    tf.saved_model.save(root, path, signatures={"serving_default": probabilities})


def convert_to_tflite(model, seq_length, variant="float32", calibration_inputs=None):
    """Converts a Keras classifier to a batch-1 `.tflite` (builtin ops, softmax at the end).

    The same conversion `export_student` runs, without metadata or checks:
    for measuring the size of any model (a teacher, a baseline) as TFLite.

    Args:
        model: a classifier from `kd_tf.classify.build_classifier`.
        seq_length: the fixed sequence length of the three int32 inputs.
        variant: one of `VARIANTS`.
        calibration_inputs: for `"full_int8"`, a dict of int32
            `[N, seq_length]` arrays of real tokenized text.

    Returns:
        The `.tflite` flatbuffer as bytes.

    Raises:
        ExportError: if the conversion needs Flex or custom ops.

    Example:
    ```python
    len(convert_to_tflite(teacher, seq_length=128))  # bytes
    ```
    """
    with tempfile.TemporaryDirectory() as tmp:
        ((_, model_bytes),) = convert_variants(model, seq_length, [variant], tmp, calibration_inputs)
        return model_bytes


def word_embeddings_storage(model, variant):
    """How `convert_variants` stores `model`'s word-embedding table in a `variant` file (`WORD_EMBEDDINGS`).

    `"int8_rows"` for `dynamic_int8` where the encoder is a kd-tf folder, else `"float"` (the other variants
    keep the table as float, or as TFLite quantizes it).

    Example:
    ```python
    word_embeddings_storage(student, "dynamic_int8")  # "int8_rows"
    ```
    """
    from kd_tf.export.int8_rows import int8_rows_supported

    return "int8_rows" if variant == "dynamic_int8" and int8_rows_supported(model) else "float"


def convert_variants(model, seq_length, variants, folder, calibration_inputs=None):
    """Converts a Keras classifier to several TFLite variants, writing each source once.

    Args:
        model: a classifier from `kd_tf.classify.build_classifier`.
        seq_length: the fixed sequence length of the three int32 inputs.
        variants: some of `VARIANTS`, converted in this order.
        folder: where the sources are written (`source_float`, `source_int8_rows`).
        calibration_inputs: for `"full_int8"` (see `convert_saved_model`).

    Returns:
        A list of `(variant, flatbuffer bytes)`.

    Raises:
        ExportError: if a conversion needs Flex or custom ops.

    Example:
    ```python
    files = dict(convert_variants(student, 128, ["float32", "dynamic_int8"], "/tmp/sources"))
    ```
    """
    sources = {}
    converted = []
    for variant in variants:
        storage = word_embeddings_storage(model, variant)
        if storage not in sources:
            sources[storage] = os.path.join(folder, f"source_{storage}")
            write_tflite_source(model, seq_length, sources[storage], word_embeddings=storage)
        converted.append((variant, convert_saved_model(sources[storage], variant, calibration_inputs)))
    return converted


def convert_saved_model(source, variant, calibration_inputs=None):
    """Converts a SavedModel of `write_tflite_source` to one TFLite variant (builtin ops only).

    `convert_to_tflite` writes the source and converts it; convert one source several times to get
    several variants of the same model.

    Args:
        source: the folder `write_tflite_source` wrote.
        variant: one of `VARIANTS`.
        calibration_inputs: for `"full_int8"`, a dict of int32 `[N, seq_length]` arrays of real text.

    Returns:
        The `.tflite` flatbuffer as bytes.

    Raises:
        ExportError: if the conversion needs Flex or custom ops.

    Example:
    ```python
    write_tflite_source(student, 128, "/tmp/source")
    sizes = {v: len(convert_saved_model("/tmp/source", v)) for v in ("float32", "dynamic_int8")}
    ```
    """
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(source, signature_keys=["serving_default"])
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    converter.allow_custom_ops = False
    if variant != "float32":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if variant == "float16":
        converter.target_spec.supported_types = [tf.float16]
    if variant == "full_int8":
        rows = len(calibration_inputs[INPUT_KEYS[0]])

        def representative():
            for i in range(rows):
                yield {k: v[i : i + 1] for k, v in calibration_inputs.items()}

        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    try:
        with warnings.catch_warnings():  # TF's calibrator uses tf.lite.Interpreter
            warnings.filterwarnings("ignore", "(?s).*tf.lite.Interpreter is deprecated")
            model = converter.convert()
    except Exception as e:
        raise ExportError(
            f"TFLite {variant} conversion with builtin ops only failed: "
            f"{type(e).__name__}: {str(e)[:2000]}. The student uses an op "
            f"that stock mobile runtimes lack; leave {variant!r} out of "
            f"variants or change the model."
        ) from e
    custom = [op for op in tflite_operators(model) if op.startswith("CUSTOM:")]
    if custom:
        raise ExportError(
            f"TFLite {variant} model needs the non-builtin ops {custom} (Flex "
            f"or custom), which MediaPipe and stock LiteRT cannot run."
        )
    return model


def tokenize(preprocessor, texts):
    import tensorflow as tf

    packed = preprocessor(tf.constant(texts))
    return {k: packed[k].numpy() for k in INPUT_KEYS}


def calibration_rows(preprocessor, texts, seq_length):
    """Full int8 calibration rows that fill the whole sequence, without padding.

    The encoder adds -10000 to the attention scores of padded positions. On
    padded calibration rows, full int8 stretches the int8 range of those
    scores to reach -10000, which leaves about one step for the real scores
    (a MiniLM-based student kept 36% of its labels). Consecutive texts are
    joined until they fill `seq_length`, so the ranges come from real scores
    only; at inference, padded positions saturate at the range's minimum and
    stay masked (84% of the labels on the same student).
    """
    import tensorflow as tf

    lengths = preprocessor.tokenize(tf.constant(texts)).merge_dims(-2, -1).row_lengths().numpy()
    rows, current, count = [], [], 0
    for text, length in zip(texts, lengths):
        current.append(text)
        count += int(length)
        if count >= seq_length - 2:
            rows.append(" ".join(current))
            current, count = [], 0
    if not rows:  # too little text to fill one row: calibrate on what there is
        rows = [" ".join(current)]
    return tokenize(preprocessor, rows)
