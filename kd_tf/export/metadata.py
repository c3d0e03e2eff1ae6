"""TFLite metadata for MediaPipe Tasks `TextClassifier` (Android, iOS, web, Python).

MediaPipe's text classifier runs a BERT .tflite on raw strings when the file
carries *metadata*: the WordPiece vocabulary (its BERT tokenizer lower-cases,
splits and adds `[CLS]`/`[SEP]` itself), the names of the three input tensors
and the label names. This module writes that metadata with MediaPipe's own
writer and reads it back, and folds texts for that tokenizer
(`normalize_for_mobile`) so a phone gets the token ids the Keras student
was trained on.

The mediapipe 1.2.x wheels lack one native module of that writer,
`mediapipe.tasks.cc.metadata.python._pywrap_metadata_version`, so
`import mediapipe.tasks.python.metadata.metadata_writers` fails with
`No module named 'mediapipe.tasks.cc'`. The module has a single job: compute
the metadata's *minimum parser version*, the oldest metadata parser that
understands every field used. `minimum_parser_version` is a line-by-line port
of that C++ function (mediapipe/tasks/cc/metadata/metadata_version.cc), and
`metadata_writers` registers it under the missing name while it imports the
writer, only when the real module is absent, and removes the registration
afterwards. Wheels that ship the native module (mediapipe 0.10.x) use it
unchanged.

Example:
```python
model = attach_bert_classifier_metadata(
    open("model.tflite", "rb").read(), "vocab.txt", ["negative", "positive"])
read_metadata(model)["min_parser_version"]  # '1.1.0'
```
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import json
import os
import shutil
import sys
import tempfile
import types
import unicodedata

import numpy as np

from kd_tf.bert.encoder import SPECIAL_TOKENS

INSTALL_HINT = "install it with `pip install 'mediapipe==1.2.3'` (or `pip install -e '.[mobile]'`)"

_NATIVE_PACKAGE = "mediapipe.tasks.cc.metadata.python"
_NATIVE_MODULE = _NATIVE_PACKAGE + "._pywrap_metadata_version"


# ----------------------------------------------------------------------------
# Minimum metadata parser version (port of metadata_version.cc).
# ----------------------------------------------------------------------------
def minimum_parser_version(metadata_buffer):
    """The oldest TFLite metadata parser version that reads every field used.

    A Python port of MediaPipe's `GetMinimumMetadataParserVersion`
    (mediapipe/tasks/cc/metadata/metadata_version.cc): every schema member
    added after 1.0.0 raises the minimum to the version that introduced it.

    Args:
        metadata_buffer: a `ModelMetadata` flatbuffer (bytes or bytearray,
            file identifier "M001").

    Returns:
        The version as "MAJOR.MINOR.PATCH", e.g. "1.1.0" for BERT tokenizer
        metadata.

    Raises:
        ValueError: if the buffer is not a `ModelMetadata` flatbuffer.

    Example:
    ```python
    minimum_parser_version(metadata_buffer)  # '1.1.0'
    ```
    """
    from mediapipe.tasks.metadata import metadata_schema_py_generated as fb

    buffer = bytes(metadata_buffer)
    if len(buffer) < 8 or buffer[4:8] != b"M001":
        raise ValueError("not a TFLite ModelMetadata flatbuffer (the file identifier 'M001' is missing).")
    metadata = fb.ModelMetadataT.InitFromObj(fb.ModelMetadata.GetRootAsModelMetadata(buffer, 0))
    version = [(1, 0, 0)]

    def need(v):
        version[0] = max(version[0], v)

    def files(items):
        for item in items or ():
            if item.type == fb.AssociatedFileType.VOCABULARY:
                need((1, 0, 1))
            if item.type == fb.AssociatedFileType.SCANN_INDEX_FILE:
                need((1, 4, 0))
            if item.version is not None:
                need((1, 4, 1))

    def units(items):
        for item in items or ():
            kind = item.optionsType
            if kind in (
                fb.ProcessUnitOptions.BertTokenizerOptions,
                fb.ProcessUnitOptions.SentencePieceTokenizerOptions,
            ):
                need((1, 1, 0))
            if kind == fb.ProcessUnitOptions.RegexTokenizerOptions:
                need((1, 2, 1))

    def tensors(items):
        for item in items or ():
            files(item.associatedFiles)
            units(item.processUnits)
            if (
                item.content is not None
                and item.content.contentPropertiesType == fb.ContentProperties.AudioProperties
            ):
                need((1, 3, 0))

    for subgraph in metadata.subgraphMetadata or ():
        tensors(subgraph.inputTensorMetadata)
        tensors(subgraph.outputTensorMetadata)
        files(subgraph.associatedFiles)
        for process_units in (subgraph.inputProcessUnits, subgraph.outputProcessUnits):
            if process_units is not None:
                need((1, 1, 0))
                units(process_units)
        if subgraph.inputTensorGroups is not None or subgraph.outputTensorGroups is not None:
            need((1, 2, 0))
        if subgraph.customMetadata is not None:
            need((1, 5, 0))
    files(metadata.associatedFiles)
    return ".".join(str(part) for part in version[0])


def _native_version_module_missing():
    try:
        importlib.import_module(_NATIVE_MODULE)
        return False
    except ImportError:
        return True


@contextlib.contextmanager
def _version_module_stand_in():
    """Registers `minimum_parser_version` under the missing native module name.

    Only the package and module names that are absent get a stand-in; all of
    them are removed again on exit (modules imported meanwhile keep their
    reference to the stand-in).
    """
    parts = _NATIVE_MODULE.split(".")
    added = []
    for i in range(3, len(parts) + 1):  # mediapipe.tasks.cc and below
        name = ".".join(parts[:i])
        if name in sys.modules:
            continue
        module = types.ModuleType(name)
        if i < len(parts):
            module.__path__ = []  # a package
        else:
            module.GetMinimumMetadataParserVersion = minimum_parser_version
            module.__doc__ = (
                "kd-tf stand-in for MediaPipe's missing native module (see kd_tf.export.metadata)."
            )
        sys.modules[name] = module
        added.append(name)
    for name in added[1:]:
        parent, _, child = name.rpartition(".")
        setattr(sys.modules[parent], child, sys.modules[name])
    try:
        yield
    finally:
        for name in reversed(added):
            sys.modules.pop(name, None)


def metadata_writers():
    """Imports MediaPipe's metadata writer modules, working around mediapipe 1.2.x.

    Returns:
        A namespace with `metadata_writer`, `text_classifier` (the writer
        modules of `mediapipe.tasks.python.metadata.metadata_writers`) and
        `metadata` (`mediapipe.tasks.python.metadata.metadata`, which holds
        `MetadataDisplayer`).

    Raises:
        ImportError: if mediapipe is not installed, with the command that
            installs it.

    Example:
    ```python
    writers = metadata_writers()
    writers.metadata_writer.Labels().add(["negative", "positive"])
    ```
    """
    try:
        importlib.import_module("mediapipe.tasks.python")
    except ImportError as e:
        raise ImportError(f"MediaPipe is needed for mobile metadata: {INSTALL_HINT}. ({e})") from e
    stand_in = _version_module_stand_in() if _native_version_module_missing() else contextlib.nullcontext()
    with stand_in:
        from mediapipe.tasks.python.metadata import metadata
        from mediapipe.tasks.python.metadata.metadata_writers import metadata_writer, text_classifier
    return types.SimpleNamespace(
        metadata=metadata, metadata_writer=metadata_writer, text_classifier=text_classifier
    )


# ----------------------------------------------------------------------------
# Vocabulary rules of MediaPipe's BERT tokenizer.
# ----------------------------------------------------------------------------
def check_uncased_vocabulary(vocab_file):
    """Checks that a WordPiece vocabulary suits MediaPipe's BERT tokenizer.

    That tokenizer lower-cases every text and pads with id 0, so the
    vocabulary must be uncased (no token with a capital letter besides the
    bracketed special tokens), hold the BERT special tokens and have `[PAD]`
    at id 0.

    Args:
        vocab_file: the vocabulary, one token a line.

    Returns:
        The number of tokens.

    Raises:
        ValueError: naming the rule broken and what to do.

    Example:
    ```python
    check_uncased_vocabulary("vocab.txt")  # 30522
    ```
    """
    with open(vocab_file, encoding="utf-8") as f:
        tokens = [line.rstrip("\n") for line in f]
    missing = [t for t in SPECIAL_TOKENS if t not in tokens]
    if missing:
        raise ValueError(
            f"vocabulary {vocab_file} lacks the BERT special "
            f"tokens {missing}; MediaPipe's BERT tokenizer needs "
            f"them."
        )
    if tokens[0] != "[PAD]":
        raise ValueError(
            f"vocabulary {vocab_file} has {tokens[0]!r} at id 0, but MediaPipe "
            f"pads with id 0, which must be [PAD]. Use a BERT vocabulary with "
            f"[PAD] first."
        )
    cased = [t for t in tokens if not (t.startswith("[") and t.endswith("]")) and t != t.lower()]
    if cased:
        raise ValueError(
            f"vocabulary {vocab_file} is cased ({len(cased)} tokens with "
            f"capitals, e.g. {cased[:3]}), but MediaPipe's BERT tokenizer "
            f"lower-cases every text, so the app would see other token ids "
            f"than the student was trained on. Distil an uncased student, or "
            f"export with metadata=False and tokenize in the app."
        )
    return len(tokens)


# Unicode's Default_Ignorable_Code_Point ranges (DerivedCoreProperties.txt): soft hyphen, zero-width
# joiners and spaces, bidi marks, variation selectors, Hangul fillers, tags. ICU's NFKC case folding,
# which TF Text's BertTokenizer applies, deletes them.
DEFAULT_IGNORABLE_RANGES = (
    (0x00AD, 0x00AD),
    (0x034F, 0x034F),
    (0x061C, 0x061C),
    (0x115F, 0x1160),
    (0x17B4, 0x17B5),
    (0x180B, 0x180F),
    (0x200B, 0x200F),
    (0x202A, 0x202E),
    (0x2060, 0x206F),
    (0x3164, 0x3164),
    (0xFE00, 0xFE0F),
    (0xFEFF, 0xFEFF),
    (0xFFA0, 0xFFA0),
    (0xFFF0, 0xFFF8),
    (0x1BCA0, 0x1BCA3),
    (0x1D173, 0x1D17A),
    (0xE0000, 0xE0FFF),
)


@functools.cache
def _fold_table():
    """`str.translate` table: default-ignorables and nonspacing marks deleted, Cc and Cf to a space."""
    table = {code: None for first, last in DEFAULT_IGNORABLE_RANGES for code in range(first, last + 1)}
    for code in range(0x110000):
        if code in table:
            continue
        category = unicodedata.category(chr(code))
        if category == "Mn":
            table[code] = None
        elif category in ("Cc", "Cf"):
            table[code] = " "
    return table


def normalize_for_mobile(text):
    """Folds a text the way the student's tokenizer does, so MediaPipe sees the same tokens.

    The Keras student was trained with TF Text's `BertTokenizer(lower_case=True)` (kd-tf's and TF Hub's
    BERT preprocessors): it applies Unicode NFKC case folding (which also deletes default-ignorable
    characters such as the soft hyphen and zero-width joiner), drops accents (nonspacing marks) and turns
    control and format characters into spaces. MediaPipe's BERT tokenizer only lower-cases ASCII, so
    without this fold a phone gives other token ids for accents and non-ASCII capitals (`cliché`, `ΟΔΟΣ`),
    `ß`, full-width letters, emoji joined by a zero-width joiner, and control characters (a Windows-1252
    en dash read as U+0096 becomes an `[UNK]` token on the phone, nothing in Keras). Steps: NFKD,
    full case folding, NFKD again, delete default-ignorable characters and nonspacing marks (category
    Mn), replace control (Cc) and format (Cf) characters with a space. The app applies the same steps
    (docs/mobile.md has them in Kotlin and Swift). On plain ASCII text the fold only lower-cases and
    turns tabs and line breaks into spaces, as MediaPipe's tokenizer does anyway.

    Measured with MediaPipe's own tokenizer (tests/test_mobile_text.py): after this fold, every code
    point of Unicode 14.0 (Python 3.11's database) gets the token ids of the Keras preprocessor, and so
    does every real IMDB review.

    Args:
        text: a string.

    Returns:
        The folded string, to pass to MediaPipe's `TextClassifier.classify`.

    Raises:
        TypeError: if `text` is not a string.

    Example:
    ```python
    normalize_for_mobile("How do you spell CLICHÉ?")  # 'how do you spell cliche?'
    normalize_for_mobile("two classics \\x96 'Fight Club'")  # "two classics   'fight club'"
    ```
    """
    if not isinstance(text, str):
        raise TypeError(
            f"normalize_for_mobile takes a str, not {type(text).__name__}: decode bytes as UTF-8 first."
        )
    text = unicodedata.normalize("NFKD", unicodedata.normalize("NFKD", text).casefold())
    return text.translate(_fold_table())


# ----------------------------------------------------------------------------
# Writing and reading the metadata.
# ----------------------------------------------------------------------------
def attach_bert_classifier_metadata(model_bytes, vocab_file, label_names, input_names=None):
    """Attaches BERT text-classifier metadata (tokenizer and labels) to a .tflite.

    Args:
        model_bytes: the .tflite flatbuffer: exactly three int32 inputs at
            batch 1 and one float32 output of class probabilities.
        vocab_file: the uncased WordPiece vocabulary; packed into the model
            as `vocab.txt`.
        label_names: the class names in output order; packed as `labels.txt`.
        input_names: dict from `input_word_ids`, `input_mask`,
            `input_type_ids` to the .tflite tensor names; by default the
            names TFLite gives a SavedModel signature with those inputs
            (`serving_default_input_word_ids:0`, ...).

    Returns:
        The model with metadata, as bytes.

    Raises:
        ImportError: if mediapipe is not installed.
        ValueError: if the vocabulary breaks MediaPipe's rules or the labels
            are empty.

    Example:
    ```python
    with_metadata = attach_bert_classifier_metadata(
        model_bytes, "vocab.txt", ["negative", "positive"])
    ```
    """
    check_uncased_vocabulary(vocab_file)
    label_names = [str(name) for name in label_names]
    if not label_names:
        raise ValueError("label_names is empty.")
    names = {
        "input_word_ids": "serving_default_input_word_ids:0",
        "input_mask": "serving_default_input_mask:0",
        "input_type_ids": "serving_default_input_type_ids:0",
    }
    names.update(input_names or {})
    writers = metadata_writers()
    tmp = tempfile.mkdtemp(prefix="kd_tf_vocab_")
    try:
        vocab_copy = os.path.join(tmp, "vocab.txt")  # the packed file's name
        shutil.copyfile(vocab_file, vocab_copy)
        writer = writers.text_classifier.MetadataWriter.create_for_bert_model(
            bytearray(model_bytes),
            tokenizer=writers.metadata_writer.BertTokenizer(vocab_copy),
            labels=writers.metadata_writer.Labels().add(label_names),
            ids_name=names["input_word_ids"],
            mask_name=names["input_mask"],
            segment_name=names["input_type_ids"],
        )
        model_with_metadata, _ = writer.populate()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return bytes(model_with_metadata)


def read_metadata(model):
    """Reads the metadata of a .tflite back.

    Args:
        model: a .tflite path or its bytes.

    Returns:
        The metadata as a dict (MediaPipe's JSON form), with the extra key
        `"associated_files"`: a dict from each packed file's name to its
        text.

    Raises:
        ValueError: if the model has no metadata.

    Example:
    ```python
    read_metadata("model_float32.tflite")["associated_files"]["labels.txt"]  # 'negative\\npositive'
    ```
    """
    if isinstance(model, (str, os.PathLike)):
        with open(model, "rb") as f:
            model = f.read()
    displayer = metadata_writers().metadata.MetadataDisplayer.with_model_buffer(bytearray(model))
    result = json.loads(displayer.get_metadata_json())
    result["associated_files"] = {
        name: displayer.get_associated_file_buffer(name).decode("utf-8")
        for name in displayer.get_packed_associated_file_list()
    }
    return result


def mediapipe_classify(model_path, texts, num_classes):
    """Classifies raw strings with MediaPipe Tasks `TextClassifier`.

    Args:
        model_path: a .tflite with BERT classifier metadata.
        texts: strings.
        num_classes: number of labels.

    Returns:
        float32 `[len(texts), num_classes]`: each category's score at its
        label index (the model's probabilities).

    Raises:
        ImportError: if mediapipe is not installed.

    Example:
    ```python
    mediapipe_classify("model_float32.tflite", ["a fine film"], 2).shape  # (1, 2)
    ```
    """
    try:
        from mediapipe.tasks.python.core.base_options import BaseOptions
        from mediapipe.tasks.python.text import text_classifier
    except ImportError as e:
        raise ImportError(f"MediaPipe is needed to run TextClassifier: {INSTALL_HINT}. ({e})") from e
    options = text_classifier.TextClassifierOptions(
        base_options=BaseOptions(model_asset_path=os.fspath(model_path)), max_results=num_classes
    )
    scores = np.zeros((len(texts), num_classes), np.float32)
    with text_classifier.TextClassifier.create_from_options(options) as classifier:
        for i, text in enumerate(texts):
            result = classifier.classify(text)
            for category in result.classifications[0].categories:
                scores[i, category.index] = category.score
    return scores
