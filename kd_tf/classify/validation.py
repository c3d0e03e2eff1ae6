"""The checks every source applies: text policies, label resolution, UTF-8 decoding.

`ExampleCollector` accumulates one source's examples through these checks and builds the `TextDataset`.
Every failure is a `DataError` naming the file and line (or archive member) and the fix.
"""

import logging
import re

import numpy as np

from kd_tf.classify.dataset import TextDataset, clean_text
from kd_tf.text_files import DataError

logger = logging.getLogger(__name__)

EMPTY_TEXT_POLICIES = ("error", "skip")
_INT = re.compile(r"[+-]?\d+")


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
            raise DataError(
                f"{where}: the label is empty. Give every row a label, or load "
                f"unlabelled text with label_column=None."
            )
        return int(value) if _INT.fullmatch(value) else value
    raise DataError(
        f"{where}: the label {value!r} is neither a name nor an integer id; "
        f'write labels as names ("pos") or ids (1).'
    )


def _check_label_names(label_names):
    names = tuple(str(n) for n in label_names)
    if len(set(names)) != len(names) or len(names) < 2:
        raise ValueError(f"label_names {names} must be at least two distinct names.")
    for i, name in enumerate(names):
        if _INT.fullmatch(name) and int(name) != i:
            raise ValueError(
                f"label_names {names} are ambiguous: the name {name!r} is an integer that is not "
                f"its own id {i}, so a label {name} in the file could mean either. List integer "
                f'names in id order ("0", "1", ...), or use words.'
            )
    return names


def _resolve_labels(keys, wheres, label_names):
    """Label ids and names from raw label keys (see `load_table`)."""
    if label_names is None:
        if all(isinstance(k, int) for k in keys):
            negative = next((i for i, k in enumerate(keys) if k < 0), None)
            if negative is not None:
                raise DataError(
                    f"{wheres[negative]}: the label {keys[negative]} is negative; "
                    f"label ids start at 0. Fix the row, or load unlabelled text "
                    f"with label_column=None."
                )
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
            raise DataError(
                f"{where}: the label {key!r} is not in the label set {names} (names, "
                f"or ids 0..{len(names) - 1}). Fix the row, or pass label_names that "
                f"list every label the file uses."
            )
        ids[j] = i
    return ids, names


class ExampleCollector:
    """Accumulates the examples of one source, applying the shared checks."""

    def __init__(self, source, *, clean, empty_text, labelled, paired):
        if empty_text not in EMPTY_TEXT_POLICIES:
            raise ValueError(f"empty_text must be one of {EMPTY_TEXT_POLICIES}, not {empty_text!r}.")
        self.source, self.empty_text = source, empty_text
        self.labelled, self.paired = labelled, paired
        self._clean = _cleaner(clean)
        self.texts, self.pairs, self.keys, self.ids, self.wheres = [], [], [], [], []
        self.skipped = []

    def _text(self, value, where, what):
        if not isinstance(value, str):
            raise DataError(
                f"{where}: the {what} is {type(value).__name__} {value!r}, not a "
                f"string. Write texts as strings, or choose the right column."
            )
        if self._clean is not None:
            value = self._clean(value)
        return value.strip()

    def add(self, where, example_id, text, pair=None, label=None):
        text = self._text(text, where, "text")
        pair = self._text(pair, where, "text pair") if self.paired else None
        empty = [what for what, value in (("text", text), ("text pair", pair)) if value == ""]
        if empty:
            if self.empty_text == "skip":
                self.skipped.append(where)
                return
            raise DataError(
                f"{where}: the {empty[0]} is empty or only whitespace. Fix or remove "
                f"the row, or pass empty_text='skip' to skip such examples (they are "
                f"counted in dataset.report)."
            )
        self.texts.append(text)
        self.pairs.append(pair)
        self.ids.append(example_id)
        self.wheres.append(where)
        if self.labelled:
            self.keys.append(_label_key(label, where))

    def build(self, label_names=None, complete=True, **report):
        if not self.texts:
            reason = f"all {len(self.skipped)} texts are empty" if self.skipped else "it holds no examples"
            raise DataError(f"{self.source}: nothing to load, {reason}. Check the path, split and columns.")
        labels = None
        names = tuple(label_names or ())
        if self.labelled:
            labels, names = _resolve_labels(self.keys, self.wheres, label_names)
            present = np.unique(labels)
            if present.size < 2 and complete:  # A `limit` slice may hold one class.
                raise DataError(
                    f"{self.source}: all {len(labels)} examples have the label "
                    f"{names[present[0]]!r}; a classifier needs at least two classes. Check the "
                    f"label column (or folder), or load unlabelled text with label_column=None."
                )
        if self.skipped:
            logger.warning(
                "%s: skipped %d examples with an empty text (first: %s).",
                self.source,
                len(self.skipped),
                self.skipped[0],
            )
        return TextDataset(
            texts=self.texts,
            labels=labels,
            ids=self.ids,
            label_names=names,
            text_pairs=self.pairs if self.paired else None,
            source=self.source,
            report={
                "examples": len(self.texts),
                "skipped_empty_text": len(self.skipped),
                "skipped_where": self.skipped[:10],
                **report,
            },
        )
