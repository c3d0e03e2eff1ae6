"""kd_tf.bert.encoder: the one Keras 3 BERT (config checks, TF Hub dicts, masking, dropout, round trip)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from kd_tf.bert import BertConfig, BertEncoder, preset_folders
from kd_tf.bert.encoder import INPUT_KEYS

CONFIG = dict(vocab_size=50, hidden_size=16, num_layers=3, num_heads=2, intermediate_size=32)


def _inputs(ids, mask):
    ids = tf.constant(ids, tf.int32)
    return {
        "input_word_ids": ids,
        "input_mask": tf.constant(mask, tf.int32),
        "input_type_ids": tf.zeros_like(ids),
    }


@pytest.mark.parametrize(
    "change,message",
    [
        (dict(num_heads=3), "num_heads=3 must divide hidden_size=16"),
        (dict(hidden_size=0), "hidden_size must be a positive integer"),
        (dict(dropout_rate=1.0), "dropout_rate must be in [0, 1)"),
    ],
)
def test_config_refuses_impossible_sizes(change, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace(")", r"\)")):
        BertConfig(**{**CONFIG, **change})


def test_outputs_are_the_tf_hub_dict():
    keras.utils.set_random_seed(0)
    encoder = BertEncoder(BertConfig(**CONFIG))
    out = encoder(_inputs([[2, 5, 7, 3]], [[1, 1, 1, 1]]))
    assert sorted(out) == ["default", "encoder_outputs", "pooled_output", "sequence_output"]
    assert out["sequence_output"].shape == (1, 4, 16) and out["pooled_output"].shape == (1, 16)
    assert len(out["encoder_outputs"]) == 3
    np.testing.assert_array_equal(out["encoder_outputs"][-1], out["sequence_output"])
    np.testing.assert_array_equal(out["default"], out["pooled_output"])
    # The pooler is tanh of a dense layer over [CLS]: every value lies in (-1, 1).
    assert np.all(np.abs(out["pooled_output"]) < 1.0)
    with pytest.raises(ValueError, match="lack \\['input_type_ids'\\]"):
        encoder({k: v for k, v in _inputs([[2]], [[1]]).items() if k != "input_type_ids"})


def test_padding_never_reaches_real_tokens():
    keras.utils.set_random_seed(1)
    encoder = BertEncoder(BertConfig(**CONFIG))
    short = encoder(_inputs([[2, 5, 3]], [[1, 1, 1]]))["sequence_output"]
    padded = encoder(_inputs([[2, 5, 3, 9, 9]], [[1, 1, 1, 0, 0]]))["sequence_output"]
    np.testing.assert_allclose(padded[:, :3], short, atol=1e-5)


def test_dropout_only_in_training_and_config_round_trip():
    keras.utils.set_random_seed(2)
    encoder = BertEncoder(BertConfig(**CONFIG, dropout_rate=0.5))
    x = _inputs([[2, 5, 7, 3]], [[1, 1, 1, 1]])
    a, b = (encoder(x, training=False)["sequence_output"] for _ in range(2))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(encoder(x, training=True)["sequence_output"], a)
    rebuilt = BertEncoder.from_config(encoder.get_config())
    assert rebuilt.config == encoder.config
    assert [tuple(w.shape) for w in rebuilt.weights] == [tuple(w.shape) for w in encoder.weights]
    assert INPUT_KEYS == ("input_word_ids", "input_mask", "input_type_ids")


def test_local_preset_resolves_to_converted_folders(tmp_path, monkeypatch):
    """`kd-tf:all-MiniLM-L6-v2` is converted once into $KD_TF_CACHE and reused afterwards."""
    from kd_tf.bert import HubEncoder, HubPreprocessor

    monkeypatch.setenv("KD_TF_CACHE", str(tmp_path))
    messages = []
    folders = preset_folders("kd-tf:all-MiniLM-L6-v2", log=messages.append)
    assert len(messages) == 1 and str(tmp_path) in messages[0]
    assert preset_folders("kd-tf:all-MiniLM-L6-v2", log=messages.append) == folders and len(messages) == 1
    pre = HubPreprocessor("kd-tf:all-MiniLM-L6-v2", seq_length=8)
    encoder = HubEncoder("kd-tf:all-MiniLM-L6-v2", trainable=False)
    out = encoder(pre(tf.constant(["a wonderful film"])))
    assert out["sequence_output"].shape == (1, 8, 384) and len(out["encoder_outputs"]) == 6
    with pytest.raises(KeyError, match="known presets"):
        preset_folders("kd-tf:nope")
