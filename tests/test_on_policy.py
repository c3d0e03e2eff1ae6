"""On-policy distillation: batches the student generated itself, masked to the continuation, mixed with
the corpus's batches at the chosen ratio, scored by the teacher live or in the sparse cache's format, and
the time spent generating reported (tiny random Llama teacher and student)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from kd_tf import Distiller
from kd_tf.distill import SparseTeacherCache
from kd_tf.lm import (
    OnPolicyBatches,
    OnPolicyLog,
    cut_student,
    distill_causal_lm,
    load_imdb_corpus,
    make_lm_dataset,
)
from tests.lm_distill_helpers import kl, log_softmax, tiny_llama

LENGTH = 16


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    return tiny_llama(tmp_path_factory.mktemp("on_policy"))


@pytest.fixture(scope="module")
def corpus():
    return load_imdb_corpus(limit=3)


@pytest.fixture(scope="module")
def batches(teacher, corpus):
    return make_lm_dataset(corpus, teacher, LENGTH, batch_size=4)


def _student(teacher):
    keras.utils.set_random_seed(0)
    return cut_student(teacher, blocks=[1])


def _greedy(model, prompt, total):
    """Greedy continuation by full forward passes, one token at a time (no KV cache)."""
    ids = list(prompt)
    while len(ids) < total:
        x = {"token_ids": tf.constant([ids]), "padding_mask": tf.ones((1, len(ids)), tf.bool)}
        ids.append(int(np.argmax(model(x)[0, -1])))
    return ids


def test_on_policy_batches_hold_the_students_greedy_continuations(teacher, batches):
    student = _student(teacher)
    source = OnPolicyBatches(batches, student, ratio=1.0, prompt_length=5)
    x, labels, weights = next(iter(batches))
    new_x, new_labels, new_weights = source.on_policy((x, labels, weights))
    ids = new_x["token_ids"]
    assert ids.shape == (4, LENGTH) and new_x["padding_mask"].all()
    tokens = np.concatenate([ids, new_labels[:, -1:]], axis=1)  # inputs and the last label: L + 1 tokens
    for row in range(4):
        np.testing.assert_array_equal(ids[row, :5], x["token_ids"][row, :5].numpy())  # the prompt kept
        assert tokens[row].tolist() == _greedy(student, ids[row, :5].tolist(), LENGTH + 1)
    np.testing.assert_array_equal(new_labels, tokens[:, 1:])  # next-token labels of the generated text
    # The loss is masked to the continuation: labels 0..3 are prompt tokens, 4.. are generated.
    np.testing.assert_array_equal(new_weights, np.repeat([[0.0] * 4 + [1.0] * (LENGTH - 4)], 4, axis=0))
    assert new_weights.dtype == np.float32 and ids.dtype == np.int32


def test_the_loss_of_an_on_policy_batch_counts_only_generated_tokens(teacher, batches):
    student = _student(teacher)
    source = OnPolicyBatches(batches, student, ratio=1.0, prompt_length=6)
    x, labels, weights = source.on_policy(next(iter(batches)))
    distiller = Distiller(student, teacher)
    distiller.compile(optimizer="sgd", distillation_loss_fn="reverse_kl", alpha=0.0, temperature=1.0)
    value = float(distiller.loss_parts(x, labels, weights)["loss"])
    per_token = kl(log_softmax(student(x).numpy()), log_softmax(teacher(x).numpy()))
    assert value == pytest.approx((per_token[:, 5:]).sum() / per_token.size, rel=1e-5)


@pytest.mark.parametrize(
    "ratio, expected", [(0.25, [3, 7]), (0.5, [1, 3, 5, 7]), (0.0, []), (1.0, list(range(8)))]
)
def test_the_ratio_is_respected(teacher, batches, ratio, expected):
    source = OnPolicyBatches(batches, _student(teacher), ratio=ratio)
    assert [i for i in range(8) if source.is_on_policy(i)] == expected
    rng = np.random.default_rng(0)
    drawn = OnPolicyBatches(batches, _student(teacher), ratio=ratio, schedule="random")
    share = np.mean([drawn.is_on_policy(i, rng) for i in range(2000)])
    assert share == pytest.approx(ratio, abs=0.04)


def test_fit_mixes_on_policy_batches_and_reports_the_time_spent_generating(teacher, batches):
    student = _student(teacher)
    source = OnPolicyBatches(batches, student, ratio=0.5, prompt_length=4)
    count = int(batches.cardinality())
    distiller = Distiller(student, teacher)
    distiller.compile(optimizer=keras.optimizers.Adam(1e-3), alpha=0.0, temperature=1.0)
    history = distiller.fit(source.dataset(), epochs=2, verbose=0, callbacks=[OnPolicyLog(source)])
    assert source.stats["on_policy_batches"] == count  # half of 2 * count batches
    assert source.stats["off_policy_batches"] == count
    assert sum(history.history["on_policy_batches"]) == count
    shares = history.history["generation_share"]
    assert all(0.0 < s < 1.0 for s in shares) and all(g > 0 for g in history.history["generation_s"])


def test_cached_batches_get_on_policy_targets_in_the_caches_format(teacher, corpus, tmp_path):
    """With sparse cached targets, on-policy batches carry the live teacher's targets in the same format,
    so one train step serves both kinds (the recipe does this with on_policy_ratio)."""
    student = _student(teacher)
    history = distill_causal_lm(
        teacher,
        student,
        corpus,
        sequence_length=LENGTH,
        batch_size=4,
        epochs=1,
        k=8,
        on_policy_ratio=0.5,
        prompt_length=4,
        cache_dir=str(tmp_path),
        verbose=0,
    )
    assert history.history["on_policy_batches"][0] > 0 and 0 < history.history["generation_share"][0] < 1
    assert np.isfinite(history.history["distillation_loss"]).all()
    cache = SparseTeacherCache(tmp_path, teacher, k=8, progress=False)
    x, _, _ = next(iter(make_lm_dataset(corpus, teacher, LENGTH, batch_size=2)))
    targets = cache.teacher_targets(x)
    assert targets["sparse_ids"].dtype == np.uint16 and targets["sparse_log_probs"].shape == (2, LENGTH, 8)


def test_errors_say_what_to_change(teacher, batches, tmp_path):
    student = _student(teacher)
    with pytest.raises(ValueError, match=r"ratio .* must be in \[0, 1\]"):
        OnPolicyBatches(batches, student, ratio=1.5)
    with pytest.raises(ValueError, match=f"prompt_length must be in 1..{LENGTH - 1}"):
        OnPolicyBatches(batches, student, prompt_length=LENGTH)
    with pytest.raises(ValueError, match="schedule must be one of"):
        OnPolicyBatches(batches, student, schedule="every other")
    windows = make_lm_dataset(load_imdb_corpus(limit=1), teacher, LENGTH, batch_size=2).unbatch()
    cached = SparseTeacherCache(tmp_path, teacher, k=4, progress=False).attach(windows).batch(2)
    with pytest.raises(ValueError, match="pass teacher_targets=cache.teacher_targets"):
        OnPolicyBatches(cached, student)
