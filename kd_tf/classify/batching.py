"""`tf.data` pipelines: a `TextDataset` into tokenised batches for Keras.

`make_dataset` runs TF-Hub-format preprocessing inside `tf.data` (batched,
parallel map, prefetch), optionally caches, keeps a deterministic order under
a seed, and buckets by length so a batch of short sentences is not padded to
512 tokens.
"""

import os

import numpy as np
import tensorflow as tf

from kd_tf.bert.encoder import DEFAULT_SEQ_LENGTH, INPUT_KEYS
from kd_tf.classify.dataset import EXAMPLE_ID_KEY, TextDataset
from kd_tf.distill.targets import with_teacher_outputs

# Texts tokenised per call of the preprocessor, before (re)batching.
_TOKENIZE_BATCH = 256


def _resolve_preprocessor(preprocessor, seq_length):
    """(preprocessor callable, seq_length) from a path/handle or a layer."""
    if isinstance(preprocessor, (str, os.PathLike)):
        from kd_tf.bert import HubPreprocessor

        seq_length = DEFAULT_SEQ_LENGTH if seq_length is None else seq_length
        return HubPreprocessor(preprocessor, seq_length=seq_length), int(seq_length)
    if not callable(preprocessor):
        raise TypeError(
            f"preprocessor must be a kd_tf.bert.HubPreprocessor, a TF-Hub-format "
            f"preprocessor handle or folder, or a callable; got {preprocessor!r}."
        )
    own = getattr(preprocessor, "seq_length", None)
    if seq_length is not None and own is not None and int(seq_length) != int(own):
        raise ValueError(
            f"seq_length={seq_length} but the preprocessor packs {own} tokens; "
            f"build the preprocessor with seq_length={seq_length}, or omit it here."
        )
    if seq_length is None and own is None:
        raise ValueError("pass seq_length: the preprocessor does not say how long its rows are.")
    return preprocessor, int(own if seq_length is None else seq_length)


def _per_example(values, count, what):
    """`values` as an array with one row per example (floats as float32)."""
    values = np.asarray(values)
    if values.ndim == 0 or len(values) != count:
        rows = "a scalar" if values.ndim == 0 else f"{len(values)} rows"
        raise ValueError(
            f"{what} has {rows} for {count} examples; give one row per example, in the data's order."
        )
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
    ```python
    bucket_boundaries_for(128)  # [16, 32, 64, 128]
    ```
    """
    if boundaries is None:
        boundaries = [2**k for k in range(4, max(4, int(seq_length).bit_length()))]
    boundaries = [int(b) for b in boundaries]
    if any(b <= 0 for b in boundaries) or boundaries != sorted(set(boundaries)):
        raise ValueError(f"bucket_boundaries must be positive and increasing, not {boundaries}.")
    return [b for b in boundaries if b < seq_length] + [int(seq_length)]


def make_dataset(
    data,
    preprocessor,
    batch_size=32,
    *,
    seq_length=None,
    bucketing=True,
    bucket_boundaries=None,
    pad_to_bucket_boundary=True,
    shuffle=False,
    seed=None,
    cache=False,
    include_labels=None,
    with_ids=False,
    sample_weights=None,
    teacher_outputs=None,
    drop_remainder=False,
):
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
        preprocessor: a `kd_tf.bert.HubPreprocessor`, a TF-Hub-format
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
            "teacher_outputs": {...}}` as `kd_tf.distill.Distiller` expects
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
    ```python
    pre = HubPreprocessor(preprocessor_dir, seq_length=512)
    train_ds = make_dataset(train, pre, batch_size=32, shuffle=True, seed=0)
    model.fit(train_ds, epochs=2)
    ```
    """
    if not isinstance(data, TextDataset):
        raise TypeError(f"data must be a TextDataset (see kd_tf.classify.load_*), not {type(data)}.")
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
        extras["sample_weight"] = _per_example(
            np.asarray(sample_weights, np.float32), len(data), "sample_weights"
        )
    if teacher_outputs:
        extras["teacher_outputs"] = {
            name: _per_example(values, len(data), f"teacher_outputs[{name!r}]")
            for name, values in teacher_outputs.items()
        }
    elif sample_weights is not None and not include_labels:
        raise ValueError("sample_weights need labels (include_labels=True) or teacher_outputs.")
    if extras:
        dataset = tf.data.Dataset.zip(dataset, tf.data.Dataset.from_tensor_slices(extras)).map(
            lambda features, extra: {**features, **extra}
        )
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
        return {
            k: tf.RaggedTensor.from_tensor(v, lengths=lengths) if k in INPUT_KEYS else v
            for k, v in batch.items()
        }

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
            padded[k] = tf.pad(
                value, [[0, 0], [0, extra]], constant_values=padding_id if k == "input_word_ids" else 0
            )
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
                window_size=batch_size,
            )
            dataset = dataset.map(pad, **parallel)
        else:
            dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)
    else:
        dataset = dataset.rebatch(batch_size, drop_remainder=drop_remainder)
    if not bucketing:  # Known batch count: Keras shows progress from the first epoch.
        batches = len(data) // batch_size if drop_remainder else -(-len(data) // batch_size)
        dataset = dataset.apply(tf.data.experimental.assert_cardinality(batches))
    return dataset.map(to_keras).prefetch(tf.data.AUTOTUNE)
