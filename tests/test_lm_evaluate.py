"""Causal-LM evaluation on tiny random Llamas and real text: sliding-window perplexity and token
metrics against numpy computations from the models' logits, greedy side-by-side generation against a
cache-free greedy loop, generation speed and model size."""

import os

import numpy as np
import pytest

from kd_tf.lm import (
    TextCorpus,
    convert_gguf,
    cut_student,
    cut_windows,
    generation_speed,
    lm_windows,
    load_causal_lm,
    make_lm_dataset,
    model_size,
    next_token_agreement,
    perplexity,
    side_by_side,
    token_metrics,
    tokenize,
)
from tests.lm_tiny import write_tiny_gguf

WIKITEXT_HEAD = os.path.join(os.path.dirname(__file__), "data", "lm_wikitext2_test_head.txt")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny 3-block Llama (hidden 32, ~300 tokens) and the Hugging Face weights it was written from."""
    folder = tmp_path_factory.mktemp("lm_evaluate")
    weights, _, _, _ = write_tiny_gguf(folder / "tiny.gguf", seed=8, num_layers=3)
    return load_causal_lm(convert_gguf(folder / "tiny.gguf", folder / "hf")), weights


@pytest.fixture(scope="module")
def lm(tiny):
    return tiny[0]


@pytest.fixture(scope="module")
def student(lm):
    return cut_student(lm, blocks=[0, 2])


@pytest.fixture(scope="module")
def wikitext_ids(lm):
    with open(WIKITEXT_HEAD, encoding="utf-8") as f:
        return tokenize(lm, f.read())


def _log_probs(model, ids):
    """float64 log-probabilities `[len(ids), vocab]` of one unpadded sequence."""
    ids = np.asarray(ids, np.int32)[None, :]
    logits = np.asarray(model({"token_ids": ids, "padding_mask": np.ones_like(ids, bool)}), np.float64)[0]
    shifted = logits - logits.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def _reference_perplexity(model, ids, window, stride):
    """Windows ids[b : b + window] for b = 0, stride, ...; each token scored once, when first predicted."""
    nll, scored, start = [], 0, 0
    while True:
        segment = ids[start : start + window + 1]
        log_probs = _log_probs(model, segment[:-1])
        for j in range(len(segment) - 1):
            target = start + j + 1
            if target > scored:
                nll.append(-log_probs[j, segment[j + 1]])
                scored = target
        if start + window >= len(ids) - 1:
            break
        start += stride
    assert scored == len(ids) - 1 == len(nll)
    return float(np.exp(np.mean(nll)))


@pytest.mark.parametrize(
    "n, window, stride", [(2, 4, 4), (9, 4, 4), (10, 4, 4), (40, 8, 3), (40, 8, 1), (7, 16, 5)]
)
def test_cut_windows_scores_every_token_once_with_enough_context(n, window, stride):
    ids = np.arange(100, 100 + n)
    windows = cut_windows(ids, np.ones(n), window, stride, pad_id=-1)
    targets = []
    for k, (inputs, mask, labels, weights) in enumerate(
        zip(windows["token_ids"], windows["padding_mask"], windows["labels"], windows["sample_weight"])
    ):
        start = k * stride
        real = start + np.arange(window) < n
        np.testing.assert_array_equal(mask, real)
        np.testing.assert_array_equal(inputs[real], ids[start : start + window])
        assert (inputs[~real] == -1).all()
        for j in np.flatnonzero(weights):
            assert labels[j] == ids[start + j + 1]  # the next token
            assert k == 0 or j + 1 >= window - stride + 1  # tokens of context it is scored with
            targets.append(start + j + 1)
    assert targets == list(range(1, n))  # every token after the first, once, in order
    assert len(windows["labels"]) == 1 + max(0, -(-(n - 1 - window) // stride))


def test_cut_windows_edge_cases():
    np.testing.assert_array_equal(cut_windows(np.arange(6), np.ones(6), 3)["labels"], [[1, 2, 3], [4, 5, 0]])
    assert cut_windows([7], [1.0], 4)["labels"].shape == (0, 4)
    with pytest.raises(ValueError, match=r"stride must be in 1\.\.4"):
        cut_windows(np.arange(6), np.ones(6), 4, stride=5)


@pytest.mark.parametrize("window, stride", [(64, 64), (64, 16), (256, 256)])
def test_perplexity_matches_numpy_from_the_models_logits(lm, wikitext_ids, window, stride):
    ids = wikitext_ids[:200]
    expected = _reference_perplexity(lm, ids, window, stride)
    assert perplexity(lm, ids, window, stride, batch_size=3) == pytest.approx(expected, rel=1e-5)


def test_perplexity_of_text_tokenizes_it_without_special_tokens(lm, wikitext_ids):
    with open(WIKITEXT_HEAD, encoding="utf-8") as f:
        text = f.read()
    assert perplexity(lm, text, 128, 64) == pytest.approx(perplexity(lm, wikitext_ids, 128, 64), rel=1e-6)
    single = perplexity(lm, wikitext_ids[:100], 128)
    log_probs = _log_probs(lm, wikitext_ids[:100])
    expected = np.exp(-log_probs[np.arange(99), wikitext_ids[1:100]].mean())
    assert single == pytest.approx(expected, rel=1e-5)


def test_token_metrics_and_agreement_match_numpy_on_masked_windows(lm, student):
    corpus = TextCorpus(
        texts=[" the fox runs into the woods.", " the birds sing in the morning.", " 12 trees."],
        prompts=["Q: where?\nA:", "Q: when?\nA:", "Q: how many?\nA:"],
    )
    windows = make_lm_dataset(corpus, lm, 12, batch_size=2, packing=False)
    models = {"teacher": lm, "student": student}
    sums = {name: {"nll": 0.0, "correct": 0.0, "agree": 0.0} for name in models}
    total = 0.0
    for x, labels, weights in windows.as_numpy_iterator():
        w = weights.astype(np.float64)
        total += w.sum()
        top1 = {}
        for name, model in models.items():
            logits = np.asarray(model(x), np.float64)
            shifted = logits - logits.max(-1, keepdims=True)
            log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
            nll = -np.take_along_axis(log_probs, labels[..., None], -1)[..., 0]
            top1[name] = logits.argmax(-1)
            sums[name]["nll"] += (nll * w).sum()
            sums[name]["correct"] += ((top1[name] == labels) * w).sum()
        for name in models:
            sums[name]["agree"] += ((top1[name] == top1["teacher"]) * w).sum()
    assert 0 < total < sum(int(np.prod(b[1].shape)) for b in windows)  # prompts and padding are masked

    results = token_metrics(models, windows, reference="teacher")
    for name in models:
        assert results[name]["tokens"] == int(total)
        assert results[name]["nll"] == pytest.approx(sums[name]["nll"] / total, rel=1e-5)
        assert results[name]["perplexity"] == pytest.approx(np.exp(sums[name]["nll"] / total), rel=1e-5)
        assert results[name]["accuracy"] == pytest.approx(sums[name]["correct"] / total, abs=1e-6)
    assert "agreement" not in results["teacher"]
    assert results["student"]["agreement"] == pytest.approx(sums["student"]["agree"] / total, abs=1e-6)
    assert 0 < results["student"]["agreement"] < 1
    assert next_token_agreement(student, lm, windows) == results["student"]["agreement"]
    assert next_token_agreement(lm, lm, windows) == 1.0


def test_token_metrics_refuses_what_it_cannot_measure(lm):
    windows = lm_windows(TextCorpus(texts=[" the fox."]), lm, 8)
    with pytest.raises(ValueError, match=r"batched windows \[batch, length\]"):
        token_metrics(lm, windows)
    with pytest.raises(ValueError, match="reference 'teacher' is not one of the models"):
        token_metrics({"student": lm}, windows.batch(2), reference="teacher")
    with pytest.raises(ValueError, match="needs at least 2"):
        perplexity(lm, np.asarray([5]), 8)


def _greedy_reference(model, prompt_ids, new_tokens):
    """Greedy decoding by full forward passes (no KV cache)."""
    ids = list(prompt_ids)
    for _ in range(new_tokens):
        ids.append(int(_log_probs(model, ids)[-1].argmax()))
    return ids[len(prompt_ids) :]


def test_side_by_side_generates_greedy_continuations_of_fixed_length(lm, student):
    prompts = ["The quick brown fox", "In the morning the birds sing; in the evening"]
    before = lm.sampler
    rows = side_by_side({"teacher": lm, "student": student}, prompts, new_tokens=6)
    assert lm.sampler is before and lm.generate_function is None  # the model's own sampler is back
    tokenizer = lm.preprocessor.tokenizer
    assert [row["prompt"] for row in rows] == prompts and list(rows[0]) == ["prompt", "teacher", "student"]
    for row, prompt in zip(rows, prompts):
        prompt_ids = [0, *tokenize(lm, prompt)]  # documents start after the separator in training
        for name, model in (("teacher", lm), ("student", student)):
            expected = [i for i in _greedy_reference(model, prompt_ids, 6) if i not in (0, 1, 2)]
            assert row[name] == tokenizer.detokenize(expected)
    with pytest.raises(ValueError, match="at least one prompt"):
        side_by_side({"teacher": lm}, [], new_tokens=4)


def test_generation_speed_separates_prefill_from_decoding(lm):
    prompt = "The quick brown fox"
    speed = generation_speed(lm, prompt, new_tokens=8, runs=2)
    assert speed["prompt_tokens"] == 1 + len(tokenize(lm, prompt))
    assert speed["max_length"] == speed["prompt_tokens"] + 8 and speed["new_tokens"] == 8
    assert speed["tokens_per_s"] == pytest.approx(8 / speed["generate_s"])
    assert speed["decode_tokens_per_s"] > 0 and speed["prefill_s"] >= 0 and speed["compile_s"] > 0
    assert lm.generate_function is None
    with pytest.raises(ValueError, match="new_tokens >= 2"):
        generation_speed(lm, prompt, new_tokens=1)


def test_model_size_counts_tied_embeddings_once(tiny, student):
    lm, weights = tiny
    expected = sum(value.size for value in weights.values())  # tied: no lm_head.weight
    assert "lm_head.weight" not in weights
    assert model_size(lm) == {
        "parameters": expected,
        "float32_bytes": 4 * expected,
        "weight_bytes": 4 * expected,
    }
    per_block = sum(value.size for name, value in weights.items() if name.startswith("model.layers.0."))
    assert model_size(student)["parameters"] == expected - per_block  # 2 of the 3 blocks
