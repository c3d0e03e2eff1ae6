"""Shipping a causal LM (`kd_tf.export.export_causal_lm`) on a tiny random Llama: every LiteRT variant
converts with builtin ops and runs on the LiteRT interpreter against the Keras logits, the phone's greedy
loop matches Keras, the serving SavedModel generates Keras's text in a fresh process, and a refused or
failed export leaves nothing behind."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from kd_tf.export import (
    LM_VARIANTS,
    CausalLMExportReport,
    ExportError,
    LiteRTCausalLM,
    convert_causal_lm,
    export_causal_lm,
    tflite_operators,
)
from kd_tf.lm import (
    TextCorpus,
    convert_gguf,
    cut_student,
    cut_windows,
    lm_windows,
    load_causal_lm,
    tokenize,
)
from kd_tf.lm.evaluate import _greedy
from tests.lm_tiny import TRAIN_TEXT, write_tiny_gguf

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LENGTH = 32  # the .tflite window
MAX_LENGTH = 24  # tokens the serving model generates, prompt included
TEXTS = [s.strip() + "." for s in TRAIN_TEXT.split(".") if s.strip()] * 3
PROMPTS = ["The quick brown fox", "In the morning the birds", "Students read"]


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    """A tiny 2-block Llama (hidden 32, 4 query / 2 KV heads, ~300 tokens)."""
    folder = tmp_path_factory.mktemp("lm_export_model")
    write_tiny_gguf(folder / "tiny.gguf", seed=5, num_layers=2)
    return load_causal_lm(convert_gguf(folder / "tiny.gguf", folder / "hf"))


@pytest.fixture(scope="module")
def exported(lm, tmp_path_factory):
    out = tmp_path_factory.mktemp("lm_export") / "export"
    report = export_causal_lm(
        lm,
        out,
        sample_texts=TEXTS,
        prompts=PROMPTS,
        variants=LM_VARIANTS,
        sequence_length=LENGTH,
        max_length=MAX_LENGTH,
        latency_runs=3,
    )
    return report, str(out)


@pytest.fixture(scope="module")
def windows(lm):
    """The windows the export compared on: the first 16 of the packed sample texts."""
    dataset = lm_windows(TextCorpus(texts=TEXTS), lm, LENGTH).take(16).batch(16)
    x, labels, weights = next(iter(dataset))
    return {
        "token_ids": x["token_ids"].numpy(),
        "padding_mask": x["padding_mask"].numpy(),
        "labels": labels.numpy(),
        "sample_weight": weights.numpy(),
    }


def _runner(exported, variant, **kwargs):
    report, out = exported
    return LiteRTCausalLM(os.path.join(out, report.litert[variant]["path"]), **kwargs)


def _nll(logits, labels):
    logits = logits.astype(np.float64)
    log_probs = logits - logits.max(-1, keepdims=True)
    log_probs -= np.log(np.exp(log_probs).sum(-1, keepdims=True))
    return -np.take_along_axis(log_probs, labels[..., None], -1)[..., 0]


def test_every_variant_converts_with_builtin_ops_and_runs_on_litert(lm, exported):
    report, out = exported
    assert report.passed and sorted(os.listdir(out)) == [
        "export_report.json",
        "export_report.md",
        "litert",
        "serving",
    ]
    vocabulary = int(lm.preprocessor.tokenizer.vocabulary_size())
    for variant in LM_VARIANTS:
        path = os.path.join(out, "litert", f"model_{variant}.tflite")
        with open(path, "rb") as f:
            operators = tflite_operators(f.read())
        assert "FULLY_CONNECTED" in operators and not [op for op in operators if op.startswith("CUSTOM")]
        assert report.litert[variant]["size_bytes"] == os.path.getsize(path)
        runner = LiteRTCausalLM(path)
        assert runner.sequence_length == LENGTH and runner.vocabulary_size == vocabulary
        assert runner.input_names == {
            "token_ids": "serving_default_token_ids:0",
            "padding_mask": "serving_default_padding_mask:0",
        }
        assert report.litert[variant]["finite"] is True
        assert set(report.litert[variant]["latency_ms"]) == {"1", "2"}
        assert all(ms > 0 for ms in report.litert[variant]["latency_ms"].values())
    sizes = {v: report.litert[v]["size_bytes"] for v in LM_VARIANTS}
    assert sizes["dynamic_int8"] < 0.6 * sizes["float32"] and sizes["float16"] < 0.75 * sizes["float32"]
    assert sorted(os.listdir(os.path.join(out, "litert", "tokenizer"))) == ["merges.txt", "vocabulary.json"]
    assert report.tokenizer["start_token_id"] == 1 and report.tokenizer["end_token_ids"] == [2]


def test_convert_causal_lm_gives_a_runnable_window_of_any_length(lm, tmp_path):
    flatbuffer = convert_causal_lm(lm, 16, "dynamic_int8")
    assert not [op for op in tflite_operators(flatbuffer) if op.startswith("CUSTOM")]
    (tmp_path / "m.tflite").write_bytes(flatbuffer)
    runner = LiteRTCausalLM(tmp_path / "m.tflite")
    ids = tokenize(lm, TRAIN_TEXT)[:16]
    keras_logits = np.asarray(lm({"token_ids": ids[None], "padding_mask": np.ones((1, 16), bool)}))
    assert runner.sequence_length == 16
    assert (runner(ids).argmax(-1) == keras_logits.argmax(-1)).mean() >= 0.9
    with pytest.raises(ValueError, match="not one of"):
        convert_causal_lm(lm, 16, "full_int8")


def test_float32_logits_match_keras_on_the_sample_windows(lm, exported, windows):
    runner = _runner(exported, "float32")
    lite = runner.logits(windows["token_ids"], windows["padding_mask"])
    keras_logits = np.asarray(lm({k: windows[k] for k in ("token_ids", "padding_mask")}))
    real = windows["padding_mask"]
    diff = np.abs(lite - keras_logits)[real].max()
    scale = np.abs(keras_logits)[real].max()
    assert diff <= 1e-4 * scale
    result = exported[0].litert["float32"]
    assert result["max_abs_diff"] == pytest.approx(diff, rel=1e-6)
    assert result["logits_scale"] == pytest.approx(scale, rel=1e-6)
    assert 0 < result["relative_diff"] <= 1e-4 and result["top1_agreement"] == 1.0


@pytest.mark.parametrize("variant", ["float16", "dynamic_int8"])
def test_quantized_agreement_and_perplexity_change_are_what_the_report_says(lm, exported, windows, variant):
    report = exported[0]
    lite = _runner(exported, variant).logits(windows["token_ids"], windows["padding_mask"])
    keras_logits = np.asarray(lm({k: windows[k] for k in ("token_ids", "padding_mask")}))
    weights, labels = windows["sample_weight"], windows["labels"]
    tokens = weights.sum()
    agreement = (weights * (lite.argmax(-1) == keras_logits.argmax(-1))).sum() / tokens
    keras_perplexity = np.exp((weights * _nll(keras_logits, labels)).sum() / tokens)
    perplexity = np.exp((weights * _nll(lite, labels)).sum() / tokens)
    result = report.litert[variant]
    assert np.isfinite(lite[windows["padding_mask"]]).all()
    assert result["top1_agreement"] == pytest.approx(agreement, abs=1e-9)
    assert 0.9 <= agreement < 1.0  # quantization moves some top-1 tokens on random weights, few
    assert report.keras["perplexity"] == pytest.approx(keras_perplexity, rel=1e-6)
    assert result["perplexity"] == pytest.approx(perplexity, rel=1e-6)
    assert result["perplexity_change"] == pytest.approx(perplexity / keras_perplexity - 1, abs=1e-9)
    assert abs(result["perplexity_change"]) < 0.05
    assert report.tokens == int(tokens) and report.num_windows == len(labels)


def test_a_short_window_is_right_padded_without_changing_its_logits(lm, exported):
    runner = _runner(exported, "float32")
    ids = tokenize(lm, TRAIN_TEXT)[:LENGTH]
    full = runner(ids)
    short = runner(ids[:10])
    assert short.shape == (1, 10, runner.vocabulary_size)
    np.testing.assert_allclose(short, full[:, :10], atol=1e-5)
    keras_short = np.asarray(lm({"token_ids": ids[None, :10], "padding_mask": np.ones((1, 10), bool)}))
    np.testing.assert_allclose(short, keras_short, atol=1e-4)
    with pytest.raises(ValueError, match="1 to 32 tokens"):
        runner(np.zeros(LENGTH + 1, np.int32))


def test_the_phone_loop_matches_keras_greedy_generation(lm, exported):
    runner = _runner(exported, "float32", num_threads=2)
    inputs = lm.preprocessor.generate_preprocess(
        tf.constant(["The quick brown fox"]), sequence_length=MAX_LENGTH
    )
    prompt = np.asarray(inputs["token_ids"])[0][np.asarray(inputs["padding_mask"])[0]]
    with _greedy(lm) as generate:
        expected = np.asarray(generate(inputs, stop_token_ids=None)["token_ids"])[0, len(prompt) :]
    new = runner.generate(prompt, new_tokens=MAX_LENGTH - len(prompt))
    np.testing.assert_array_equal(new, expected)


def test_the_phone_loop_keeps_the_last_window_of_a_longer_text(lm, exported):
    runner = _runner(exported, "float32")
    prompt = tokenize(lm, TRAIN_TEXT)[:20]
    new = runner.generate(prompt, new_tokens=20)  # the window slides after 12 new tokens
    text = np.concatenate([prompt, new])
    assert len(text) == 40 > LENGTH
    for k in range(len(prompt), len(text)):  # token k was predicted from tokens max(0, k - L) .. k - 1
        window = text[max(0, k - LENGTH) : k][None, :]
        logits = np.asarray(lm({"token_ids": window, "padding_mask": np.ones_like(window, bool)}))
        assert text[k] == logits[0, -1].argmax()
    stopped = runner.generate(prompt, new_tokens=20, stop_token_ids=[int(new[3])])
    np.testing.assert_array_equal(stopped, new[: list(new).index(new[3]) + 1])


def test_serving_saved_model_generates_keras_text_in_a_fresh_process(lm, exported):
    report, out = exported
    code = f"""
import json, sys
import tensorflow as tf
import tensorflow_text  # noqa: F401  (the tokenizer's regex split)
served = tf.saved_model.load({os.path.join(out, "serving")!r})
texts = served.signatures["serving_default"](tf.constant({PROMPTS!r}))["text"].numpy()
again = served.generate(tf.constant({PROMPTS[:1]!r}))["text"].numpy()
print(json.dumps({{"texts": [t.decode("utf-8", "replace") for t in texts],
                   "again": again[0].decode("utf-8", "replace"),
                   "imported": [m for m in ("keras_hub", "kd_tf") if m in sys.modules]}}))
"""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO, env=env
    )
    assert result.returncode == 0, result.stderr[-3000:]
    served = json.loads(result.stdout.strip().splitlines()[-1])
    with _greedy(lm):
        expected = list(lm.generate(PROMPTS, max_length=MAX_LENGTH))
    assert served["texts"] == expected == report.serving["texts"]
    assert served["again"] == expected[0] and served["imported"] == []
    assert all(text.startswith(prompt) and len(text) > len(prompt) for text, prompt in zip(expected, PROMPTS))
    assert report.serving["text_match"] == 1.0 and report.serving["mismatches"] == []


def test_report_is_saved_and_loads_back(exported):
    report, out = exported
    loaded = CausalLMExportReport.load(out)
    assert loaded.to_dict() == json.loads(json.dumps(report.to_dict()))
    assert loaded.passed and loaded.sequence_length == LENGTH and loaded.max_length == MAX_LENGTH
    with open(os.path.join(out, "export_report.md")) as f:
        markdown = f.read()
    assert "| dynamic_int8 |" in markdown and "status: passed" in markdown
    for path, size in report.files.items():
        assert os.path.getsize(os.path.join(out, path)) == size


def test_refuses_a_folder_that_holds_files(lm, tmp_path):
    out = tmp_path / "export"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ExportError, match="already holds files"):
        export_causal_lm(lm, out, sample_texts=TEXTS, sequence_length=LENGTH, max_length=MAX_LENGTH)
    assert os.listdir(out) == ["keep.txt"] and sorted(os.listdir(tmp_path)) == ["export"]


def test_a_failed_check_leaves_nothing_behind(lm, tmp_path):
    out = tmp_path / "export"
    with pytest.raises(ExportError, match="float32 on LiteRT differs from the Keras logits") as caught:
        export_causal_lm(
            lm,
            out,
            sample_texts=TEXTS,
            variants=("float32",),
            sequence_length=LENGTH,
            max_length=MAX_LENGTH,
            max_windows=2,
            max_float32_diff=0.0,  # impossible: float32 kernels round differently
            latency_runs=1,
        )
    assert caught.value.report.litert["float32"]["relative_diff"] > 0
    assert not caught.value.report.passed
    assert os.listdir(tmp_path) == []  # neither the folder nor its hidden working copy


def test_non_finite_logits_fail_the_export(lm, tmp_path):
    broken = cut_student(lm, blocks=[0, 1])  # a copy of the tiny model
    norm = broken.backbone.layer_norm
    norm.set_weights([np.full_like(w, np.nan) for w in norm.get_weights()])
    with pytest.raises(ExportError, match="float32 gives non-finite logits on LiteRT") as caught:
        export_causal_lm(
            broken,
            tmp_path / "export",
            sample_texts=TEXTS,
            variants=("float32",),
            sequence_length=LENGTH,
            max_length=MAX_LENGTH,
            max_windows=2,
            latency_runs=1,
        )
    result = caught.value.report.litert["float32"]
    assert result["finite"] is False and result["relative_diff"] is None and result["perplexity"] is None
    json.dumps(caught.value.report.to_dict(), allow_nan=False)  # strict JSON: null, never NaN
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({}, "exactly one of them"),
        ({"sample_texts": TEXTS, "windows": "x"}, "exactly one of them"),
        ({"sample_texts": TEXTS, "variants": ("full_int8",)}, "choose distinct names"),
        ({"sample_texts": TEXTS, "prompts": [TRAIN_TEXT]}, "leaves nothing to generate"),
        ({"windows": cut_windows(np.arange(40), np.ones(40), 36)}, "36 tokens long but sequence_length=32"),
        ({"windows": cut_windows(np.arange(40), np.ones(40), 16)}, "pass prompts="),
    ],
)
def test_refuses_unsuitable_input_before_writing(lm, tmp_path, kwargs, message):
    kwargs = {"sequence_length": LENGTH, "max_length": MAX_LENGTH, **kwargs}
    with pytest.raises(ExportError, match=message):
        export_causal_lm(lm, tmp_path / "export", **kwargs)
    assert os.listdir(tmp_path) == []


def test_command_line_exports_a_saved_model_file(lm, tmp_path, capsys):
    from kd_tf.cli import main

    lm.save(str(tmp_path / "student.keras"))
    (tmp_path / "texts.txt").write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
    out = tmp_path / "export"
    argv = [
        "export-lm",
        str(tmp_path / "student.keras"),
        str(out),
        "--sample-file",
        str(tmp_path / "texts.txt"),
    ]
    argv += ["--sequence-length", str(LENGTH), "--max-length", str(MAX_LENGTH), "--variants", "float32"]
    argv += ["--prompt", PROMPTS[0], "--max-windows", "2", "--latency-runs", "1"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "litert/model_float32.tflite" in printed and "export_report.md" in printed
    report = CausalLMExportReport.load(out)
    assert report.passed and list(report.litert) == ["float32"] and report.serving["prompts"] == PROMPTS[:1]
    assert report.num_windows == 2 and report.litert["float32"]["relative_diff"] <= 1e-4
