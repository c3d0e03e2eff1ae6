"""Text-classification examples: the validated, in-memory `TextDataset`.

The first half of the data step ("clean, tokenise, represent"): every source
(`kd_tf.classify.sources`) reads its examples into a `TextDataset` (texts or
text pairs, integer labels, stable example ids, label names) through the
shared checks here. Bad input raises `DataError` (a `ValueError`) whose
message names the file, the line (or archive member) and the fix. The one
input that can be dropped instead is an empty or whitespace-only text, and
only when asked for with `empty_text="skip"`: the count is kept in
`TextDataset.report` and logged. Blank lines of a table (every field empty)
are not examples; they are counted in the report too.
"""

import dataclasses
import re

import numpy as np
import tensorflow as tf

from kd_tf.distill.targets import UNLABELED
from kd_tf.text_files import DataError

EXAMPLE_ID_KEY = "example_id"


_BREAK_TAG = re.compile(r"<br\s*/?>", re.IGNORECASE)
_WHITESPACE = re.compile(r"\s+")


def _cp1252_controls():
    """C1 control characters (U+0080-U+009F) that are Windows-1252 punctuation or letters read as Latin-1."""
    table = {}
    for code in range(0x80, 0xA0):
        try:
            table[code] = bytes([code]).decode("cp1252")
        except UnicodeDecodeError:  # 0x81, 0x8D, 0x8F, 0x90, 0x9D: undefined in cp1252, kept
            pass
    return table


_CP1252_CONTROLS = _cp1252_controls()


def clean_text(text):
    """The cleaning users expect for IMDB reviews.

    Repairs Windows-1252 mojibake: a C1 control character (U+0080-U+009F)
    that is a Windows-1252 byte read as Latin-1 becomes the character
    Windows-1252 means (`\\x96` -> en dash, `\\x97` -> em dash, `\\x85` ->
    ellipsis, `\\x91`/`\\x92` -> quotes, ...); 811 of the 25,000 IMDB train
    reviews hold such characters, which BERT tokenizers would drop as
    control characters. Then replaces HTML line breaks (`<br />`, `<br/>`,
    `<br>`) with a space, collapses runs of whitespace and strips both ends.
    Unicode normalisation and lower-casing are left to the tokenizer.

    Args:
        text: a `str`.

    Returns:
        The cleaned `str`.

    Example:
    ```python
    clean_text("Great film.<br /><br />Loved  it. ")  # 'Great film. Loved it.'
    clean_text("classics \\x96 'Fight Club'") == "classics \\u2013 'Fight Club'"  # True: an en dash
    ```
    """
    text = text.translate(_CP1252_CONTROLS)
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
    ```python
    data = TextDataset(texts=["good", "bad"], labels=[1, 0], ids=["a", "b"],
                       label_names=("neg", "pos"))
    data.class_counts()  # {'neg': 1, 'pos': 1}
    ```
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
        set_(
            "ids",
            _object_array([str(i) for i in self.ids])
            if self.ids is not None
            else _object_array([str(i) for i in range(n)]),
        )
        set_("label_names", tuple(str(name) for name in self.label_names))
        if self.text_pairs is not None:
            set_("text_pairs", _object_array(self.text_pairs))
        if self.labels is not None:
            set_("labels", np.asarray(self.labels, dtype=np.int64).reshape(-1))
        for name in ("ids", "labels", "text_pairs"):
            value = getattr(self, name)
            if value is not None and len(value) != n:
                raise DataError(
                    f"{self.source or 'TextDataset'}: {len(value)} {name} for {n} texts; give one per text."
                )
        for name in ("texts", "text_pairs"):
            values = getattr(self, name)
            bad = next(
                (i for i, v in enumerate(values if values is not None else ()) if not isinstance(v, str)),
                None,
            )
            if bad is not None:
                raise DataError(
                    f"{self.source or 'TextDataset'}: {name}[{bad}] (id "
                    f"{self.ids[bad]!r}) is {type(values[bad]).__name__}, not str; "
                    f"decode bytes or convert values to text first."
                )
        if self.labels is not None and n:
            bad = np.flatnonzero(
                ((self.labels < 0) & (self.labels != UNLABELED)) | (self.labels >= len(self.label_names))
            )
            if bad.size:
                raise DataError(
                    f"{self.source or 'TextDataset'}: example {self.ids[bad[0]]!r} has label id "
                    f"{self.labels[bad[0]]}, outside the {len(self.label_names)} label_names "
                    f"{self.label_names}; give label_names for every id."
                )
        unique, counts = np.unique(self.ids.astype(str), return_counts=True)
        if unique.size != n:
            dup = str(unique[np.argmax(counts)])
            raise DataError(
                f"{self.source or 'TextDataset'}: the example id {dup!r} occurs "
                f"{counts.max()} times; every example needs a unique id. Remove the "
                f"duplicate (a file stored twice in an archive, for example)."
            )

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
        ```python
        first_ten = data.subset(np.arange(10))
        ```
        """
        indices = np.asarray(indices)
        if indices.dtype == bool:
            indices = np.flatnonzero(indices)
        pick = lambda a: None if a is None else a[indices]  # noqa: E731
        return dataclasses.replace(
            self,
            texts=self.texts[indices],
            labels=pick(self.labels),
            ids=self.ids[indices],
            text_pairs=pick(self.text_pairs),
            source=f"{self.source} [{description}]",
        )

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
        ```python
        transfer = train.without_labels().concatenate(unsup)
        ```
        """
        parts = (self, *others)
        for other in others:
            if other.has_labels != self.has_labels:
                raise DataError(
                    f"cannot concatenate labelled and unlabelled examples "
                    f"({self.source!r}, {other.source!r}); call .without_labels() "
                    f"on the labelled ones first."
                )
            if self.has_labels and other.label_names != self.label_names:
                raise DataError(
                    f"label names differ: {self.label_names} ({self.source}) vs "
                    f"{other.label_names} ({other.source}); load both with the "
                    f"same label_names."
                )
            if (other.text_pairs is None) != (self.text_pairs is None):
                raise DataError("cannot concatenate single texts with text pairs.")

        def join(name):
            if getattr(self, name) is None:
                return None
            return np.concatenate([getattr(p, name) for p in parts])

        return TextDataset(
            texts=join("texts"),
            labels=join("labels"),
            ids=join("ids"),
            label_names=self.label_names,
            text_pairs=join("text_pairs"),
            source=" + ".join(p.source for p in parts),
            report={"parts": [dict(p.report) for p in parts]},
        )

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
        ```python
        train_and_transfer = train.add_unlabeled(unsup.subset(np.arange(5000)))
        ```
        """
        if not self.has_labels or other.has_labels:
            raise DataError(
                f"add_unlabeled joins labelled examples ({self.source!r}) with "
                f"unlabelled ones ({other.source!r}); call .without_labels() on "
                f"the second first."
            )
        filler = TextDataset(
            texts=other.texts,
            ids=other.ids,
            text_pairs=other.text_pairs,
            labels=np.full(len(other), UNLABELED),
            source=other.source,
            label_names=self.label_names,
            report=other.report,
        )
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
