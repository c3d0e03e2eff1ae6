"""Export a trained student for servers and phones, verified on the real runtimes.

`export_student` turns a classifier from `kd_tf.models.build_classifier`
(logits out) into files that a server and a mobile app use as they are, runs
every file on its runtime and compares it with the Keras student:

```
out_dir/
  serving/                SavedModel on raw text: signature serving_default,
                          strings in, probabilities / label_id / label out
  hub_encoder/            the student's encoder in TF Hub format (HubEncoder)
  hub_preprocessor/       the matching TF Hub BERT preprocessor
  tflite/model_<variant>.tflite   float32, float16, dynamic_int8, full_int8;
                          builtin ops only; int32 inputs input_word_ids,
                          input_mask, input_type_ids at [1, seq_length];
                          float32 probabilities out; BERT tokenizer and label
                          metadata for MediaPipe Tasks TextClassifier
  labels.txt              the label names, one a line, in output order
  export_report.json/.md  sizes, differences, label agreement, latency
```

Everything is written into a hidden sibling folder that is renamed to
`out_dir` only when every check passed, so a failed export never leaves a
folder that looks complete. See docs/mobile.md for the app side.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import shutil
import statistics
import tempfile
import time
import warnings

import numpy as np

import kd_tf
from kd_tf import mobile_metadata
from kd_tf.bert import INPUT_KEYS

VARIANTS = ("float32", "float16", "dynamic_int8", "full_int8")
"""TFLite variants: float32 weights; float16 weights; int8 weights with float
activations (dynamic range); int8 weights and activations calibrated on text
(full integer, float32 probabilities out)."""

GATED_VARIANTS = ("float16", "dynamic_int8")
REPORT_JSON = "export_report.json"
REPORT_MARKDOWN = "export_report.md"
LATENCY_THREADS = (1, 2)


class ExportError(RuntimeError):
    """An export was refused or failed a check; the message says what to do.

    Attributes:
        report: the `ExportReport` measured so far when a verification
            failed (None when the export was refused before writing).
    """

    def __init__(self, message, report=None):
        super().__init__(message)
        self.report = report


# ----------------------------------------------------------------------------
# The report.
# ----------------------------------------------------------------------------
@dataclasses.dataclass
class ExportReport:
    """What an export wrote and how each file compares with the Keras student.

    Attributes:
        out_dir: the export folder.
        seq_length: fixed sequence length of the .tflite inputs and the
            serving preprocessing.
        label_names: class names in output order.
        num_samples: number of texts every form was compared on.
        files: dict from each file's path (relative to `out_dir`) to bytes.
        serving: `max_abs_diff` and `label_agreement` of the serving
            SavedModel against the Keras student.
        hub_encoder: `max_abs_diff` of the TF-Hub-format encoder's
            `sequence_output` against the student's encoder.
        tflite: dict by variant: `path`, `size_bytes`, `operators`, LiteRT's
            `max_abs_diff` and `label_agreement` (inputs tokenized by the
            student's preprocessor), `flip_max_margin` (the largest Keras
            top-1 minus top-2 probability among texts whose label changed:
            small means only borderline texts flip), `latency_ms` by thread
            count (median,
            batch 1), and `mediapipe`: TextClassifier on the texts folded by
            `normalize_for_mobile` (`max_abs_diff`, `label_agreement`) and on
            the raw texts (`raw_max_abs_diff`, `raw_label_agreement`,
            `texts_changed_by_folding`).
        calibration: where the full int8 calibration texts came from
            (`source`, `texts`) and the `rows` they were joined into (see
            `_calibration_inputs`: no padding in calibration rows).
        thresholds: the limits applied.
        failures: the checks that failed (empty for a finished export).
        environment: versions of kd-tf and the runtimes.
        created: UTC time of the export.

    Example:
    >>> report = ExportReport.load("export/export_report.json")
    >>> report.tflite["float32"]["max_abs_diff"] < 1e-4
    True
    """

    out_dir: str
    seq_length: int
    label_names: list
    num_samples: int
    files: dict = dataclasses.field(default_factory=dict)
    serving: dict = dataclasses.field(default_factory=dict)
    hub_encoder: dict = dataclasses.field(default_factory=dict)
    tflite: dict = dataclasses.field(default_factory=dict)
    calibration: dict = dataclasses.field(default_factory=dict)
    thresholds: dict = dataclasses.field(default_factory=dict)
    failures: list = dataclasses.field(default_factory=list)
    environment: dict = dataclasses.field(default_factory=dict)
    created: str = ""

    @property
    def passed(self):
        """True when every check passed."""
        return not self.failures

    def to_dict(self):
        """The report as JSON-ready dict."""
        return dataclasses.asdict(self)

    @classmethod
    def load(cls, path):
        """Reads a report written by `save` (a JSON file or its folder).

        Example:
        >>> ExportReport.load("export").label_names
        ['negative', 'positive']
        """
        path = os.fspath(path)
        if os.path.isdir(path):
            path = os.path.join(path, REPORT_JSON)
        with open(path) as f:
            values = json.load(f)
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})

    def save(self, folder):
        """Writes `export_report.json` and `export_report.md` into `folder`.

        Returns:
            The paths, as a dict with `json` and `markdown`.
        """
        paths = {"json": os.path.join(folder, REPORT_JSON),
                 "markdown": os.path.join(folder, REPORT_MARKDOWN)}
        with open(paths["json"], "w") as f:
            json.dump(self.to_dict(), f, indent=1)
        with open(paths["markdown"], "w") as f:
            f.write(self.to_markdown())
        return paths

    def to_markdown(self):
        """The report as a Markdown page (tables of sizes, agreement, latency)."""
        def num(value, fmt):
            return "n/a" if value is None else format(value, fmt)

        lines = [
            "# Export report", "",
            f"- folder: `{self.out_dir}`",
            f"- created: {self.created}",
            f"- labels (output order): {', '.join(self.label_names)}",
            f"- sequence length: {self.seq_length}",
            f"- compared on {self.num_samples} texts; full int8 calibrated on "
            f"{self.calibration.get('texts', 'n/a')} texts "
            f"({self.calibration.get('source', 'n/a')}), joined into "
            f"{self.calibration.get('rows', 'n/a')} rows that fill the sequence",
            f"- status: {'passed' if self.passed else 'FAILED'}", "",
            "| form | size (MB) | max abs diff of probabilities | label agreement |",
            "|---|---:|---:|---:|",
            f"| serving SavedModel | {self._folder_mb('serving')} | "
            f"{num(self.serving.get('max_abs_diff'), '.2e')} | "
            f"{num(self.serving.get('label_agreement'), '.2%')} |",
            f"| TF Hub encoder (sequence_output) | {self._folder_mb('hub_encoder')} | "
            f"{num(self.hub_encoder.get('max_abs_diff'), '.2e')} | - |",
            "", "## TFLite", "",
            "| variant | size (MB) | LiteRT max abs diff | LiteRT agreement | "
            "MediaPipe max abs diff | MediaPipe agreement | MediaPipe raw-text "
            "agreement | largest Keras margin of a flipped label | "
            "latency 1 thread (ms) | latency 2 threads (ms) |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for variant, r in self.tflite.items():
            mp = r.get("mediapipe") or {}
            latency = r.get("latency_ms", {})
            lines.append(
                f"| {variant} | {r['size_bytes'] / 1e6:.2f} | "
                f"{num(r.get('max_abs_diff'), '.2e')} | "
                f"{num(r.get('label_agreement'), '.2%')} | "
                f"{num(mp.get('max_abs_diff'), '.2e')} | "
                f"{num(mp.get('label_agreement'), '.2%')} | "
                f"{num(mp.get('raw_label_agreement'), '.2%')} | "
                f"{num(r.get('flip_max_margin'), '.3f')} | "
                f"{num(latency.get('1'), '.2f')} | {num(latency.get('2'), '.2f')} |")
        lines += ["", "Latency: median of repeated batch-1 runs of the LiteRT "
                  "interpreter on this machine. MediaPipe columns: "
                  "TextClassifier on the texts folded by "
                  "`normalize_for_mobile`; raw-text agreement: on the texts "
                  "as given.", "", "## Thresholds", ""]
        lines += [f"- {k}: {v}" for k, v in self.thresholds.items()]
        if self.failures:
            lines += ["", "## Failures", ""] + [f"- {f}" for f in self.failures]
        lines += ["", "## Files", "", "| file | bytes |", "|---|---:|"]
        lines += [f"| `{k}` | {v:,} |" for k, v in sorted(self.files.items())]
        return "\n".join(lines) + "\n"

    def _folder_mb(self, folder):
        total = sum(v for k, v in self.files.items()
                    if k.startswith(folder + "/"))
        return f"{total / 1e6:.2f}"


# ----------------------------------------------------------------------------
# LiteRT.
# ----------------------------------------------------------------------------
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
    >>> runner = LiteRTClassifier("export/tflite/model_float32.tflite")
    >>> runner.predict(preprocessor(tf.constant(["a fine film"]))).shape
    (1, 2)
    """

    def __init__(self, model_path, num_threads=1):
        from ai_edge_litert.interpreter import Interpreter

        self.model_path = os.fspath(model_path)
        self._interpreter = Interpreter(model_path=self.model_path,
                                        num_threads=int(num_threads))
        self._interpreter.allocate_tensors()
        details = self._interpreter.get_input_details()
        self.input_names = {}
        self._inputs = {}
        for key in INPUT_KEYS:
            found = [d for d in details
                     if d["name"].split(":")[0].endswith(key)]
            if len(found) != 1:
                raise ValueError(
                    f"{self.model_path}: no single input named like {key!r} "
                    f"(inputs: {[d['name'] for d in details]}).")
            self._inputs[key] = found[0]["index"]
            self.input_names[key] = found[0]["name"]
        if len(details) != len(INPUT_KEYS):
            raise ValueError(f"{self.model_path} has {len(details)} inputs; "
                             f"expected {list(INPUT_KEYS)}.")
        outputs = self._interpreter.get_output_details()
        if len(outputs) != 1:
            raise ValueError(f"{self.model_path} has {len(outputs)} outputs; "
                             f"expected one (the probabilities).")
        self._output = outputs[0]["index"]
        self.seq_length = int(found[0]["shape"][1])

    def __call__(self, inputs):
        """Probabilities `[1, classes]` for one example (`[1, seq_length]` each)."""
        for key, index in self._inputs.items():
            self._interpreter.set_tensor(
                index, np.asarray(inputs[key], np.int32).reshape(1, -1))
        self._interpreter.invoke()
        return self._interpreter.get_tensor(self._output).copy()

    def predict(self, inputs):
        """Probabilities `[batch, classes]`, running the rows one by one.

        Args:
            inputs: dict of int `[batch, seq_length]` arrays or tensors.
        """
        inputs = {k: np.asarray(inputs[k]) for k in INPUT_KEYS}
        rows = len(inputs[INPUT_KEYS[0]])
        return np.concatenate(
            [self({k: v[i:i + 1] for k, v in inputs.items()})
             for i in range(rows)])

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


def tflite_operators(model_bytes):
    """The operators a .tflite uses: builtin names, custom ops as "CUSTOM:<name>".

    Flex (TensorFlow) ops appear as custom ops named "Flex...".

    Example:
    >>> "FULLY_CONNECTED" in tflite_operators(open("m.tflite", "rb").read())
    True
    """
    from tensorflow.lite.python import schema_py_generated as schema

    names = {v: k for k, v in vars(schema.BuiltinOperator).items()
             if not k.startswith("_")}
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
    >>> tflite_input_names(open("m.tflite", "rb").read())["input_mask"]
    'serving_default_input_mask:0'
    """
    from tensorflow.lite.python import schema_py_generated as schema

    graph = schema.Model.GetRootAs(bytearray(model_bytes), 0).Subgraphs(0)
    names = [graph.Tensors(graph.Inputs(i)).Name().decode("utf-8")
             for i in range(graph.InputsLength())]
    found = {}
    for key in INPUT_KEYS:
        matches = [n for n in names if n.split(":")[0].endswith(key)]
        if len(matches) != 1:
            raise ValueError(f"the .tflite has no single input named like "
                             f"{key!r} (inputs: {names}).")
        found[key] = matches[0]
    return found


# ----------------------------------------------------------------------------
# Checks before anything is written.
# ----------------------------------------------------------------------------
def _load_student(student):
    import keras

    import kd_tf.models  # noqa: F401  (registers the kd-tf layers)

    path = os.fspath(student)
    if not os.path.exists(path):
        raise ExportError(f"student file {path} not found; save the student "
                          f"with model.save('student.keras').")
    try:
        return keras.saving.load_model(path)
    except Exception:  # compiled with objects not importable here
        return keras.saving.load_model(path, compile=False)


def _training_evidence(student, trainer, encoder):
    """Why the student counts as trained, or None."""
    for model in (trainer, student):
        optimizer = getattr(model, "optimizer", None)
        steps = int(optimizer.iterations.numpy()) if optimizer is not None else 0
        if steps > 0:
            return f"{model.name}'s optimizer took {steps} steps"
    from kd_tf.hub import load_module

    saved = load_module(encoder.handle).variables
    if any(not np.array_equal(a.numpy(), b.numpy())
           for a, b in zip(saved, encoder.saved_variables)):
        return f"its encoder weights differ from those in {encoder.handle}"
    return None


def _check_student(student, trainer, num_labels, seq_length, allow_untrained):
    import keras

    from kd_tf.hub import HubEncoder
    from kd_tf.models import find_encoder

    if not isinstance(student, keras.Model):
        raise ExportError(f"student is a {type(student).__name__}; pass the "
                          f"keras.Model from kd_tf.models.build_classifier (or "
                          f"the path of its .keras file).")
    names = sorted(t.name for t in student.inputs)
    if names != sorted(INPUT_KEYS):
        raise ExportError(
            f"student {student.name!r} takes inputs {names}; the export needs "
            f"exactly {list(INPUT_KEYS)} (the TF Hub BERT input dict). Build "
            f"it with kd_tf.models.build_classifier.")
    for tensor in student.inputs:
        fixed = tensor.shape[1] if len(tensor.shape) > 1 else None
        if fixed is not None and fixed != seq_length:
            raise ExportError(
                f"student input {tensor.name!r} has the fixed length {fixed}; "
                f"pass seq_length={fixed} (or build the student with "
                f"seq_length=None).")
    if len(student.outputs) != 1:
        raise ExportError(
            f"student {student.name!r} has {len(student.outputs)} outputs; the "
            f"export needs one: the class logits (mobile classifiers read one "
            f"score tensor).")
    shape = tuple(student.outputs[0].shape)
    if len(shape) != 2 or shape[1] != num_labels:
        raise ExportError(
            f"student output has shape {shape}, but {num_labels} label names "
            f"were given; pass one name per class, in output order.")
    layer = student.outputs[0]._keras_history[0]
    activation = getattr(layer, "activation", None)
    if activation is not None and keras.activations.serialize(activation) != "linear":
        raise ExportError(
            f"the student's last layer {layer.name!r} applies "
            f"{keras.activations.serialize(activation)!r}; the export expects "
            f"logits and adds the softmax itself.")
    try:
        encoder = find_encoder(student)
    except ValueError as e:
        raise ExportError(str(e)) from e
    if not isinstance(encoder, HubEncoder) or encoder.output_key is not None:
        raise ExportError("the student's encoder must be a HubEncoder returning "
                          "the TF Hub output dict (build_classifier does so).")
    if not allow_untrained:
        evidence = _training_evidence(student, trainer, encoder)
        if evidence is None:
            raise ExportError(
                f"student {student.name!r} looks untrained: it has no optimizer "
                f"steps and its encoder still holds the weights of "
                f"{encoder.handle}. Train it first (model.fit or a Distiller), "
                f"pass the Distiller that trained it as `student`, or pass "
                f"allow_untrained=True if this is intended.")
    return encoder


def _encoder_config(encoder, encoder_path):
    from kd_tf import hub_format

    try:
        return hub_format.read_encoder_metadata(encoder_path or encoder.handle)
    except ValueError as e:
        if encoder_path is not None:
            raise ExportError(str(e)) from e
        return None


def _local_folder(handle):
    import tensorflow_hub as hub

    from kd_tf.hub import resolve_handle

    return handle if os.path.isdir(handle) else hub.resolve(resolve_handle(handle))


def _find_vocab(folder, handle):
    assets = os.path.join(folder, "assets")
    names = sorted(n for n in os.listdir(assets) if n.endswith(".txt")) \
        if os.path.isdir(assets) else []
    if len(names) != 1:
        raise ExportError(
            f"cannot tell the vocabulary of preprocessor {handle}: its assets "
            f"hold {names or 'no .txt file'}; pass vocab_file=.")
    return os.path.join(assets, names[0])


def _check_texts(texts, what):
    texts = list(texts)
    if not texts or not all(isinstance(t, str) for t in texts):
        raise ExportError(f"{what} must be a non-empty list of strings (real "
                          f"texts of the task); got {len(texts)} items.")
    return texts


def _check_labels(label_names):
    if isinstance(label_names, str):
        raise ExportError("label_names must be a list of names, e.g. "
                          "['negative', 'positive'], not one string.")
    names = [str(n) for n in label_names]
    if (len(set(names)) != len(names) or any(not n.strip() or "\n" in n
                                              for n in names)):
        raise ExportError(f"label_names {names} must be distinct, non-empty "
                          f"and one line each.")
    return names


def _prepare_out_dir(out_dir):
    out_dir = os.path.abspath(os.fspath(out_dir))
    if os.path.exists(out_dir):
        if not os.path.isdir(out_dir):
            raise ExportError(f"{out_dir} is a file; pass a folder to create.")
        if os.listdir(out_dir):
            hint = (" (an earlier export: it has export_report.json)"
                    if os.path.exists(os.path.join(out_dir, REPORT_JSON)) else "")
            raise ExportError(
                f"{out_dir} already holds files{hint}; an export never mixes "
                f"with another run's files. Choose a new folder or delete it.")
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    return out_dir, parent


# ----------------------------------------------------------------------------
# Writers.
# ----------------------------------------------------------------------------
def _track_weights(root, student):
    """Makes `root` own every variable the student's call captures."""
    from kd_tf.hub import HubEncoder

    root.student_variables = [v.value for v in student.weights]
    root.hub_modules = [layer._module for layer in student._flatten_layers()
                        if isinstance(layer, HubEncoder)]


def _write_serving(student, preprocessor, label_names, path):
    import tensorflow as tf

    root = tf.Module()
    _track_weights(root, student)
    root.preprocessor = preprocessor._module
    labels = tf.constant(label_names)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")],
                 autograph=False)
    def serve(text):
        logits = tf.cast(student(preprocessor(text), training=False), tf.float32)
        probabilities = tf.nn.softmax(logits, axis=-1)
        label_id = tf.argmax(probabilities, axis=-1)
        return {"probabilities": probabilities, "label_id": label_id,
                "label": tf.gather(labels, label_id)}

    root.serve = serve
    tf.saved_model.save(root, path, signatures={"serving_default": serve})


def _write_tflite_source(student, seq_length, path):
    """A SavedModel of the batch-1 probabilities function TFLite converts."""
    import tensorflow as tf

    root = tf.Module()
    _track_weights(root, student)
    spec = [tf.TensorSpec([1, seq_length], tf.int32, name=k) for k in INPUT_KEYS]

    @tf.function(input_signature=spec, autograph=False)
    def probabilities(input_word_ids, input_mask, input_type_ids):
        inputs = {"input_word_ids": input_word_ids, "input_mask": input_mask,
                  "input_type_ids": input_type_ids}
        logits = tf.cast(student(inputs, training=False), tf.float32)
        return {"probabilities": tf.nn.softmax(logits, axis=-1)}

    root.probabilities = probabilities
    tf.saved_model.save(root, path, signatures={"serving_default": probabilities})


def convert_to_tflite(model, seq_length, variant="float32", calibration_inputs=None):
    """Converts a Keras classifier to a batch-1 `.tflite` (builtin ops, softmax at the end).

    The same conversion `export_student` runs, without metadata or checks:
    for measuring the size of any model (a teacher, a baseline) as TFLite.

    Args:
        model: a classifier from `kd_tf.models.build_classifier`.
        seq_length: the fixed sequence length of the three int32 inputs.
        variant: one of `VARIANTS`.
        calibration_inputs: for `"full_int8"`, a dict of int32
            `[N, seq_length]` arrays of real tokenized text.

    Returns:
        The `.tflite` flatbuffer as bytes.

    Raises:
        ExportError: if the conversion needs Flex or custom ops.

    Example:
    >>> len(convert_to_tflite(teacher, seq_length=128))  # bytes  # doctest: +SKIP
    """
    with tempfile.TemporaryDirectory() as tmp:
        source = os.path.join(tmp, "source")
        _write_tflite_source(model, seq_length, source)
        return _convert(source, variant, calibration_inputs)


def _convert(source, variant, calibration_inputs):
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(
        source, signature_keys=["serving_default"])
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
                yield {k: v[i:i + 1] for k, v in calibration_inputs.items()}

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
            f"variants or change the model.") from e
    custom = [op for op in tflite_operators(model) if op.startswith("CUSTOM:")]
    if custom:
        raise ExportError(
            f"TFLite {variant} model needs the non-builtin ops {custom} (Flex "
            f"or custom), which MediaPipe and stock LiteRT cannot run.")
    return model


def _write_hub_encoder(encoder, encoder_meta, encoder_path, path):
    """The fine-tuned encoder as a TF-Hub-format folder."""
    import tensorflow as tf

    from kd_tf import hub_format

    if encoder_meta is not None:
        keras_encoder = hub_format.load_bert_encoder(
            encoder_path or encoder.handle, variables=encoder.saved_variables)
        hub_format.save_bert_encoder(keras_encoder, path)
    else:  # a published TF Hub encoder: its restored module holds the weights
        tf.saved_model.save(encoder._module, path)


def _tokenize(preprocessor, texts):
    import tensorflow as tf

    packed = preprocessor(tf.constant(texts))
    return {k: packed[k].numpy() for k in INPUT_KEYS}


def _calibration_inputs(preprocessor, texts, seq_length):
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

    lengths = preprocessor.tokenize(tf.constant(texts)).merge_dims(-2, -1) \
        .row_lengths().numpy()
    rows, current, count = [], [], 0
    for text, length in zip(texts, lengths):
        current.append(text)
        count += int(length)
        if count >= seq_length - 2:
            rows.append(" ".join(current))
            current, count = [], 0
    if not rows:  # too little text to fill one row: calibrate on what there is
        rows = [" ".join(current)]
    return _tokenize(preprocessor, rows)


def _compare(probabilities, reference):
    """Max abs difference, label agreement, and the Keras margin of the flips.

    `flip_max_margin` is the largest Keras top-1 minus top-2 probability
    among the texts whose label changed (None when none did): small values
    mean only borderline texts flip.
    """
    flips = probabilities.argmax(-1) != reference.argmax(-1)
    top2 = np.sort(reference, axis=-1)[:, -2:]
    margins = (top2[:, 1] - top2[:, 0])[flips]
    return {"max_abs_diff": float(np.max(np.abs(probabilities - reference))),
            "label_agreement": float(np.mean(~flips)),
            "flip_max_margin": float(margins.max()) if margins.size else None}


def _file_sizes(folder):
    sizes = {}
    for root, _, names in os.walk(folder):
        for name in names:
            full = os.path.join(root, name)
            sizes[os.path.relpath(full, folder).replace(os.sep, "/")] = \
                os.path.getsize(full)
    return sizes


def _environment():
    import keras
    import tensorflow as tf

    versions = {"kd_tf": kd_tf.__version__, "tensorflow": tf.__version__,
                "keras": keras.__version__}
    for package in ("ai_edge_litert", "mediapipe"):
        try:
            from importlib.metadata import version

            versions[package] = version(package.replace("_", "-"))
        except Exception:  # not installed
            versions[package] = None
    return versions


def read_texts(path, limit=None, column=None):
    """Reads texts for `export_student` from a file.

    A `.tsv` or `.csv` file is read as a table with a header row, taking the
    column named `column` (by default `sentence` or `text` if present, else
    the first); any other file gives one text a line. Empty lines are
    skipped.

    Args:
        path: the file (UTF-8).
        limit: keep at most this many texts (the first ones).
        column: the table column holding the text.

    Returns:
        A list of strings.

    Raises:
        ExportError: if the file is missing, the column does not exist or
            no text was found.

    Example:
    >>> read_texts("../shared/data/sst2/dev.tsv", limit=2)
    ["it 's a charming and often affecting journey . ", 'unflinchingly bleak and desperate ']
    """
    import csv

    path = os.fspath(path)
    if not os.path.exists(path):
        raise ExportError(f"text file {path} not found.")
    with open(path, encoding="utf-8", newline="") as f:
        if path.endswith((".tsv", ".csv")):
            rows = csv.reader(f, delimiter="\t" if path.endswith(".tsv") else ",",
                              quoting=csv.QUOTE_NONE if path.endswith(".tsv")
                              else csv.QUOTE_MINIMAL)
            header = next(rows, [])
            if column is None:
                column = next((c for c in ("sentence", "text") if c in header),
                              header[0] if header else None)
            if column not in header:
                raise ExportError(f"{path} has no column {column!r}; its header "
                                  f"is {header}.")
            index = header.index(column)
            texts = [row[index] for row in rows if len(row) > index]
        else:
            texts = [line.rstrip("\r\n") for line in f]
    texts = [t for t in texts if t.strip()][:limit]
    if not texts:
        raise ExportError(f"no text found in {path}.")
    return texts


# ----------------------------------------------------------------------------
# The export.
# ----------------------------------------------------------------------------
def export_student(student, out_dir, preprocessor, label_names, sample_texts,
                   seq_length=128, variants=VARIANTS, calibration_texts=None,
                   encoder_path=None, metadata=True, vocab_file=None,
                   allow_untrained=False, max_float32_diff=1e-4,
                   min_label_agreement=0.99, latency_runs=50, verbose=False):
    """Exports a trained student for servers and phones and verifies every file.

    Writes into `out_dir`: `serving/` (SavedModel on raw strings),
    `hub_encoder/` and `hub_preprocessor/` (TF Hub format),
    `tflite/model_<variant>.tflite` (with MediaPipe metadata), `labels.txt`,
    `export_report.json` and `export_report.md`. Each form is run on
    `sample_texts` (serving SavedModel, LiteRT at 1 and 2 threads, MediaPipe
    `TextClassifier`) and compared with the Keras student's probabilities.

    Args:
        student: the trained classifier from `kd_tf.models.build_classifier`
            (TF Hub input dict in, logits out), the path of its `.keras`
            file, or the `Distiller` that trained it (its `student` is
            exported).
        out_dir: folder to create; an existing folder must be empty.
        preprocessor: the student's `HubPreprocessor`, or its handle/folder.
        label_names: class names in output order (e.g. `["negative",
            "positive"]`).
        sample_texts: real texts of the task to compare on (a few hundred
            make the 99% label agreement meaningful).
        seq_length: fixed sequence length of the .tflite inputs (and of the
            serving preprocessing); longer texts are truncated.
        variants: TFLite variants, a subset of `VARIANTS`.
        calibration_texts: real training texts for the full int8
            calibration; by default `sample_texts`.
        encoder_path: the kd-tf encoder folder describing the student's
            encoder architecture; by default the HubEncoder's handle.
        metadata: attach MediaPipe BERT metadata (needs mediapipe and an
            uncased vocabulary); False writes plain .tflite files.
        vocab_file: the preprocessor's vocabulary; by default the single
            `.txt` in its `assets/`.
        allow_untrained: export a student that shows no sign of training.
        max_float32_diff: largest allowed absolute difference of
            probabilities for float32 forms (serving, TF Hub encoder, float32
            .tflite, MediaPipe float32).
        min_label_agreement: smallest allowed label agreement of float16 and
            dynamic int8 (LiteRT and MediaPipe). Full int8 is reported only.
        latency_runs: batch-1 runs whose median is each latency.
        verbose: print progress.

    Returns:
        The `ExportReport` (also saved in `out_dir`).

    Raises:
        ExportError: the student, labels, texts, preprocessor or `out_dir`
            are unsuitable (before anything is written), a conversion needs
            non-builtin ops, or an exported form differs from the Keras
            student beyond the limits (`error.report` holds the numbers). In
            every case `out_dir` is left as it was.
        ImportError: if `metadata=True` and mediapipe is not installed.

    Example:
    >>> report = export_student(student, "export", "models/preprocessor",
    ...                         ["negative", "positive"], dev_texts[:200],
    ...                         seq_length=128, calibration_texts=train_texts[:200])
    >>> report.tflite["dynamic_int8"]["label_agreement"] >= 0.99
    True
    """
    import keras
    import tensorflow as tf
    import tensorflow_text  # noqa: F401  (the preprocessor's ops)

    from kd_tf.hub import HubPreprocessor, load_module

    def log(message):
        if verbose:
            print(message, flush=True)

    # 1. Refuse unsuitable input before writing anything.
    trainer = None
    if isinstance(student, (str, os.PathLike)):
        student = _load_student(student)
    elif isinstance(getattr(student, "student", None), keras.Model):
        trainer, student = student, student.student
    variants = tuple(variants)
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or len(set(variants)) != len(variants):
        raise ExportError(f"variants {list(variants)}: choose distinct names "
                          f"from {list(VARIANTS)}.")
    label_names = _check_labels(label_names)
    sample_texts = _check_texts(sample_texts, "sample_texts")
    calibration = {"source": "calibration_texts", "texts": 0}
    if "full_int8" in variants:
        if calibration_texts is None:
            calibration = {"source": "sample_texts (pass calibration_texts "
                                     "for real training texts)"}
            calibration_texts = sample_texts
        calibration_texts = _check_texts(calibration_texts, "calibration_texts")
        calibration["texts"] = len(calibration_texts)
    seq_length = int(seq_length)
    encoder = _check_student(student, trainer, len(label_names), seq_length,
                             allow_untrained)
    encoder_meta = _encoder_config(encoder, encoder_path)
    max_positions = (encoder_meta["config"]["max_position_embeddings"]
                     if encoder_meta else 512)
    if not 3 <= seq_length <= max_positions:
        raise ExportError(f"seq_length={seq_length} must be in [3, "
                          f"{max_positions}] (the encoder's positions).")
    handle = preprocessor.handle if isinstance(preprocessor, HubPreprocessor) \
        else os.fspath(preprocessor)
    preprocessor = HubPreprocessor(handle, seq_length=seq_length)
    preprocessor_folder = _local_folder(handle)
    if encoder_meta and preprocessor.vocab_size and \
            preprocessor.vocab_size > encoder_meta["config"]["vocab_size"]:
        raise ExportError(
            f"preprocessor {handle} has {preprocessor.vocab_size} tokens but the "
            f"encoder only {encoder_meta['config']['vocab_size']} embeddings: "
            f"they do not belong together.")
    if metadata:
        mobile_metadata.metadata_writers()  # ImportError with the fix
        vocab_file = os.fspath(vocab_file or _find_vocab(preprocessor_folder, handle))
        try:
            mobile_metadata.check_uncased_vocabulary(vocab_file)
        except ValueError as e:
            raise ExportError(str(e)) from e
        probe = ["HELLO World", "hello world"]
        upper, lower = (preprocessor.tokenize(tf.constant([t])).flat_values.numpy()
                        for t in probe)
        if not np.array_equal(upper, lower):
            raise ExportError(
                f"preprocessor {handle} keeps case, but MediaPipe's BERT "
                f"tokenizer lower-cases every text, so the phone would feed "
                f"other token ids. Use an uncased preprocessor, or export with "
                f"metadata=False and tokenize in the app.")
    out_dir, parent = _prepare_out_dir(out_dir)

    report = ExportReport(
        out_dir=out_dir, seq_length=seq_length, label_names=label_names,
        num_samples=len(sample_texts), calibration=calibration,
        thresholds={"max_float32_diff": max_float32_diff,
                    "min_label_agreement": min_label_agreement,
                    "gated_variants": list(GATED_VARIANTS)},
        environment=_environment(),
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(
            timespec="seconds"))
    failures = report.failures

    def gate(ok, message):
        if not ok:
            failures.append(message)

    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.tmp-", dir=parent)
    try:
        # 2. The Keras student's answers.
        inputs = _tokenize(preprocessor, sample_texts)
        reference = tf.nn.softmax(tf.cast(student.predict(
            inputs, batch_size=32, verbose=0), tf.float32)).numpy()

        # 3. Serving SavedModel on raw strings.
        log("serving SavedModel ...")
        serving_dir = os.path.join(tmp, "serving")
        _write_serving(student, preprocessor, label_names, serving_dir)
        served = tf.saved_model.load(serving_dir).signatures["serving_default"]
        probabilities = np.concatenate([
            served(tf.constant(sample_texts[i:i + 64]))["probabilities"].numpy()
            for i in range(0, len(sample_texts), 64)])
        del served
        report.serving = {"path": "serving", "signature": "serving_default",
                          **_compare(probabilities, reference)}
        gate(report.serving["max_abs_diff"] <= max_float32_diff,
             f"serving SavedModel differs from the Keras student by "
             f"{report.serving['max_abs_diff']:.2e} > {max_float32_diff}")

        # 4. TF-Hub-format encoder and its preprocessor.
        log("TF Hub encoder ...")
        hub_dir = os.path.join(tmp, "hub_encoder")
        _write_hub_encoder(encoder, encoder_meta, encoder_path, hub_dir)
        shutil.copytree(preprocessor_folder, os.path.join(tmp, "hub_preprocessor"))
        few = {k: tf.constant(v[:32]) for k, v in inputs.items()}
        written = load_module(hub_dir)(few, training=False)["sequence_output"]
        diff = float(np.max(np.abs(
            written.numpy() - encoder(few)["sequence_output"].numpy())))
        report.hub_encoder = {"path": "hub_encoder",
                              "preprocessor_path": "hub_preprocessor",
                              "max_abs_diff": diff}
        gate(diff <= max_float32_diff,
             f"TF Hub encoder differs from the student's by {diff:.2e}")

        # 5. TFLite variants, each run on LiteRT and MediaPipe.
        source = os.path.join(tmp, ".tflite_source")
        _write_tflite_source(student, seq_length, source)
        calibration_inputs = None
        if "full_int8" in variants:
            calibration_inputs = _calibration_inputs(preprocessor,
                                                     calibration_texts, seq_length)
            calibration["rows"] = len(calibration_inputs["input_mask"])
            calibration["method"] = ("consecutive texts joined to fill "
                                     "seq_length (no padding)")
        os.makedirs(os.path.join(tmp, "tflite"))
        folded = [mobile_metadata.normalize_for_mobile(t) for t in sample_texts]
        changed = sum(a != b for a, b in zip(folded, sample_texts))
        first = {k: v[:1] for k, v in inputs.items()}
        for variant in variants:
            log(f"TFLite {variant} ...")
            model = _convert(source, variant, calibration_inputs)
            relative = f"tflite/model_{variant}.tflite"
            path = os.path.join(tmp, relative)
            if metadata:
                model = mobile_metadata.attach_bert_classifier_metadata(
                    model, vocab_file, label_names, tflite_input_names(model))
            with open(path, "wb") as f:
                f.write(model)
            result = {"path": relative, "size_bytes": len(model),
                      "operators": tflite_operators(model)}
            runner = LiteRTClassifier(path)
            result.update(_compare(runner.predict(inputs), reference))
            result["latency_ms"] = {
                str(n): LiteRTClassifier(path, num_threads=n).latency_ms(
                    first, runs=latency_runs) for n in LATENCY_THREADS}
            if metadata:
                mp = _compare(mobile_metadata.mediapipe_classify(
                    path, folded, len(label_names)), reference)
                raw = _compare(mobile_metadata.mediapipe_classify(
                    path, sample_texts, len(label_names)), reference)
                result["mediapipe"] = {
                    "max_abs_diff": mp["max_abs_diff"],
                    "label_agreement": mp["label_agreement"],
                    "raw_max_abs_diff": raw["max_abs_diff"],
                    "raw_label_agreement": raw["label_agreement"],
                    "texts_changed_by_folding": changed}
            report.tflite[variant] = result
            checks = [("LiteRT", result)]
            if metadata:
                checks.append(("MediaPipe", result["mediapipe"]))
            for runtime, numbers in checks:
                if variant == "float32":
                    gate(numbers["max_abs_diff"] <= max_float32_diff,
                         f"float32 on {runtime} differs from the Keras student "
                         f"by {numbers['max_abs_diff']:.2e} > {max_float32_diff}")
                elif variant in GATED_VARIANTS:
                    gate(numbers["label_agreement"] >= min_label_agreement,
                         f"{variant} on {runtime} agrees with the Keras student "
                         f"on {numbers['label_agreement']:.2%} of labels < "
                         f"{min_label_agreement:.0%}")
            log(f"  {len(model) / 1e6:.2f} MB, max diff "
                f"{result['max_abs_diff']:.2e}, agreement "
                f"{result['label_agreement']:.2%}, "
                f"{result['latency_ms']['1']:.2f} ms (1 thread)")
        shutil.rmtree(source)
        with open(os.path.join(tmp, "labels.txt"), "w") as f:
            f.write("\n".join(label_names) + "\n")

        # 6. Verdict, report, and the folder moved into place.
        report.files = _file_sizes(tmp)
        if failures:
            raise ExportError(
                "export failed its checks, nothing was written to "
                f"{out_dir}:\n- " + "\n- ".join(failures) +
                "\n\n" + report.to_markdown(), report)
        report.save(tmp)
        if os.path.isdir(out_dir):
            os.rmdir(out_dir)  # empty, checked above
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"export written to {out_dir}")
    return report
