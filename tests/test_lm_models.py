"""Teachers and students through KerasHub: loading, save/load of tied students, cutting,
building and the tokenizer check, on tiny random Llama and GPT-2 checkpoints."""

import keras
import keras_hub
import numpy as np
import pytest

from kd_tf.lm import (
    build_student,
    check_tokenizers_match,
    convert_gguf,
    cut_student,
    load_causal_lm,
    tokenizer_vocabulary,
)
from tests.lm_tiny import write_tiny_gguf, write_tiny_gpt2_folder

TEXT = "The quick brown fox<|im_end|> reads 12 books."


def _inputs(ids):
    ids = np.asarray(ids, dtype="int32")[None, :]
    return {"token_ids": ids, "padding_mask": np.ones_like(ids)}


IDS = _inputs([1, 40, 77, 120, 9, 260, 299, 3, 150, 42])


def _logits(model, inputs=IDS):
    return np.asarray(model(inputs))


def _norm_epsilons(backbone):
    layers = [backbone.layer_norm]
    for block in backbone.transformer_layers:
        layers += [block._self_attention_layernorm, block._feedforward_layernorm]
    return {layer.epsilon for layer in layers}


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A tiny 4-block Llama (hidden 32, 4 query / 2 KV heads, ~300 tokens, eps 1e-5)."""
    folder = tmp_path_factory.mktemp("lm_teacher")
    write_tiny_gguf(folder / "tiny.gguf", seed=11, num_layers=4)
    return load_causal_lm(convert_gguf(folder / "tiny.gguf", folder / "hf"))


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
    return load_causal_lm(write_tiny_gpt2_folder(tmp_path_factory.mktemp("lm_gpt2") / "hf"))


def test_tied_student_survives_keras_save_and_load(teacher, tmp_path):
    student = cut_student(teacher, blocks=[0, 3])
    assert student.backbone.get_config()["tie_word_embeddings"] is True
    path = str(tmp_path / "student.keras")
    student.save(path)
    student.save_to_preset(str(tmp_path / "preset"))  # KerasHub's own format, same fixes

    for reloaded in (
        keras.saving.load_model(path),
        load_causal_lm(path),
        load_causal_lm(str(tmp_path / "preset")),
    ):
        backbone = reloaded.backbone
        assert type(reloaded) is type(student)
        assert backbone.tie_word_embeddings
        embedding_weights = [w for w in reloaded.weights if "embedding" in w.path]
        assert len(embedding_weights) == 1 and embedding_weights[0].shape == (300, 32)
        assert len(reloaded.weights) == len(student.weights)
        np.testing.assert_array_equal(_logits(reloaded), _logits(student))
        assert _norm_epsilons(backbone) == {1e-5} and backbone.layer_norm_epsilon == 1e-5
        # The tokenizer keeps the teacher's special tokens (not Llama 3's defaults).
        tokenizer = reloaded.preprocessor.tokenizer
        assert (tokenizer.start_token, tokenizer.end_token) == ("<|im_start|>", "<|im_end|>")
        np.testing.assert_array_equal(tokenizer(TEXT), student.preprocessor.tokenizer(TEXT))
    assert check_tokenizers_match(teacher, reloaded) == 300


def test_backbone_rebuilt_from_config_stays_tied(teacher):
    config = teacher.backbone.get_config()
    assert config["tie_word_embeddings"] is True
    rebuilt = type(teacher.backbone).from_config(config)
    assert rebuilt.tie_word_embeddings and len(rebuilt.token_embedding.weights) == 1


def test_cut_student_copies_the_chosen_blocks(teacher):
    student = cut_student(teacher, blocks=[3, 0, -1])
    backbone, source = student.backbone, teacher.backbone
    assert type(student) is type(teacher) and backbone.num_layers == 3
    assert student.preprocessor is teacher.preprocessor
    assert backbone.tie_word_embeddings and len(backbone.token_embedding.weights) == 1
    assert _norm_epsilons(backbone) == {1e-5}
    for block, index in zip(backbone.transformer_layers, [3, 0, 3]):
        teacher_weights = source.transformer_layers[index].weights
        assert len(block.weights) == len(teacher_weights) == 9
        for mine, theirs in zip(block.weights, teacher_weights):
            np.testing.assert_array_equal(mine.numpy(), theirs.numpy(), err_msg=mine.path)
    for name in ("token_embedding", "sequence_output_layernorm"):
        for mine, theirs in zip(backbone.get_layer(name).weights, source.get_layer(name).weights):
            np.testing.assert_array_equal(mine.numpy(), theirs.numpy())
    # Copies, not shared variables: training the student leaves the teacher alone.
    kernel = backbone.transformer_layers[1]._feedforward_gate_dense.kernel
    kernel.assign(kernel.numpy() + 1.0)
    assert not np.array_equal(
        kernel.numpy(), source.transformer_layers[0]._feedforward_gate_dense.kernel.numpy()
    )
    # Keeping every block in order reproduces the teacher exactly.
    np.testing.assert_array_equal(_logits(cut_student(teacher, blocks=range(4))), _logits(teacher))


def test_cut_student_refuses_bad_blocks(teacher):
    with pytest.raises(ValueError, match="Block 4 is out of range: the teacher has 4 blocks"):
        cut_student(teacher, blocks=[0, 4])
    with pytest.raises(ValueError, match="at least one block"):
        cut_student(teacher, blocks=[])


def test_build_student_takes_the_teacher_settings_it_is_not_given(teacher):
    student = build_student(
        teacher, num_layers=1, hidden_dim=16, intermediate_dim=24, num_query_heads=2, num_key_value_heads=1
    )
    backbone = student.backbone
    assert (
        backbone.num_layers,
        backbone.hidden_dim,
        backbone.intermediate_dim,
        backbone.num_query_heads,
        backbone.num_key_value_heads,
    ) == (1, 16, 24, 2, 1)
    assert backbone.vocabulary_size == 300 and backbone.tie_word_embeddings
    assert _norm_epsilons(backbone) == {1e-5}
    assert backbone.rope_max_wavelength == teacher.backbone.rope_max_wavelength
    assert student.preprocessor is teacher.preprocessor
    assert _logits(student).shape == (1, 10, 300)
    assert check_tokenizers_match(teacher, student) == 300

    with pytest.raises(ValueError, match="hidden_dim=18 does not split into 4 query heads"):
        build_student(teacher, hidden_dim=18)
    with pytest.raises(ValueError, match=r"no setting\(s\) \['num_heads'\]; its settings"):
        build_student(teacher, num_heads=2)


def test_mismatched_tokenizer_is_refused_naming_both_vocabularies(teacher, gpt2):
    with pytest.raises(ValueError) as error:
        check_tokenizers_match(teacher, gpt2)
    message = str(error.value)
    assert "teacher vocabulary 300 tokens, student vocabulary 277 tokens" in message
    assert "id 1: teacher '<|im_start|>', student '\u0100'" in message  # byte 0

    # Same size, one token different: a Llama tokenizer built directly.
    vocabulary = tokenizer_vocabulary(teacher)
    swapped = list(vocabulary)
    swapped[295] = swapped[295] + "x"
    tokenizer = keras_hub.models.Llama3Tokenizer(
        vocabulary={t: i for i, t in enumerate(swapped)},
        merges=list(teacher.preprocessor.tokenizer.merges)[:-5],
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        misc_special_tokens={"<|endoftext|>"},
    )
    with pytest.raises(
        ValueError,
        match=(
            f"teacher vocabulary 300 tokens, student vocabulary 300 tokens; first "
            f"differences: id 295: teacher '{vocabulary[295]}', student '{swapped[295]}'"
        ),
    ):
        check_tokenizers_match(teacher, tokenizer)


def test_gpt2_folder_loads_and_cuts_like_llama(gpt2):
    assert type(gpt2).__name__ == "GPT2CausalLM"
    student = cut_student(gpt2, blocks=[1])
    for name in ("token_embedding", "position_embedding", "layer_norm"):
        for mine, theirs in zip(
            student.backbone.get_layer(name).weights, gpt2.backbone.get_layer(name).weights
        ):
            np.testing.assert_array_equal(mine.numpy(), theirs.numpy())
    for mine, theirs in zip(
        student.backbone.transformer_layers[0].weights, gpt2.backbone.transformer_layers[1].weights
    ):
        np.testing.assert_array_equal(mine.numpy(), theirs.numpy())
    wide = build_student(gpt2, num_layers=1, hidden_dim=16, intermediate_dim=32, num_heads=2)
    assert wide.backbone.hidden_dim == 16 and check_tokenizers_match(gpt2, wide) == 277


def test_load_causal_lm_names_the_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere not found"):
        load_causal_lm(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty has no config.json"):
        load_causal_lm(str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="gone.keras not found"):
        load_causal_lm(str(tmp_path / "gone.keras"))
