"""One Distiller for causal LMs: `Distiller.fit()` on `[batch, length, vocab]` logits of KerasHub models,
with `[batch, length]` labels and sample weights (tiny random Llama teacher and student)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from kd_tf import Distiller
from kd_tf.distill import GeneralizedJSDDistillation
from kd_tf.lm import cut_student, distill_causal_lm, load_causal_lm, load_imdb_corpus, make_lm_dataset
from tests.lm_distill_helpers import kl, log_softmax, padded_prompt_batch, tiny_llama
from tests.lm_tiny import write_tiny_gpt2_folder


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    return tiny_llama(tmp_path_factory.mktemp("lm_distiller"))


@pytest.fixture(scope="module")
def batch(teacher):
    x, labels, weights = padded_prompt_batch(teacher)
    w = weights.numpy()
    assert 0 < w.sum() < w.size and not x["padding_mask"].numpy().all()  # prompts and padding both
    return x, labels, weights


def _student(teacher, seed=0):
    keras.utils.set_random_seed(seed)
    return cut_student(teacher, blocks=[0])


def _loss_and_gradients(distiller, x, labels, weights):
    with tf.GradientTape() as tape:
        parts = distiller.loss_parts(x, labels, weights, training=True)
    variables = distiller.student.trainable_variables
    return parts, tape.gradient(parts["loss"], variables)


def test_alpha_one_is_keras_hub_causal_lm_training(teacher, batch):
    """With alpha = 1 the distiller's loss and gradients are those of the student compiled alone with
    KerasHub's loss (sparse cross-entropy from logits, sample-weighted, summed over the batch's positions)."""
    x, labels, weights = batch
    student = _student(teacher)
    distiller = Distiller(student, teacher)
    distiller.compile(optimizer="sgd", alpha=1.0)
    parts, ours = _loss_and_gradients(distiller, x, labels, weights)

    student.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    with tf.GradientTape() as tape:
        reference = student.compute_loss(x, labels, student(x, training=True), weights)
    theirs = tape.gradient(reference, student.trainable_variables)
    assert len(ours) == len(theirs) == len(student.trainable_variables) > 0
    assert teacher.trainable is False  # the distiller froze it; a student cut from it still trains
    assert float(parts["loss"]) == pytest.approx(float(reference), rel=1e-6)
    assert float(parts["student_loss"]) == pytest.approx(float(reference), rel=1e-6)
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)


@pytest.mark.parametrize(
    "loss, reference",
    [
        ("kl", lambda lt, ls: kl(lt, ls)),
        ("reverse_kl", lambda lt, ls: kl(ls, lt)),
        (GeneralizedJSDDistillation(beta=0.25), None),
    ],
    ids=["kl", "reverse_kl", "jsd"],
)
def test_distillation_loss_is_numpys_over_the_unmasked_positions(teacher, batch, loss, reference):
    x, labels, weights = batch
    student = _student(teacher)
    distiller = Distiller(student, teacher)
    distiller.compile(optimizer="sgd", distillation_loss_fn=loss, alpha=0.0, temperature=2.0)
    parts = distiller.loss_parts(x, labels, weights)
    lt = log_softmax(teacher(x).numpy(), 2.0)
    ls = log_softmax(student(x).numpy(), 2.0)
    if reference is None:
        log_m = np.logaddexp(lt + np.log(0.25), ls + np.log(0.75))
        per_token = 0.25 * kl(lt, log_m) + 0.75 * kl(ls, log_m)
    else:
        per_token = reference(lt, ls)
    w = weights.numpy()
    expected = 4.0 * (per_token * w).sum() / w.size  # T^2 = 4, averaged over the batch's positions
    assert float(parts["distillation_loss"]) == pytest.approx(expected, rel=1e-5)
    assert float(parts["loss"]) == pytest.approx(expected, rel=1e-5)


def test_padded_and_prompt_labels_change_nothing(teacher, batch):
    """Padded positions may hold any id and any label, prompt positions any label: the loss and the
    update stay the same (masks come from the sample weights, never from the pad id)."""
    x, labels, weights = batch
    mask, w = x["padding_mask"].numpy(), weights.numpy()
    rng = np.random.default_rng(0)
    ids = x["token_ids"].numpy().copy()
    ids[~mask] = rng.integers(3, 300, size=(~mask).sum())
    other_labels = labels.numpy().copy()
    other_labels[w == 0] = rng.integers(3, 300, size=(w == 0).sum())
    perturbed = {"token_ids": tf.constant(ids), "padding_mask": x["padding_mask"]}
    student = _student(teacher)
    distiller = Distiller(student, teacher)
    distiller.compile(optimizer="sgd", alpha=0.5, temperature=2.0)
    base, grads = _loss_and_gradients(distiller, x, labels, weights)
    moved, moved_grads = _loss_and_gradients(distiller, perturbed, tf.constant(other_labels), weights)
    assert len(grads) == len(student.trainable_variables) > 0
    for key in ("loss", "student_loss", "distillation_loss"):
        assert float(moved[key]) == pytest.approx(float(base[key]), rel=1e-6)
    for a, b in zip(grads, moved_grads):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
    # Without the sample weights the same perturbation does move the loss: the check can fail.
    unweighted = distiller.loss_parts(x, labels)["loss"]
    assert float(distiller.loss_parts(perturbed, tf.constant(other_labels))["loss"]) != pytest.approx(
        float(unweighted), rel=1e-3
    )


def test_token_metrics_count_weighted_labels_only(teacher, batch):
    x, labels, weights = batch
    distiller = Distiller(_student(teacher), teacher)
    distiller.compile(
        optimizer="sgd", alpha=0.5, weighted_metrics=[keras.metrics.SparseCategoricalAccuracy(name="acc")]
    )
    logs = distiller.test_on_batch(x, labels, sample_weight=weights, return_dict=True)
    w = weights.numpy().astype(bool)
    top1 = distiller.student(x).numpy().argmax(-1)
    assert logs["acc"] == pytest.approx((top1 == labels.numpy())[w].mean(), abs=1e-6)


def test_distill_causal_lm_lowers_the_gap_to_the_teacher(teacher, tmp_path):
    train, heldout = load_imdb_corpus(limit=8).split(0.25, seed=0)
    heldout_ds = make_lm_dataset(heldout, teacher, 32, batch_size=8)

    def gap(student):
        total, count = 0.0, 0.0
        for x, _, w in heldout_ds:
            per_token = kl(log_softmax(teacher(x).numpy()), log_softmax(student(x).numpy()))
            total, count = total + (per_token * w.numpy()).sum(), count + w.numpy().sum()
        return total / count

    student = _student(teacher)
    before = gap(student)
    history = distill_causal_lm(
        teacher,
        student,
        train,
        sequence_length=32,
        batch_size=8,
        epochs=2,
        targets="live",
        optimizer=keras.optimizers.Adam(1e-2),
        cache_dir=str(tmp_path),
        validation=heldout,
        verbose=0,
    )
    after = gap(student)
    losses = history.history["distillation_loss"]
    assert losses[-1] < losses[0] and "val_student_loss" in history.history
    # Measured: 1.35 -> 0.98 nats per token of KL(teacher || student) on held-out reviews.
    assert after < 0.8 * before


def test_mismatched_tokenizers_are_refused_with_the_differing_tokens(teacher, tmp_path):
    gpt2 = load_causal_lm(write_tiny_gpt2_folder(tmp_path / "gpt2"))
    corpus = load_imdb_corpus(limit=2)
    with pytest.raises(
        ValueError, match=r"tokenizer differs from the teacher's.*id 1: teacher '<\|im_start\|>'"
    ):
        distill_causal_lm(teacher, gpt2, corpus, cache_dir=str(tmp_path), verbose=0)
    with pytest.raises(ValueError, match="targets must be one of"):
        distill_causal_lm(teacher, _student(teacher), corpus, targets="cached", verbose=0)
    with pytest.raises(ValueError, match="needs the full distribution"):
        distill_causal_lm(teacher, _student(teacher), corpus, loss="reverse_kl", verbose=0)
    with pytest.raises(ValueError, match="On-policy batches need a teacher to score them"):
        distill_causal_lm(teacher, _student(teacher), corpus, targets="none", on_policy_ratio=0.5, verbose=0)
