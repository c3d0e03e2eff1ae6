"""kd_tf.bert.hub_format: TF-Hub-format BERT SavedModels written offline."""

import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

from kd_tf.bert import HubEncoder, HubPreprocessor, convert, hub_format
from tests.numpy_bert import bert_forward, mean_pool

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
HAND_VOCAB = SPECIAL + [
    "the",
    "movie",
    "was",
    "un",
    "##believ",
    "##able",
    "great",
    "!",
    ",",
    "not",
    "good",
    "bad",
    "plot",
]


@pytest.fixture(scope="module")
def hand_preprocessor(tmp_path_factory):
    """A preprocessor on a 18-token vocabulary whose WordPiece output is checkable by hand."""
    root = tmp_path_factory.mktemp("hand")
    vocab = root / "vocab.txt"
    vocab.write_text("\n".join(HAND_VOCAB) + "\n")
    return hub_format.write_bert_preprocessor(str(root / "pre"), str(vocab))


def ids(*tokens):
    return [HAND_VOCAB.index(t) for t in tokens]


def test_wordpiece_matches_hand_checked_ids(hand_preprocessor):
    pre = HubPreprocessor(hand_preprocessor, seq_length=12)
    out = pre(tf.constant(["The movie was UNBELIEVABLE!", "Great plot, zebra"]))
    expected = [
        ids("[CLS]", "the", "movie", "was", "un", "##believ", "##able", "!", "[SEP]") + [0, 0, 0],
        ids("[CLS]", "great", "plot", ",", "[UNK]", "[SEP]") + [0] * 6,
    ]
    np.testing.assert_array_equal(out["input_word_ids"].numpy(), expected)
    np.testing.assert_array_equal(out["input_mask"].numpy(), [[1] * 9 + [0] * 3, [1] * 6 + [0] * 6])
    np.testing.assert_array_equal(out["input_type_ids"].numpy(), np.zeros((2, 12)))
    assert all(v.dtype == tf.int32 for v in out.values())


@pytest.mark.parametrize("seq_length", [4, 6, 9, 32])
def test_padding_and_truncation(hand_preprocessor, seq_length):
    pre = HubPreprocessor(hand_preprocessor, seq_length=seq_length)
    words = ids("the", "movie", "was", "un", "##believ", "##able", "!")
    row = pre(tf.constant(["the movie was unbelievable!"]))["input_word_ids"][0].numpy()
    keep = min(len(words), seq_length - 2)
    expected = ids("[CLS]") + words[:keep] + ids("[SEP]")
    expected += [0] * (seq_length - len(expected))
    assert row.tolist() == expected


def test_text_pairs_truncate_round_robin(hand_preprocessor):
    pre = HubPreprocessor(hand_preprocessor, seq_length=8)
    out = pre((tf.constant(["the movie was great"]), tf.constant(["not good , bad plot"])))
    # 8 = [CLS] + 3 + [SEP] + 2 + [SEP]: the longer segments are trimmed in turn.
    assert out["input_word_ids"][0].numpy().tolist() == ids(
        "[CLS]", "the", "movie", "was", "[SEP]", "not", "good", "[SEP]"
    )
    assert out["input_type_ids"][0].numpy().tolist() == [0] * 5 + [1] * 3
    assert out["input_mask"][0].numpy().tolist() == [1] * 8


def test_preprocessor_exposes_vocab_and_special_ids(hand_preprocessor):
    pre = HubPreprocessor(hand_preprocessor)
    assert pre.vocab_size == len(HAND_VOCAB)
    assert pre.special_tokens == {
        "padding_id": 0,
        "start_of_sequence_id": 2,
        "end_of_segment_id": 3,
        "mask_id": 4,
    }
    ragged = pre.tokenize(tf.constant(["unbelievable movie"]))
    assert ragged.to_list() == [[ids("un", "##believ", "##able"), ids("movie")]]


def test_preprocessor_folder_still_loads_after_move(hand_preprocessor, tmp_path):
    moved = tmp_path / "moved"
    shutil.copytree(hand_preprocessor, moved)
    assert not any(p.endswith("vocab.txt") and "assets" not in p for p in os.listdir(moved))
    pre = HubPreprocessor(str(moved), seq_length=5)
    assert pre(tf.constant(["great movie"]))["input_word_ids"][0].numpy().tolist() == ids(
        "[CLS]", "great", "movie", "[SEP]", "[PAD]"
    )


def test_preprocessor_plain_call_is_length_128(tiny_preprocessor):
    module = tf.saved_model.load(tiny_preprocessor)
    out = module(tf.constant(["hello world"]))
    assert out["input_word_ids"].shape == (1, 128)
    # bert-base-uncased ids of "hello world", checked against the real vocab file.
    assert out["input_word_ids"][0, :4].numpy().tolist() == [101, 7592, 2088, 102]


def test_encoder_has_tf_hub_interface(tiny_encoder, tiny_encoder_config):
    module = tf.saved_model.load(tiny_encoder)
    assert len(module.trainable_variables) == len(module.variables) > 0
    assert list(module.regularization_losses) == []
    batch = {
        "input_word_ids": tf.constant([[101, 2023, 102, 0]]),
        "input_mask": tf.constant([[1, 1, 1, 0]]),
        "input_type_ids": tf.zeros([1, 4], tf.int32),
    }
    out = module(batch, training=False)
    assert sorted(out) == ["default", "encoder_outputs", "pooled_output", "sequence_output"]
    h = tiny_encoder_config["hidden_size"]
    assert out["pooled_output"].shape == (1, h)
    assert out["sequence_output"].shape == (1, 4, h)
    assert len(out["encoder_outputs"]) == tiny_encoder_config["num_layers"]
    np.testing.assert_array_equal(out["encoder_outputs"][-1], out["sequence_output"])
    np.testing.assert_array_equal(out["default"], out["pooled_output"])
    # Dropout only with training=True.
    again = module(batch, training=False)
    np.testing.assert_array_equal(out["sequence_output"], again["sequence_output"])
    trained = module(batch, training=True)
    assert np.abs(trained["sequence_output"] - out["sequence_output"]).max() > 1e-3
    sig = module.signatures["serving_default"](**batch)
    np.testing.assert_allclose(sig["encoder_outputs_0"], out["encoder_outputs"][0], atol=1e-6)
    meta = hub_format.read_encoder_metadata(tiny_encoder)
    assert meta["config"]["num_layers"] == tiny_encoder_config["num_layers"]


def test_padding_does_not_change_real_tokens(tiny_encoder):
    module = tf.saved_model.load(tiny_encoder)
    short = {
        "input_word_ids": tf.constant([[101, 2023, 3185, 102]]),
        "input_mask": tf.ones([1, 4], tf.int32),
        "input_type_ids": tf.zeros([1, 4], tf.int32),
    }
    padded = {
        "input_word_ids": tf.constant([[101, 2023, 3185, 102, 0, 0, 0]]),
        "input_mask": tf.constant([[1, 1, 1, 1, 0, 0, 0]]),
        "input_type_ids": tf.zeros([1, 7], tf.int32),
    }
    a = module(short)["sequence_output"].numpy()
    b = module(padded)["sequence_output"].numpy()[:, :4]
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_writer_refuses_non_empty_folder_and_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "enc"
    target.mkdir()
    (target / "other_run.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not empty"):
        hub_format.write_bert_encoder(str(target), 1, 8, 2, 16, 50)
    assert (target / "other_run.txt").read_text() == "keep me"
    with pytest.raises(ValueError, match="num_heads=3 must divide hidden_size=8"):
        hub_format.write_bert_encoder(str(tmp_path / "bad"), 1, 8, 3, 16, 50)
    assert not (tmp_path / "bad").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["enc"]


@pytest.fixture(scope="module")
def teacher_path(tmp_path_factory):
    root = tmp_path_factory.mktemp("teacher")
    return hub_format.write_bert_encoder(str(root / "t"), 4, 16, 2, 32, 200, seed=3)


def _run(path, batch):
    return tf.saved_model.load(path)(batch, training=False)


BATCH = {
    "input_word_ids": tf.constant([[2, 17, 40, 3, 0], [2, 9, 3, 0, 0]]),
    "input_mask": tf.constant([[1, 1, 1, 1, 0], [1, 1, 1, 0, 0]]),
    "input_type_ids": tf.zeros([2, 5], tf.int32),
}


def test_student_with_all_layers_reproduces_teacher(teacher_path, tmp_path):
    student = hub_format.write_student_from_teacher(teacher_path, str(tmp_path / "s"), layers=[0, 1, 2, 3])
    t, s = _run(teacher_path, BATCH), _run(student, BATCH)
    for key in ("pooled_output", "sequence_output"):
        np.testing.assert_array_equal(t[key], s[key])


def test_student_with_layer_subset_equals_running_those_layers(teacher_path, tmp_path):
    student = hub_format.write_student_from_teacher(teacher_path, str(tmp_path / "s"), layers=[1, 3])
    teacher = hub_format.load_bert_encoder(teacher_path)
    mask = tf.cast(BATCH["input_mask"], tf.float32)
    bias = (1.0 - mask[:, None, None, :]) * -10000.0
    x = teacher.embeddings(BATCH["input_word_ids"], BATCH["input_type_ids"])
    hidden = []
    for i in (1, 3):
        x = teacher.blocks[i](x, bias)
        hidden.append(x)
    out = _run(student, BATCH)
    assert len(out["encoder_outputs"]) == 2
    for got, want in zip(out["encoder_outputs"], hidden):
        np.testing.assert_allclose(got, want, atol=1e-6)
    np.testing.assert_allclose(out["pooled_output"], teacher.pooler(x[:, 0]), atol=1e-6)
    meta = hub_format.read_encoder_metadata(student)
    assert meta["config"]["num_layers"] == 2


@pytest.mark.parametrize("layers", [[], [0, 0], [4], [-1]])
def test_student_rejects_bad_layer_lists(teacher_path, tmp_path, layers):
    with pytest.raises(ValueError, match=r"distinct block indices in \[0, 3\]"):
        hub_format.write_student_from_teacher(teacher_path, str(tmp_path / "s"), layers)


@pytest.fixture(scope="module")
def converted_minilm(minilm_dir, tmp_path_factory):
    return convert.convert_hf_bert(minilm_dir, str(tmp_path_factory.mktemp("mini") / "m"))


SENTENCES = [
    "A gripping film with wonderful acting.",
    "The movie had great performances and a moving story.",
    "Preheat the oven and whisk the eggs with sugar.",
]


def test_convert_hf_bert_matches_numpy_reference(converted_minilm, minilm_dir):
    pre = HubPreprocessor(converted_minilm["preprocessor"], seq_length=24)
    enc = HubEncoder(converted_minilm["encoder"])
    batch = pre(tf.constant(SENTENCES))
    got = enc(batch)["sequence_output"].numpy()
    with open(os.path.join(minilm_dir, "config.json")) as f:
        config = json.load(f)
    tensors = convert.read_hf_bert_tensors(minilm_dir)
    ids, mask = batch["input_word_ids"].numpy(), batch["input_mask"].numpy()
    want = bert_forward(tensors, config, ids, mask)
    emb_got, emb_want = mean_pool(got, mask), mean_pool(want, mask)
    np.testing.assert_allclose(emb_got, emb_want, atol=1e-4)
    unit = emb_got / np.linalg.norm(emb_got, axis=1, keepdims=True)
    same_topic, other_topic = unit[0] @ unit[1], unit[0] @ unit[2]
    assert same_topic > other_topic + 0.2


def test_convert_hf_bert_errors_name_the_file(tmp_path, minilm_dir):
    with pytest.raises(FileNotFoundError, match="config.json"):
        convert.convert_hf_bert(tmp_path, str(tmp_path / "out"))
    shutil.copy(os.path.join(minilm_dir, "config.json"), tmp_path)
    with pytest.raises(FileNotFoundError, match="vocab.txt"):
        convert.convert_hf_bert(tmp_path, str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_load_bert_encoder_refuses_foreign_savedmodel(tiny_preprocessor):
    with pytest.raises(ValueError, match="was not written by kd_tf.bert.hub_format"):
        hub_format.load_bert_encoder(tiny_preprocessor)
