"""Token-level losses against numpy references: forward KL, reverse KL, generalized JSD (and its limits),
next-token cross-entropy, and the sparse top-k / sampled estimators, on `[batch, length, vocab]` logits
with masks and `[batch, length]` sample weights."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from kd_tf.distill import losses as L
from kd_tf.distill import sparse as S
from tests.lm_distill_helpers import kl, log_softmax

B, T, V = 3, 5, 11


@pytest.fixture(scope="module")
def logits():
    rng = np.random.default_rng(0)
    teacher = (rng.normal(size=(B, T, V)) * 2.0).astype("float32")
    student = rng.normal(size=(B, T, V)).astype("float32")
    mask = np.ones((B, T), "float32")
    mask[1, 3:] = 0.0
    mask[2, :2] = 0.0
    return teacher, student, mask


def _np(x):
    return np.asarray(keras.ops.convert_to_numpy(x), np.float64)


def _jsd(lt, ls, beta):
    """numpy generalized JSD with M = beta * p_t + (1 - beta) * p_s."""
    log_m = np.logaddexp(lt + np.log(beta), ls + np.log(1 - beta))
    return beta * kl(lt, log_m) + (1 - beta) * kl(ls, log_m)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_forward_reverse_kl_and_jsd_match_numpy_per_token_and_masked(logits, temperature):
    teacher, student, mask = logits
    lt, ls = log_softmax(teacher, temperature), log_softmax(student, temperature)
    t2 = temperature**2
    references = {
        L.kl_distillation: kl(lt, ls) * t2,
        L.reverse_kl_distillation: kl(ls, lt) * t2,
        L.generalized_jsd_distillation: _jsd(lt, ls, 0.5) * t2,
    }
    for fn, expected in references.items():
        per_token = _np(fn(teacher, student, temperature=temperature, per_token=True))
        np.testing.assert_allclose(per_token, expected, rtol=2e-5, atol=1e-6)
        masked = _np(fn(teacher, student, temperature=temperature, mask=mask))
        np.testing.assert_allclose(masked, (expected * mask).sum(1) / mask.sum(1), rtol=2e-5, atol=1e-6)
    beta = 0.3
    jsd = _np(L.generalized_jsd_distillation(teacher, student, temperature, beta=beta, per_token=True))
    np.testing.assert_allclose(jsd, _jsd(lt, ls, beta) * t2, rtol=2e-5, atol=1e-6)


def test_article_numbers_for_reverse_kl_and_jsd():
    t, s = [[0.9, 0.1]], [[0.8, 0.2]]
    # 0.8 ln(0.8/0.9) + 0.2 ln(0.2/0.1) = -0.0942264 + 0.1386294
    assert _np(L.reverse_kl_distillation(t, s, from_logits=False)) == pytest.approx([0.0444030], abs=1e-6)
    assert float(L.ReverseKLDistillation(from_logits=False)(t, s)) == pytest.approx(0.0444030, abs=1e-6)
    # M = [0.85, 0.15]: 0.5 KL([.9,.1] || M) + 0.5 KL([.8,.2] || M) = 0.5 (0.0191350 + 0.0207977)
    jsd = L.GeneralizedJSDDistillation(beta=0.5, from_logits=False)
    assert float(jsd(t, s)) == pytest.approx(0.0099664, abs=1e-6)


def test_jsd_limits_and_identical_distributions(logits):
    teacher, student, _ = logits
    lt, ls = log_softmax(teacher), log_softmax(student)
    forward, reverse = kl(lt, ls), kl(ls, lt)

    def jsd(beta, t=teacher, s=student):
        return _np(L.generalized_jsd_distillation(t, s, beta=beta, per_token=True))

    # The endpoints are the two KLs exactly (TRL's GKDTrainer convention) ...
    np.testing.assert_allclose(jsd(0.0), forward, rtol=2e-5)
    np.testing.assert_allclose(jsd(1.0), reverse, rtol=2e-5)
    # ... and the interior tends to them once rescaled: JSD(b)/b -> KL(t||s), JSD(b)/(1-b) -> KL(s||t).
    np.testing.assert_allclose(jsd(1e-4) / 1e-4, forward, rtol=1e-2)
    np.testing.assert_allclose(jsd(1 - 1e-4) / 1e-4, reverse, rtol=1e-2)
    assert np.abs(jsd(1e-2) / 1e-2 - forward).max() > np.abs(jsd(1e-4) / 1e-4 - forward).max()
    # Symmetric at 0.5, bounded by ln 2.
    np.testing.assert_allclose(jsd(0.5), jsd(0.5, student, teacher), rtol=1e-5)
    assert jsd(0.5).max() <= np.log(2.0)
    # Identical distributions: every divergence is 0.
    for fn in (L.kl_distillation, L.reverse_kl_distillation, L.generalized_jsd_distillation):
        assert np.abs(_np(fn(teacher, teacher, temperature=2.0, per_token=True))).max() < 1e-5
    with pytest.raises(ValueError, match=r"beta must be in \[0, 1\]"):
        L.GeneralizedJSDDistillation(beta=1.5)


def test_keras_reduction_with_token_sample_weights(logits):
    """Called alone, a loss gives one value per token, so [B, T] sample weights weigh tokens (Keras's sum
    over batch size: sum(w * l) / (B * T))."""
    teacher, student, mask = logits
    expected = (kl(log_softmax(teacher), log_softmax(student)) * mask).sum() / mask.size
    value = L.KLDistillation(temperature=1.0)(teacher, student, sample_weight=mask)
    assert float(value) == pytest.approx(expected, rel=1e-5)


def test_next_token_cross_entropy_is_keras_sparse_cross_entropy(logits):
    _, student, mask = logits
    labels = np.random.default_rng(1).integers(0, V, size=(B, T)).astype("int32")
    nll = -np.take_along_axis(log_softmax(student), labels[..., None], -1)[..., 0]
    np.testing.assert_allclose(
        _np(L.hard_label_cross_entropy(labels, student, per_token=True)), nll, rtol=1e-5
    )
    np.testing.assert_allclose(
        _np(L.hard_label_cross_entropy(labels, student, mask=mask)),
        (nll * mask).sum(1) / mask.sum(1),
        rtol=1e-5,
    )
    keras_loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    ours = L.HardLabelCrossEntropy()(labels, student, sample_weight=mask)
    assert float(ours) == pytest.approx(float(keras_loss(labels, student, sample_weight=mask)), rel=1e-6)
    # An unlabelled id (-1) adds nothing.
    labels[0, 0] = -1
    assert _np(L.hard_label_cross_entropy(labels, student, per_token=True))[0, 0] == 0.0


# ------------------------------------------------------------------ sparse targets
def test_top_k_targets_and_tail_mass_against_numpy(logits):
    teacher, _, _ = logits
    targets = S.sparse_targets(teacher, k=4, temperature=2.0)
    lt = log_softmax(teacher, 2.0)
    ids = np.argsort(-lt, axis=-1)[..., :4]
    np.testing.assert_array_equal(targets[S.SPARSE_IDS].numpy(), ids)
    np.testing.assert_allclose(
        targets[S.SPARSE_LOG_PROBS].numpy(), np.take_along_axis(lt, ids, -1), atol=1e-5
    )
    tail = 1 - np.exp(np.take_along_axis(lt, ids, -1)).sum(-1)
    np.testing.assert_allclose(targets[S.SPARSE_TAIL].numpy(), tail, atol=1e-6)
    with pytest.raises(ValueError, match="larger than the vocabulary"):
        S.sparse_targets(teacher, k=V + 1)


def test_top_k_with_the_whole_vocabulary_is_the_dense_kl(logits):
    teacher, student, mask = logits
    dense = _np(L.kl_distillation(teacher, student, temperature=2.0, mask=mask))
    sparse = _np(
        S.sparse_kl_distillation(S.sparse_targets(teacher, V, temperature=2.0), student, 2.0, mask=mask)
    )
    np.testing.assert_allclose(sparse, dense, rtol=1e-5)


def test_top_k_plus_tail_is_the_kl_of_the_coarsened_distributions(logits):
    teacher, student, _ = logits
    k = 3
    targets = S.sparse_targets(teacher, k)
    lt, ls = log_softmax(teacher), log_softmax(student)
    ids = targets[S.SPARSE_IDS].numpy()
    p = np.concatenate(
        [np.exp(np.take_along_axis(lt, ids, -1)), targets[S.SPARSE_TAIL].numpy()[..., None]], -1
    )
    q_kept = np.exp(np.take_along_axis(ls, ids, -1))
    q = np.concatenate([q_kept, 1 - q_kept.sum(-1, keepdims=True)], -1)
    expected = (p * np.log(p / q)).sum(-1)
    values = _np(S.sparse_kl_distillation(targets, student, per_token=True))
    np.testing.assert_allclose(values, expected, rtol=1e-4, atol=1e-6)
    # Coarsening never adds divergence (data processing inequality), and the tail bucket matters: dropping
    # it (plain top-k renormalised) gives another number.
    assert (values <= kl(lt, ls) + 1e-6).all()
    renormalised = p[..., :k] / p[..., :k].sum(-1, keepdims=True)
    q_renorm = q_kept / q_kept.sum(-1, keepdims=True)
    assert np.abs((renormalised * np.log(renormalised / q_renorm)).sum(-1) - values).max() > 1e-2


def test_sampled_tokens_estimate_the_kl_and_its_gradient_without_bias(logits):
    teacher, student, _ = logits
    lt, ls = log_softmax(teacher), log_softmax(student)
    draws = 20_000
    targets = S.sparse_targets(teacher, draws, mode=S.SAMPLE, seed=(3, 4))
    values = _np(S.sparse_kl_distillation(targets, student, per_token=True))
    # Standard error of the mean of log p_t - log p_s over the draws, per position.
    spread = np.sqrt((np.exp(lt) * (lt - ls - kl(lt, ls)[..., None]) ** 2).sum(-1) / draws)
    assert (np.abs(values - kl(lt, ls)) < 5 * spread + 1e-6).all()
    # The gradient with respect to the student's logits: softmax(s) - p_t, estimated by counts / draws.
    s = tf.Variable(student)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(S.sparse_kl_distillation(targets, s, per_token=True))
    np.testing.assert_allclose(tape.gradient(loss, s).numpy(), np.exp(ls) - np.exp(lt), atol=0.02)
    # Same seed, same draws; another seed, other draws.
    again = S.sparse_targets(teacher, 8, mode=S.SAMPLE, seed=(3, 4))[S.SPARSE_IDS].numpy()
    np.testing.assert_array_equal(
        again, S.sparse_targets(teacher, 8, mode=S.SAMPLE, seed=(3, 4))[S.SPARSE_IDS]
    )
    assert (again != S.sparse_targets(teacher, 8, mode=S.SAMPLE, seed=(5, 4))[S.SPARSE_IDS].numpy()).any()


def test_top_k_with_a_sampled_tail_estimates_the_full_kl_without_bias(logits):
    """The head exactly, the tail from draws of the teacher's tail: the estimate and its gradient are those
    of the dense KL in expectation (the bucket gives the coarsened KL, a lower bound)."""
    teacher, student, _ = logits
    k, draws = 3, 20_000
    lt, ls = log_softmax(teacher), log_softmax(student)
    targets = S.sparse_targets(teacher, k, samples=draws, seed=(1, 2))
    ids = targets[S.SPARSE_IDS].numpy()
    head = np.argsort(-lt, axis=-1, kind="stable")[..., :k]
    np.testing.assert_array_equal(ids[..., :k], head)
    assert not (ids[..., k:, None] == head[..., None, :]).any()  # every draw is outside the head
    np.testing.assert_allclose(
        targets[S.SPARSE_LOG_PROBS].numpy(), np.take_along_axis(lt, ids, -1), atol=1e-5
    )
    values = _np(S.sparse_kl_distillation(targets, student, per_token=True, samples=draws))
    p = np.exp(lt)
    outside = np.ones_like(p, bool)
    np.put_along_axis(outside, head, False, -1)
    p_tail = (p * outside).sum(-1)
    tail_kl = (p * outside * (lt - ls)).sum(-1) / p_tail  # E over the renormalised tail
    spread = p_tail * np.sqrt(((p * outside) * (lt - ls - tail_kl[..., None]) ** 2).sum(-1) / p_tail / draws)
    assert (np.abs(values - kl(lt, ls)) < 5 * spread + 1e-5).all()
    s = tf.Variable(student)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(S.sparse_kl_distillation(targets, s, per_token=True, samples=draws))
    np.testing.assert_allclose(tape.gradient(loss, s).numpy(), np.exp(ls) - p, atol=0.01)
    assert S.bytes_per_token(16, samples=48) == S.bytes_per_token(64) == 260
    with pytest.raises(ValueError, match="only with mode='top_k'"):
        S.SparseKLDistillation(k=8, mode="sample", samples=4)


def test_stored_targets_are_small_and_read_back_close(logits):
    teacher, student, _ = logits
    targets = S.sparse_targets(teacher, 4)
    stored = S.storage_targets(targets, 49152)
    assert {k: v.dtype.name for k, v in stored.items()} == {
        S.SPARSE_IDS: "uint16",
        S.SPARSE_LOG_PROBS: "float16",
        S.SPARSE_TAIL: "float32",
    }
    assert S.ids_dtype(70000) == "int32"
    assert (
        S.bytes_per_token(64) == 260
        and S.bytes_per_token(16) == 68
        and S.bytes_per_token(64, "sample") == 256
    )
    assert sum(v[0, 0].nbytes for v in stored.values()) == S.bytes_per_token(4)
    exact = _np(S.sparse_kl_distillation(targets, student, per_token=True))
    rounded = _np(S.sparse_kl_distillation(stored, student, per_token=True))
    np.testing.assert_allclose(rounded, exact, rtol=5e-3, atol=1e-3)


def test_sparse_loss_class_reads_targets_or_dense_logits(logits):
    teacher, student, mask = logits
    loss = S.SparseKLDistillation(k=V, temperature=2.0)
    dense = _np(L.kl_distillation(teacher, student, temperature=2.0, per_token=True))
    np.testing.assert_allclose(_np(loss.per_token({"logits": teacher}, student)), dense, rtol=1e-5)
    np.testing.assert_allclose(_np(loss.per_token(loss.targets(teacher), student)), dense, rtol=1e-5)
    np.testing.assert_allclose(_np(loss.per_token(tf.constant(teacher), student)), dense, rtol=1e-5)
    with pytest.raises(ValueError, match=r"needs sparse targets .* or dense teacher 'logits'"):
        loss.per_token({S.SPARSE_IDS: loss.targets(teacher)[S.SPARSE_IDS]}, student)
    # As a Keras loss with [B, T] sample weights (Keras casts the ids to float: they come back exact).
    value = float(loss(loss.targets(teacher), student, sample_weight=mask))
    assert value == pytest.approx((dense * mask).sum() / mask.size, rel=1e-5)
    assert S.SparseKLDistillation.from_config(loss.get_config()).get_config() == loss.get_config()
    tail = S.SparseKLDistillation(k=4, samples=6, seed=3, temperature=2.0)
    again = S.SparseKLDistillation.from_config(tail.get_config())
    assert (again.k, again.samples, again.seed, again.mode, again.temperature) == (4, 6, 3, "top_k", 2.0)
    assert again.target_keys() == (S.SPARSE_IDS, S.SPARSE_LOG_PROBS, S.SPARSE_TAIL)
    with pytest.raises(ValueError, match="mode must be one of"):
        S.SparseKLDistillation(mode="top_p")
