"""kd_tf.classify.statistics: bootstrap intervals and McNemar tests against hand computations and scipy."""

import math

import numpy as np
import pytest
from scipy import stats

from kd_tf.classify import evaluate
from kd_tf.classify.statistics import (
    McNemarResult,
    PairedBootstrap,
    difference_verdict,
    mcnemar_test,
    spread,
    threshold_verdict,
)


def _pairs(only_a, only_b, both=0, neither=0):
    """Labels and predictions of two models with the given right/wrong counts (2 classes)."""
    labels = np.zeros(only_a + only_b + both + neither, np.int64)
    a = np.concatenate([np.zeros(only_a), np.ones(only_b), np.zeros(both), np.ones(neither)])
    b = np.concatenate([np.ones(only_a), np.zeros(only_b), np.zeros(both), np.ones(neither)])
    return labels, a.astype(np.int64), b.astype(np.int64)


def test_mcnemar_b10_c2_is_the_two_sided_binomial_by_hand():
    labels, a, b = _pairs(10, 2, both=50, neither=7)
    result = mcnemar_test(labels, a, b)
    assert (result.only_a_right, result.only_b_right) == (10, 2)
    # P(X <= 2) for X ~ Binomial(12, 1/2) is (1 + 12 + 66) / 4096; two-sided doubles it.
    assert result.p_value == pytest.approx(2 * 79 / 4096, rel=1e-12)
    assert result.p_value == pytest.approx(stats.binomtest(10, 12, 0.5).pvalue)
    assert result.significant(0.05) and not result.significant(0.01)
    # Symmetric in the two models; logits are accepted as well as ids.
    swapped = mcnemar_test(labels, np.eye(2)[b] * 3.0, a)
    assert (swapped.only_a_right, swapped.only_b_right) == (2, 10)
    assert swapped.p_value == pytest.approx(result.p_value)


@pytest.mark.parametrize("only_a,only_b", [(0, 0), (5, 5), (1, 0), (30, 12), (0, 9)])
def test_mcnemar_matches_the_binomial_sum(only_a, only_b):
    labels, a, b = _pairs(only_a, only_b, both=20, neither=3)
    result = mcnemar_test(labels, a, b)
    n = only_a + only_b
    if n == 0:
        want = 1.0
    else:
        tail = sum(math.comb(n, k) for k in range(min(only_a, only_b) + 1)) / 2**n
        want = min(1.0, 2 * tail)
    assert result.p_value == pytest.approx(want, rel=1e-9)
    assert result.to_dict()["significant"] == (want < 0.05)


def test_mcnemar_refuses_predictions_of_other_examples():
    with pytest.raises(ValueError, match="3 predictions for 4 labelled examples"):
        mcnemar_test([0, 1, 0, 1], [0, 1, 0, 1], [0, 1, 0])


@pytest.fixture(scope="module")
def scored():
    """1,000 examples, 3 classes: a model right ~80% of the time, and a second one that agrees with it
    on most examples (as a student agrees with its teacher)."""
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, 1000)
    a = np.where(rng.random(1000) < 0.8, labels, (labels + 1) % 3)
    b = np.where(rng.random(1000) < 0.9, a, (a + rng.integers(1, 3, 1000)) % 3)
    return labels, a, b


def test_bootstrap_estimates_match_classification_metrics_resample_by_resample(scored):
    labels, a, b = scored
    boot = PairedBootstrap(labels, {"a": a, "b": b}, num_classes=3, resamples=50, seed=4)
    for name, pred in (("a", a), ("b", b)):
        metrics = evaluate.classification_metrics(labels, pred)
        assert boot.estimates[name]["accuracy"] == pytest.approx(metrics["accuracy"])
        assert boot.estimates[name]["f1"] == pytest.approx(metrics["f1"])
    first = next(boot.resample_indices())
    for row in (0, 17, 49):
        index = first[row]
        metrics = evaluate.classification_metrics(labels[index], a[index], ["x", "y", "z"])
        assert boot.samples["a"]["accuracy"][row] == pytest.approx(metrics["accuracy"])
        assert boot.samples["a"]["f1"][row] == pytest.approx(metrics["f1"])
    assert len(boot.samples["b"]["f1"]) == 50


def test_bootstrap_interval_of_accuracy_agrees_with_scipy_and_the_normal_approximation(scored):
    labels, a, _ = scored
    boot = PairedBootstrap(labels, {"a": a}, num_classes=3, resamples=2000, seed=0)
    low, high = boot.interval("a")
    p = boot.estimates["a"]["accuracy"]
    half = 1.959964 * math.sqrt(p * (1 - p) / len(labels))  # Wald: about +/-2.5 points at p = 0.8
    assert low == pytest.approx(p - half, abs=0.004) and high == pytest.approx(p + half, abs=0.004)
    correct = (a == labels).astype(float)
    ref = stats.bootstrap(
        (correct,), np.mean, n_resamples=2000, method="percentile", confidence_level=0.95, random_state=0
    ).confidence_interval
    assert (low, high) == pytest.approx((ref.low, ref.high), abs=0.004)
    # Seeded: the same seed gives the same interval, another seed a slightly different one.
    again = PairedBootstrap(labels, {"a": a}, num_classes=3, resamples=2000, seed=0)
    assert again.interval("a") == (low, high)
    other = PairedBootstrap(labels, {"a": a}, num_classes=3, resamples=2000, seed=1).interval("a")
    assert other != (low, high) and other == pytest.approx((low, high), abs=0.006)
    # F1 interval brackets the estimate.
    f_low, f_high = boot.interval("a", "f1")
    assert f_low < boot.estimates["a"]["f1"] < f_high


def test_paired_intervals_keep_the_pairing(scored):
    labels, a, b = scored
    boot = PairedBootstrap(labels, {"a": a, "b": b}, num_classes=3, resamples=2000, seed=0)
    est_a, est_b = boot.estimates["a"]["accuracy"], boot.estimates["b"]["accuracy"]
    d_low, d_high = boot.difference_interval("a", "b")
    assert d_low < est_a - est_b < d_high
    # b agrees with a on ~90% of examples: the paired interval of the difference is much narrower
    # than that of two independent estimates (the widths added in quadrature).
    a_low, a_high = boot.interval("a")
    b_low, b_high = boot.interval("b")
    assert d_high - d_low < 0.6 * math.hypot(a_high - a_low, b_high - b_low)
    r_low, r_high = boot.ratio_interval("b", "a")
    ratio = boot.samples["b"]["accuracy"] / boot.samples["a"]["accuracy"]
    assert (r_low, r_high) == pytest.approx(tuple(np.percentile(ratio, [2.5, 97.5])))
    assert r_low < est_b / est_a < r_high


def test_bootstrap_edge_cases_and_errors():
    perfect = PairedBootstrap([0, 1, 1, 0], {"m": [0, 1, 1, 0]}, resamples=100, seed=0)
    assert perfect.interval("m") == (1.0, 1.0) and perfect.interval("m", "f1")[1] == 1.0
    # A model that is never right has no ratio to divide by.
    zero = PairedBootstrap([0, 1], {"good": [0, 1], "bad": [1, 0]}, resamples=20, seed=0)
    assert zero.ratio_interval("good", "bad") is None
    with pytest.raises(ValueError, match="no labelled examples"):
        PairedBootstrap([], {"m": []})
    with pytest.raises(ValueError, match="2 predictions for 3 labelled examples"):
        PairedBootstrap([0, 1, 0], {"m": [0, 1]})
    with pytest.raises(ValueError, match="confidence=95"):
        PairedBootstrap([0, 1], {"m": [0, 1]}, confidence=95)
    settings = perfect.settings()
    assert settings["resamples"] == 100 and settings["confidence"] == 0.95


def test_verdicts():
    assert threshold_verdict(0.978, (0.951, 1.004), 0.97) == "undecided"
    assert threshold_verdict(0.99, (0.975, 1.01), 0.97) == "met"
    assert threshold_verdict(0.90, (0.88, 0.93), 0.97) == "missed"
    assert threshold_verdict(None, None, 0.97) == "not measured"
    assert threshold_verdict(float("nan"), (0.1, 0.2), 0.97) == "not measured"
    assert difference_verdict(0.012, McNemarResult(35, 23, 0.148)) == "undecided"
    assert difference_verdict(0.02, McNemarResult(40, 20, 0.013)) == "met"
    assert difference_verdict(-0.02, McNemarResult(20, 40, 0.013)) == "missed"
    assert difference_verdict(0.02, None) == "not measured"


def test_spread_over_seeds():
    got = spread([0.78, 0.79, 0.80, None])
    assert got["mean"] == pytest.approx(0.79) and got["sd"] == pytest.approx(0.01)
    assert got["n"] == 3 and got["values"] == [0.78, 0.79, 0.80, None]
    assert spread([0.5])["sd"] is None and spread([])["mean"] is None
