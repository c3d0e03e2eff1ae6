"""Checks of an export: suitable inputs before anything is written, and comparisons afterwards."""

from __future__ import annotations

import os

import numpy as np

import kd_tf
from kd_tf.bert.encoder import INPUT_KEYS
from kd_tf.export.report import REPORT_JSON, ExportError


def saved_handles(path):
    """The TF Hub handles a `.keras` file names (its `HubEncoder`/`HubPreprocessor` layers), unloaded.

    Args:
        path: a `.keras` file.

    Returns:
        A list of `(layer name, handle)`, read from the file's `config.json` without loading anything.

    Raises:
        ExportError: if `path` is not a `.keras` archive.

    Example:
    ```python
    saved_handles("student.keras")  # [('encoder', '/models/student_init')]
    ```
    """
    import json
    import zipfile

    if not zipfile.is_zipfile(path):
        raise ExportError(f"{path} is not a .keras file (a zip archive); save the student with model.save().")
    with zipfile.ZipFile(path) as archive:
        config = json.loads(archive.read("config.json"))
    found = []

    def walk(node):
        if isinstance(node, dict):
            inner = node.get("config")
            if isinstance(inner, dict) and isinstance(inner.get("handle"), str):
                found.append((inner.get("name", node.get("class_name", "?")), inner["handle"]))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(config)
    return found


def is_remote_handle(handle):
    """Whether loading `handle` fetches a model from the network (a URL, or a published `HANDLES` name)."""
    from kd_tf.bert import HANDLES

    return "://" in handle or handle in HANDLES or handle.startswith(("tfhub.dev/", "kaggle.com/", "www."))


def load_student(student, allow_remote_handles=False):
    """Loads a student `.keras` file (Keras safe mode on), refusing remote handles unless allowed.

    A `.keras` file names its encoder and preprocessor by TF Hub handle, and loading it loads those
    SavedModels, whose graphs may run any TensorFlow op (docs/security.md). A remote handle brings code
    from the network, so it is refused unless `allow_remote_handles`.

    Args:
        student: path of the `.keras` file.
        allow_remote_handles: load a student whose handles are URLs or published TF Hub names.

    Returns:
        The Keras model.

    Raises:
        ExportError: if the file is missing, not a `.keras` archive, or names a remote handle that is
            not allowed (naming the layer and the handle).

    Example:
    ```python
    student = load_student("saved_models/demo/student/model.keras")
    ```
    """
    import keras

    import kd_tf.classify.models  # noqa: F401  (registers the kd-tf layers)

    path = os.fspath(student)
    if not os.path.exists(path):
        raise ExportError(
            f"student file {path} not found; save the student with model.save('student.keras')."
        )
    remote = [(layer, h) for layer, h in saved_handles(path) if is_remote_handle(h)]
    if remote and not allow_remote_handles:
        layer, handle = remote[0]
        raise ExportError(
            f"{path}: its layer {layer!r} loads the remote handle {handle}; loading it would download "
            f"that model and run its code. Pass --allow-remote-handles (Python: "
            f"load_student(path, allow_remote_handles=True)) if you trust it, or save the student with "
            f"a local copy of the model you checked. See docs/security.md."
        )
    try:
        return keras.saving.load_model(path)
    except Exception:  # compiled with objects not importable here
        return keras.saving.load_model(path, compile=False)


def training_evidence(student, trainer, encoder):
    """Why the student counts as trained, or None."""
    for model in (trainer, student):
        optimizer = getattr(model, "optimizer", None)
        steps = int(optimizer.iterations.numpy()) if optimizer is not None else 0
        if steps > 0:
            return f"{model.name}'s optimizer took {steps} steps"
    from kd_tf.bert import load_module

    saved = load_module(encoder.handle).variables
    if any(not np.array_equal(a.numpy(), b.numpy()) for a, b in zip(saved, encoder.saved_variables)):
        return f"its encoder weights differ from those in {encoder.handle}"
    return None


def check_student(student, trainer, num_labels, seq_length, allow_untrained):
    import keras

    from kd_tf.bert import HubEncoder
    from kd_tf.classify.models import find_encoder

    if not isinstance(student, keras.Model):
        raise ExportError(
            f"student is a {type(student).__name__}; pass the "
            f"keras.Model from kd_tf.classify.build_classifier (or "
            f"the path of its .keras file)."
        )
    names = sorted(t.name for t in student.inputs)
    if names != sorted(INPUT_KEYS):
        raise ExportError(
            f"student {student.name!r} takes inputs {names}; the export needs "
            f"exactly {list(INPUT_KEYS)} (the TF Hub BERT input dict). Build "
            f"it with kd_tf.classify.build_classifier."
        )
    for tensor in student.inputs:
        fixed = tensor.shape[1] if len(tensor.shape) > 1 else None
        if fixed is not None and fixed != seq_length:
            raise ExportError(
                f"student input {tensor.name!r} has the fixed length {fixed}; "
                f"pass seq_length={fixed} (or build the student with "
                f"seq_length=None)."
            )
    if len(student.outputs) != 1:
        raise ExportError(
            f"student {student.name!r} has {len(student.outputs)} outputs; the "
            f"export needs one: the class logits (mobile classifiers read one "
            f"score tensor)."
        )
    shape = tuple(student.outputs[0].shape)
    if len(shape) != 2 or shape[1] != num_labels:
        raise ExportError(
            f"student output has shape {shape}, but {num_labels} label names "
            f"were given; pass one name per class, in output order."
        )
    layer = student.outputs[0]._keras_history[0]
    activation = getattr(layer, "activation", None)
    if activation is not None and keras.activations.serialize(activation) != "linear":
        raise ExportError(
            f"the student's last layer {layer.name!r} applies "
            f"{keras.activations.serialize(activation)!r}; the export expects "
            f"logits and adds the softmax itself."
        )
    try:
        encoder = find_encoder(student)
    except ValueError as e:
        raise ExportError(str(e)) from e
    if not isinstance(encoder, HubEncoder) or encoder.output_key is not None:
        raise ExportError(
            "the student's encoder must be a HubEncoder returning "
            "the TF Hub output dict (build_classifier does so)."
        )
    if not allow_untrained:
        evidence = training_evidence(student, trainer, encoder)
        if evidence is None:
            raise ExportError(
                f"student {student.name!r} looks untrained: it has no optimizer "
                f"steps and its encoder still holds the weights of "
                f"{encoder.handle}. Train it first (model.fit or a Distiller), "
                f"pass the Distiller that trained it as `student`, or pass "
                f"allow_untrained=True if this is intended."
            )
    return encoder


def encoder_config(encoder, encoder_path):
    from kd_tf.bert import hub_format

    try:
        return hub_format.read_encoder_metadata(encoder_path or encoder.handle)
    except ValueError as e:
        if encoder_path is not None:
            raise ExportError(str(e)) from e
        return None


def local_folder(handle):
    import tensorflow_hub as hub

    from kd_tf.bert import resolve_handle

    return handle if os.path.isdir(handle) else hub.resolve(resolve_handle(handle))


def find_vocab(folder, handle):
    assets = os.path.join(folder, "assets")
    names = sorted(n for n in os.listdir(assets) if n.endswith(".txt")) if os.path.isdir(assets) else []
    if len(names) != 1:
        raise ExportError(
            f"cannot tell the vocabulary of preprocessor {handle}: its assets "
            f"hold {names or 'no .txt file'}; pass vocab_file=."
        )
    return os.path.join(assets, names[0])


def check_texts(texts, what):
    texts = list(texts)
    if not texts or not all(isinstance(t, str) for t in texts):
        raise ExportError(
            f"{what} must be a non-empty list of strings (real texts of the task); got {len(texts)} items."
        )
    return texts


def check_labels(label_names):
    if isinstance(label_names, str):
        raise ExportError(
            "label_names must be a list of names, e.g. ['negative', 'positive'], not one string."
        )
    names = [str(n) for n in label_names]
    if len(set(names)) != len(names) or any(not n.strip() or "\n" in n for n in names):
        raise ExportError(f"label_names {names} must be distinct, non-empty and one line each.")
    return names


def prepare_out_dir(out_dir):
    out_dir = os.path.abspath(os.fspath(out_dir))
    if os.path.exists(out_dir):
        if not os.path.isdir(out_dir):
            raise ExportError(f"{out_dir} is a file; pass a folder to create.")
        if os.listdir(out_dir):
            hint = (
                " (an earlier export: it has export_report.json)"
                if os.path.exists(os.path.join(out_dir, REPORT_JSON))
                else ""
            )
            raise ExportError(
                f"{out_dir} already holds files{hint}; an export never mixes "
                f"with another run's files. Choose a new folder or delete it."
            )
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    return out_dir, parent


def compare(probabilities, reference):
    """Max abs difference, label agreement, and the Keras margin of the flips.

    `flip_max_margin` is the largest Keras top-1 minus top-2 probability
    among the texts whose label changed (None when none did): small values
    mean only borderline texts flip.
    """
    flips = probabilities.argmax(-1) != reference.argmax(-1)
    top2 = np.sort(reference, axis=-1)[:, -2:]
    margins = (top2[:, 1] - top2[:, 0])[flips]
    return {
        "max_abs_diff": float(np.max(np.abs(probabilities - reference))),
        "label_agreement": float(np.mean(~flips)),
        "flip_max_margin": float(margins.max()) if margins.size else None,
    }


def file_sizes(folder):
    sizes = {}
    for root, _, names in os.walk(folder):
        for name in names:
            full = os.path.join(root, name)
            sizes[os.path.relpath(full, folder).replace(os.sep, "/")] = os.path.getsize(full)
    return sizes


def environment():
    import keras
    import tensorflow as tf

    versions = {"kd_tf": kd_tf.__version__, "tensorflow": tf.__version__, "keras": keras.__version__}
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
    ```python
    read_texts("tests/data/sst2/dev.tsv", limit=2)
    # ["it 's a charming and often affecting journey . ", "unflinchingly bleak and desperate "]
    ```
    """
    import csv

    path = os.fspath(path)
    if not os.path.exists(path):
        raise ExportError(f"text file {path} not found.")
    with open(path, encoding="utf-8", newline="") as f:
        if path.endswith((".tsv", ".csv")):
            rows = csv.reader(
                f,
                delimiter="\t" if path.endswith(".tsv") else ",",
                quoting=csv.QUOTE_NONE if path.endswith(".tsv") else csv.QUOTE_MINIMAL,
            )
            header = next(rows, [])
            if column is None:
                column = next((c for c in ("sentence", "text") if c in header), header[0] if header else None)
            if column not in header:
                raise ExportError(f"{path} has no column {column!r}; its header is {header}.")
            index = header.index(column)
            texts = [row[index] for row in rows if len(row) > index]
        else:
            texts = [line.rstrip("\r\n") for line in f]
    texts = [t for t in texts if t.strip()][:limit]
    if not texts:
        raise ExportError(f"no text found in {path}.")
    return texts
