"""How sure a quality figure is: bootstrap intervals, exact McNemar tests, the spread over seeds.

A test set of n examples measures a model's accuracy with sampling error: on 1,000 reviews an accuracy
near 0.8 is only known to about +/-2.5 points (95%). Two models scored on the *same* examples are
compared with paired statistics, which are far sharper than comparing two intervals:

* `PairedBootstrap`: the percentile bootstrap over the examples of one test set. Every resample draws n
  examples with replacement (seeded), and every model is scored on the same resamples, so the interval
  of a difference or of a ratio of two models (the student's retention of the teacher's accuracy) keeps
  the pairing. Accuracy and macro F1 (as `kd_tf.classify.evaluate.classification_metrics` computes them).
* `mcnemar_test`: the exact McNemar test of two models on the same examples: under "equally accurate",
  the examples that exactly one of them gets right split 50/50, so the two-sided binomial test on those
  discordant pairs gives the p-value (`scipy.stats.binomtest`).
* `threshold_verdict` / `difference_verdict`: what a target can claim: met, missed, or undecided when
  the interval straddles the threshold or the difference is not significant.
* `spread`: mean and standard deviation of a figure over training seeds.
"""

from __future__ import annotations

import dataclasses

import numpy as np

DEFAULT_RESAMPLES = 2000
DEFAULT_CONFIDENCE = 0.95
DEFAULT_SIGNIFICANCE = 0.05
METRICS = ("accuracy", "f1")

# A resample chunk holds at most this many drawn examples (bounds memory on large test sets).
_CHUNK_ELEMENTS = 2_000_000


def _predicted_ids(predictions, n, name):
    predictions = np.asarray(predictions)
    if predictions.ndim == 2:
        predictions = predictions.argmax(axis=1)
    predictions = predictions.reshape(-1)
    if len(predictions) != n:
        raise ValueError(
            f"{name}: {len(predictions)} predictions for {n} labelled examples; score every model on the "
            f"same examples, in the same order."
        )
    return predictions.astype(np.int64)


class PairedBootstrap:
    """Percentile bootstrap of accuracy and macro F1, with the same resamples for every model.

    Each of `resamples` resamples draws `len(labels)` examples with replacement (`numpy`'s PCG64 seeded
    with `seed`); each model's accuracy and macro F1 are computed on every resample. An interval is the
    `(1 - confidence) / 2` and `(1 + confidence) / 2` percentiles of those values. Intervals of a
    difference or ratio of two models are computed resample by resample, so they keep the pairing of the
    examples.

    Args:
        labels: true label ids `[N]`.
        predictions: `{model name: predicted ids [N] or logits [N, C]}`, all on the examples of `labels`.
        num_classes: number of classes (macro F1 averages over them); default: the largest id + 1.
        resamples: number of bootstrap resamples.
        seed: seed of the resampling.
        confidence: the interval's coverage, in (0, 1).

    Attributes:
        samples: `{model name: {"accuracy": [resamples], "f1": [resamples]}}`.
        estimates: `{model name: {"accuracy": value, "f1": value}}` on the test set itself.

    Raises:
        ValueError: if there are no examples, a model has another number of predictions, `resamples` is
            below 1 or `confidence` is not in (0, 1).

    Example:
    ```python
    boot = PairedBootstrap(labels, {"teacher": t_logits, "student": s_logits}, num_classes=2, seed=0)
    boot.interval("student")                          # (0.759, 0.810)
    boot.ratio_interval("student", "teacher")         # (0.951, 1.004)
    ```
    """

    def __init__(
        self,
        labels,
        predictions,
        num_classes=None,
        resamples=DEFAULT_RESAMPLES,
        seed=0,
        confidence=DEFAULT_CONFIDENCE,
    ):
        labels = np.asarray(labels, np.int64).reshape(-1)
        if labels.size == 0:
            raise ValueError("no labelled examples: a bootstrap needs at least one.")
        if int(resamples) < 1:
            raise ValueError(f"resamples={resamples}: draw at least 1 resample (2,000 is usual).")
        if not 0.0 < float(confidence) < 1.0:
            raise ValueError(f"confidence={confidence} must be in (0, 1), e.g. 0.95.")
        self.labels = labels
        self.predictions = {name: _predicted_ids(p, labels.size, name) for name, p in predictions.items()}
        top = max([int(labels.max())] + [int(p.max()) for p in self.predictions.values()])
        self.num_classes = int(num_classes) if num_classes is not None else top + 1
        self.resamples, self.seed, self.confidence = int(resamples), int(seed), float(confidence)
        self.estimates = {
            name: {m: float(v[0]) for m, v in _scores(labels[None], p[None], self.num_classes).items()}
            for name, p in self.predictions.items()
        }
        chunks = {name: {m: [] for m in METRICS} for name in self.predictions}
        for index in self.resample_indices():
            y = labels[index]
            for name, p in self.predictions.items():
                for metric, values in _scores(y, p[index], self.num_classes).items():
                    chunks[name][metric].append(values)
        self.samples = {
            name: {m: np.concatenate(v) for m, v in by_metric.items()} for name, by_metric in chunks.items()
        }

    def resample_indices(self):
        """Yields the resamples' example indices, `[rows, N]` int arrays in order, `resamples` rows in all.

        The same seed gives the same resamples (what `samples` was computed from).
        """
        n = self.labels.size
        rng = np.random.default_rng(self.seed)
        rows = max(1, _CHUNK_ELEMENTS // n)
        for start in range(0, self.resamples, rows):
            yield rng.integers(0, n, size=(min(rows, self.resamples - start), n))

    def _percentiles(self, values):
        tail = (1.0 - self.confidence) / 2.0 * 100.0
        values = np.asarray(values, np.float64)
        if not np.isfinite(values).any():
            return None
        low, high = np.nanpercentile(values, [tail, 100.0 - tail])
        return float(low), float(high)

    def interval(self, name, metric="accuracy"):
        """The interval of `metric` ("accuracy" or "f1") of model `name`, as `(low, high)`."""
        return self._percentiles(self.samples[name][metric])

    def difference_interval(self, a, b, metric="accuracy"):
        """The interval of `metric` of `a` minus that of `b`, paired resample by resample."""
        return self._percentiles(self.samples[a][metric] - self.samples[b][metric])

    def ratio_interval(self, a, b, metric="accuracy"):
        """The interval of `metric` of `a` divided by that of `b`, paired resample by resample.

        A resample on which `b` scores 0 has no ratio and is left out; None if no resample has one.
        """
        num, den = self.samples[a][metric], self.samples[b][metric]
        ratio = np.divide(num, den, out=np.full_like(num, np.nan), where=den > 0)
        return self._percentiles(ratio)

    def settings(self):
        """What a reader needs to reproduce the intervals: method, resamples, seed, confidence."""
        return {
            "method": "percentile bootstrap over the test examples, the same resamples for every model",
            "resamples": self.resamples,
            "seed": self.seed,
            "confidence": self.confidence,
        }


def _scores(labels, predictions, num_classes):
    """Accuracy and macro F1 of each row of `[R, N]` label and prediction id arrays."""
    correct = predictions == labels
    f1 = np.zeros(labels.shape[0])
    for k in range(num_classes):
        predicted, actual = predictions == k, labels == k
        true_positive = (predicted & actual).sum(axis=1)
        denominator = predicted.sum(axis=1) + actual.sum(axis=1)
        # 2PR / (P + R) = 2 TP / (predicted + support); 0 for a class neither present nor predicted.
        f1 += np.divide(
            2.0 * true_positive, denominator, out=np.zeros(labels.shape[0]), where=denominator > 0
        )
    return {"accuracy": correct.mean(axis=1), "f1": f1 / num_classes}


@dataclasses.dataclass(frozen=True)
class McNemarResult:
    """An exact McNemar test of models a and b on the same examples.

    Attributes:
        only_a_right: examples a gets right and b gets wrong.
        only_b_right: examples b gets right and a gets wrong.
        p_value: two-sided exact p-value (binomial test of the discordant examples against 1/2).

    Example:
    ```python
    result = mcnemar_test(labels, student_logits, baseline_logits)
    result.significant(0.05), result.to_dict()["p_value"]
    ```
    """

    only_a_right: int
    only_b_right: int
    p_value: float

    @property
    def discordant(self):
        """Examples on which exactly one of the two models is right."""
        return self.only_a_right + self.only_b_right

    def significant(self, level=DEFAULT_SIGNIFICANCE):
        """Whether the two accuracies differ at significance `level` (p < level)."""
        return self.p_value < level

    def to_dict(self, level=DEFAULT_SIGNIFICANCE):
        """JSON-ready: the counts, the p-value and whether it is below `level`."""
        return {
            "test": "exact McNemar (two-sided binomial on the discordant examples)",
            "only_a_right": self.only_a_right,
            "only_b_right": self.only_b_right,
            "p_value": self.p_value,
            "significance_level": level,
            "significant": self.significant(level),
        }


def mcnemar_test(labels, predictions_a, predictions_b):
    """Exact McNemar test: do models a and b differ in accuracy on these examples?

    Only the examples where exactly one model is right carry information. If both models were equally
    accurate, each such example would favour a or b with probability 1/2: the p-value is the two-sided
    binomial test of `only_a_right` successes in `only_a_right + only_b_right` trials (1.0 when no
    example is discordant).

    Args:
        labels: true label ids `[N]`.
        predictions_a: predicted ids `[N]` or logits `[N, C]` of model a.
        predictions_b: the same for model b, on the same examples in the same order.

    Returns:
        A `McNemarResult`.

    Raises:
        ValueError: if the numbers of examples differ.

    Example:
    ```python
    result = mcnemar_test(labels, student_logits, baseline_logits)
    result.only_a_right, result.only_b_right, result.p_value  # (10, 2, 0.0386)
    ```
    """
    from scipy import stats

    labels = np.asarray(labels, np.int64).reshape(-1)
    a_right = _predicted_ids(predictions_a, labels.size, "predictions_a") == labels
    b_right = _predicted_ids(predictions_b, labels.size, "predictions_b") == labels
    only_a, only_b = int(np.sum(a_right & ~b_right)), int(np.sum(~a_right & b_right))
    if only_a + only_b == 0:
        return McNemarResult(0, 0, 1.0)
    p_value = float(stats.binomtest(only_a, only_a + only_b, 0.5, alternative="two-sided").pvalue)
    return McNemarResult(only_a, only_b, min(1.0, p_value))


VERDICTS = ("met", "missed", "undecided", "not measured")


def threshold_verdict(value, interval, threshold):
    """What an estimate with an interval says about `value >= threshold`.

    Args:
        value: the estimate (None or non-finite: not measured).
        interval: its `(low, high)` interval, or None.
        threshold: the target.

    Returns:
        `"met"` if the whole interval is at or above `threshold`, `"missed"` if it is wholly below,
        `"undecided"` if it straddles `threshold` (the test set cannot tell), `"not measured"` without a
        finite value and interval.

    Example:
    ```python
    threshold_verdict(0.978, (0.951, 1.004), 0.97)  # 'undecided'
    ```
    """
    if value is None or not np.isfinite(value) or interval is None:
        return "not measured"
    low, high = interval
    if low >= threshold:
        return "met"
    if high < threshold:
        return "missed"
    return "undecided"


def difference_verdict(difference, test, level=DEFAULT_SIGNIFICANCE):
    """What a paired test says about "a is more accurate than b".

    Args:
        difference: accuracy of a minus accuracy of b (None or non-finite: not measured).
        test: the `McNemarResult` of a against b, or None.
        level: significance level.

    Returns:
        `"met"` if a is better with p < `level`, `"missed"` if a is worse with p < `level`,
        `"undecided"` if the difference is not significant, `"not measured"` without a test.

    Example:
    ```python
    difference_verdict(0.012, McNemarResult(35, 23, 0.148))  # 'undecided'
    ```
    """
    if difference is None or not np.isfinite(difference) or test is None:
        return "not measured"
    if not test.significant(level) or difference == 0:
        return "undecided"
    return "met" if difference > 0 else "missed"


def spread(values):
    """Mean and sample standard deviation of a figure over training seeds.

    Args:
        values: one value per seed; None or non-finite values (a seed that diverged) are left out.

    Returns:
        `{"mean", "sd", "min", "max", "n", "values"}`; `sd` is None for fewer than two values, and
        every figure is None without a value.

    Example:
    ```python
    spread([0.78, 0.79, 0.80])["sd"]  # 0.01
    ```
    """
    values = [None if v is None or not np.isfinite(v) else float(v) for v in values]
    kept = np.asarray([v for v in values if v is not None], np.float64)
    if kept.size == 0:
        return {"mean": None, "sd": None, "min": None, "max": None, "n": 0, "values": values}
    return {
        "mean": float(kept.mean()),
        "sd": float(kept.std(ddof=1)) if kept.size > 1 else None,
        "min": float(kept.min()),
        "max": float(kept.max()),
        "n": int(kept.size),
        "values": values,
    }


__all__ = [
    "DEFAULT_CONFIDENCE",
    "DEFAULT_RESAMPLES",
    "DEFAULT_SIGNIFICANCE",
    "McNemarResult",
    "PairedBootstrap",
    "difference_verdict",
    "mcnemar_test",
    "spread",
    "threshold_verdict",
]
