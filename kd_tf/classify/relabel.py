"""Labels of one data set mapped onto the label set of a trained model: `map_labels`.

A model trained on IMDB (labels `neg`, `pos`) can be scored on any labelled file, whose labels may be
spelt otherwise (`negative`/`positive`, or SST-2's `0`/`1`). `map_labels` maps every label of the file by
name onto the model's labels; an integer label `i` that names no label is id `i`, as
`kd_tf.classify.load_table` reads integer labels; other names are mapped with `label_map`, and a label
that cannot be mapped is refused with the line where it first occurs.
"""

from __future__ import annotations

import difflib

import numpy as np

from kd_tf.classify.dataset import DataError, TextDataset


def _where(data, index):
    """`source, line N` for table ids (`folder/file:N`), else `source, example 'id'`."""
    example_id = str(data.ids[index])
    line = example_id.rsplit(":", 1)[-1]
    place = f"line {line}" if ":" in example_id and line.isdigit() else f"example {example_id!r}"
    return f"{data.source or 'the data'}, {place}"


def _suggest(name, label_names):
    """The model label a file label most likely means (`positive` -> `pos`), or a placeholder."""
    low = name.lower()
    for target in label_names:
        if low.startswith(target.lower()) or target.lower().startswith(low):
            return target
    close = difflib.get_close_matches(low, [t.lower() for t in label_names], n=1, cutoff=0.5)
    if close:
        return next(t for t in label_names if t.lower() == close[0])
    return label_names[0] if label_names else "NAME"


def map_labels(data, label_names, label_map=None):
    """`data` with its labels mapped onto `label_names`, and how each label was mapped.

    Each label name of `data` is looked up in `label_map` first, then among `label_names`; an integer
    name (`"0"`, `"1"`: a file with integer labels) that is neither is read as that label id.

    Args:
        data: a labelled `TextDataset` (e.g. `load_table(path, "text", "label")`, labels inferred).
        label_names: the labels of the model, in id order (e.g. `("neg", "pos")`).
        label_map: `{label of the file: label of the model}` for names that differ, e.g.
            `{"positive": "pos", "negative": "neg"}`.

    Returns:
        `(mapped TextDataset, mapping)`: the same examples in the same order, labelled with ids into
        `label_names`; `mapping` is `{label of the file: {"label": model label, "examples": count,
        "by": "name" | "label_map" | "id"}}` for every label that occurs.

    Raises:
        DataError: if `data` has no labels, a `label_map` target is not a label of the model, or a label
            of `data` maps onto none (naming the label, how many examples carry it, the line of the first
            one and the `label_map` entry that would fix it).

    Example:
    ```python
    dev = load_table("tests/data/sst2/dev.tsv", "sentence", "label")    # labels "0", "1"
    mapped, how = map_labels(dev, ("neg", "pos"))
    how["1"]  # {'label': 'pos', 'examples': 444, 'by': 'id'}
    ```
    """
    names = [str(n) for n in label_names]
    label_map = {str(k): str(v) for k, v in (label_map or {}).items()}
    if not data.has_labels:
        raise DataError(f"{data.source or 'the data'}: no labels to map; give the column that holds them.")
    for source, target in label_map.items():
        if target not in names:
            raise DataError(
                f"label map {source}={target}: {target!r} is not a label of the model; its labels are "
                f"{', '.join(names)}. Map {source!r} onto one of them."
            )
    index = {name: i for i, name in enumerate(names)}
    new_ids = np.full(len(data.label_names), -1, np.int64)
    mapping = {}
    present = np.unique(data.labels[data.labels >= 0])
    for old in present:
        name = data.label_names[old]
        if name in label_map:
            new_ids[old], by = index[label_map[name]], "label_map"
        elif name in index:
            new_ids[old], by = index[name], "name"
        elif name.isdigit() and int(name) < len(names):
            new_ids[old], by = int(name), "id"
        else:
            rows = np.flatnonzero(data.labels == old)
            guess = _suggest(name, names)
            raise DataError(
                f"{_where(data, rows[0])}: the label {name!r} ({rows.size} of {len(data)} examples) is not "
                f"a label of the model, whose labels are {', '.join(names)}. Map it onto one of them: "
                f"--label-map {name}={guess} on the command line, label_map={{{name!r}: {guess!r}}} in "
                f"Python; or fix the file."
            )
        count = int(np.sum(data.labels == old))
        mapping[name] = {"label": names[new_ids[old]], "examples": count, "by": by}
    labels = np.where(data.labels >= 0, new_ids[np.maximum(data.labels, 0)], data.labels)
    mapped = TextDataset(
        texts=data.texts,
        labels=labels,
        ids=data.ids,
        label_names=tuple(names),
        text_pairs=data.text_pairs,
        source=data.source,
        report=dict(data.report),
    )
    return mapped, mapping


__all__ = ["map_labels"]
