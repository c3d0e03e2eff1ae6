"""Measuring models: quality from predictions, size on disk, CPU latency and throughput.

The article's evaluation (section 9): a student is judged against its teacher
on accuracy, precision, recall and F1, on size, and on speed. Every quality
number here is computed from saved predictions (`save_predictions` /
`load_predictions`), so a report can always be recomputed and checked.
"""

from __future__ import annotations

import os
import time

import numpy as np
import tensorflow as tf


def predict_logits(model, dataset):
    """Runs `model` over a labelled dataset; returns `(logits, labels)` as numpy.

    Args:
        model: a Keras model mapping the input dict to logits.
        dataset: a `tf.data.Dataset` of `(inputs, labels)` batches (e.g. from
            `kd_tf.classify.make_dataset` without shuffling), in a fixed order.

    Returns:
        `(logits [N, C] float32, labels [N] int64)`.

    Example:
    ```python
    logits, labels = predict_logits(student, test_ds)
    ```
    """
    forward = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
    logits, labels = [], []
    for x, y in dataset:
        logits.append(np.asarray(forward(x), np.float32))
        labels.append(np.asarray(y, np.int64))
    return np.concatenate(logits), np.concatenate(labels)


def save_predictions(path, logits, labels, ids=None):
    """Stores logits, labels (and example ids) as a `.npz` file."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    arrays = {"logits": np.asarray(logits, np.float32), "labels": np.asarray(labels, np.int64)}
    if ids is not None:
        arrays["ids"] = np.asarray([str(i) for i in ids])
    np.savez(path, **arrays)
    return path


def load_predictions(path):
    """Reads a file of `save_predictions`; returns a dict of arrays."""
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def classification_metrics(labels, predictions, label_names=None):
    """Accuracy, macro precision/recall/F1 and per-class figures.

    Args:
        labels: true label ids `[N]`.
        predictions: predicted label ids `[N]`, or logits/probabilities
            `[N, C]` (argmax is taken).
        label_names: names of the ids, in order; default `"0", "1", ...`.

    Returns:
        A dict: `accuracy`, `precision`, `recall`, `f1` (macro averages over
        classes), `per_class` (`{name: {precision, recall, f1, support}}`),
        `confusion_matrix` (rows = true, columns = predicted) and `examples`.
        A class never predicted has precision 0.

    Raises:
        ValueError: if the lengths differ or there are no examples.

    Example:
    ```python
    classification_metrics([0, 1, 1, 0], [0, 1, 0, 0])["accuracy"]  # 0.75
    ```
    """
    labels = np.asarray(labels).reshape(-1)
    predictions = np.asarray(predictions)
    num_classes = len(label_names) if label_names is not None else None
    if predictions.ndim == 2:
        num_classes = num_classes or predictions.shape[1]
        predictions = predictions.argmax(axis=1)
    if len(labels) != len(predictions) or len(labels) == 0:
        raise ValueError(
            f"{len(labels)} labels and {len(predictions)} predictions: "
            f"give one prediction per labelled example."
        )
    num_classes = num_classes or int(max(labels.max(), predictions.max())) + 1
    names = list(label_names) if label_names is not None else [str(i) for i in range(num_classes)]
    cm = tf.math.confusion_matrix(labels, predictions, num_classes=num_classes).numpy()
    tp = np.diag(cm).astype(np.float64)
    predicted, support = cm.sum(axis=0), cm.sum(axis=1)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return {
        "examples": int(len(labels)),
        "accuracy": float(tp.sum() / len(labels)),
        "precision": float(precision.mean()),
        "recall": float(recall.mean()),
        "f1": float(f1.mean()),
        "per_class": {
            n: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for n, p, r, f, s in zip(names, precision, recall, f1, support)
        },
        "confusion_matrix": cm.tolist(),
    }


def agreement(logits_a, logits_b):
    """Share of examples on which two models predict the same label."""
    return float(np.mean(np.argmax(logits_a, 1) == np.argmax(logits_b, 1)))


def directory_bytes(path):
    """Total size in bytes of the files under `path` (a file's own size for a file)."""
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(path) for f in files)


def _timed(fn, runs):
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return np.asarray(times)


def measure_speed(model, inputs, runs=30, warmup=3, throughput_batch=None):
    """CPU latency at batch 1 and throughput of a Keras model.

    Both run a compiled forward pass (`tf.function`, `training=False`) on
    fixed-shape inputs, after warm-up calls that trace it.

    Args:
        model: a Keras model on the input dict.
        inputs: a dict of int32 `[N, seq_length]` tensors (real tokenized
            examples); row 0 is the batch-1 example.
        runs: timed batch-1 calls; the median is reported.
        warmup: untimed calls before timing.
        throughput_batch: batch size for examples/s; default all of `inputs`.

    Returns:
        A dict `latency_ms` (median), `latency_ms_p90`, `examples_per_s`,
        `throughput_batch`, `seq_length`.

    Example:
    ```python
    measure_speed(student, pre(tf.constant(texts)), runs=20)["latency_ms"]
    ```
    """
    forward = tf.function(lambda x: model(x, training=False))
    one = {k: v[:1] for k, v in inputs.items()}
    n = int(next(iter(inputs.values())).shape[0])
    batch = min(n, int(throughput_batch or n))
    many = {k: v[:batch] for k, v in inputs.items()}
    for _ in range(warmup):
        forward(one)
    latency = _timed(lambda: forward(one), runs) * 1000.0
    forward(many)
    batch_runs = max(2, min(10, runs // 3))
    per_batch = _timed(lambda: forward(many), batch_runs)
    return {
        "latency_ms": float(np.median(latency)),
        "latency_ms_p90": float(np.percentile(latency, 90)),
        "examples_per_s": float(batch / np.median(per_batch)),
        "throughput_batch": batch,
        "seq_length": int(next(iter(inputs.values())).shape[1]),
    }


LIKE_FOR_LIKE_VARIANTS = ("float32", "dynamic_int8")
"""The TFLite variants every model of a run is converted to and timed in: float32 weights, and int8 weights
with float activations (dynamic range). A ratio is only ever taken between two files of the same variant."""


def _ratio(a, b):
    return None if a is None or not b else float(a) / float(b)


def like_for_like(reference, model):
    """How much smaller and faster `model` is than `reference`, between files of the same format only.

    Args:
        reference: the larger model's TFLite figures (the teacher): `{variant: {"size_bytes": ...,
            "latency_ms": {"1": ms, "2": ms}, "cpu_ms": {"1": ms}}}` (as `measure` records them).
        model: the smaller model's figures, in the same form.

    Returns:
        `{variant: {"size_ratio", "speedup": {threads: x}, "cpu_speedup": {threads: x}}}` for every variant
        both have: `size_ratio` is model bytes / reference bytes (0.25 = a quarter of the teacher's file),
        a speed-up is reference latency / model latency at the same thread count. A variant only one of
        them has gets no entry: a float32 teacher is never compared with an int8 student.

    Example:
    ```python
    like_for_like({"dynamic_int8": {"size_bytes": 22_980_000, "latency_ms": {"1": 6.2}}},
                  {"dynamic_int8": {"size_bytes": 5_190_000, "latency_ms": {"1": 1.6}}})
    # {'dynamic_int8': {'size_ratio': 0.2258..., 'speedup': {'1': 3.875}, 'cpu_speedup': {}}}
    ```
    """
    ratios = {}
    for variant in sorted((reference or {}).keys() & (model or {}).keys(), key=_variant_order):
        r, m = reference[variant], model[variant]
        ratios[variant] = {"size_ratio": _ratio(m.get("size_bytes"), r.get("size_bytes"))}
        for measured, ratio in (("latency_ms", "speedup"), ("cpu_ms", "cpu_speedup")):
            slow, fast = r.get(measured) or {}, m.get(measured) or {}
            ratios[variant][ratio] = {n: _ratio(slow[n], fast[n]) for n in slow if fast.get(n) is not None}
    return ratios


def _variant_order(variant):
    order = ("float32", "float16", "dynamic_int8", "full_int8")
    return order.index(variant) if variant in order else len(order)
