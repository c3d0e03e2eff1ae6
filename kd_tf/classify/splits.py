"""Seeded, stratified splits of a labelled `TextDataset`."""

import math

import numpy as np


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
    ```python
    train, val = stratified_split(load_aclimdb(archive, "train"), 0.1, seed=0)
    len(train), len(val)  # (22500, 2500)
    ```
    """
    if not data.has_labels:
        raise ValueError(
            f"{data.source}: a stratified split needs labels; split unlabelled "
            f"data with data.subset(indices)."
        )
    if not 0 < validation_fraction < 1:
        raise ValueError(f"validation_fraction must be in (0, 1), not {validation_fraction}.")
    total = math.floor(len(data) * validation_fraction + 0.5)
    if not 0 < total < len(data):
        raise ValueError(
            f"validation_fraction={validation_fraction} of {len(data)} examples "
            f"leaves one part empty; use a larger data set or another fraction."
        )
    classes, counts = np.unique(data.labels, return_counts=True)
    exact = counts * validation_fraction
    take = np.floor(exact).astype(int)
    extra = total - take.sum()
    order = np.lexsort((classes, -(exact - take)))  # largest remainder first, then class id
    take[order[:extra]] += 1
    rng = np.random.default_rng(seed)
    chosen = [rng.permutation(np.flatnonzero(data.labels == c))[:k] for c, k in zip(classes, take)]
    is_val = np.zeros(len(data), bool)
    is_val[np.concatenate(chosen)] = True
    percent = f"{validation_fraction:.0%}"
    return (
        data.subset(~is_val, f"train part, {percent} held out, seed {seed}"),
        data.subset(is_val, f"validation part {percent}, seed {seed}"),
    )
