"""kd_tf.classify.models: classifiers on TF Hub encoders, pooling, feature models, size accounting."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from kd_tf.bert import HubEncoder
from kd_tf.classify import models

SEQ = 6


@pytest.fixture(scope="module")
def batch():
    ids = tf.constant([[101, 2023, 3185, 102, 0, 0], [101, 2307, 102, 0, 0, 0]], tf.int32)
    return {
        "input_word_ids": ids,
        "input_mask": tf.cast(ids > 0, tf.int32),
        "input_type_ids": tf.zeros_like(ids),
    }


def test_masked_mean_pooling_ignores_padding():
    sequence = tf.constant([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    pooled = models.MaskedMeanPooling()(sequence, tf.constant([[1, 1, 0]]))
    np.testing.assert_allclose(pooled, [[2.0, 3.0]])
    # An all-padding row pools to zeros instead of dividing by zero.
    np.testing.assert_allclose(models.MaskedMeanPooling()(sequence, tf.constant([[0, 0, 0]])), [[0.0, 0.0]])


@pytest.mark.parametrize("pooling", models.POOLINGS)
def test_each_pooling_gives_logits_and_names_its_layers(tiny_encoder, batch, pooling):
    keras.utils.set_random_seed(0)
    model = models.build_classifier(tiny_encoder, 3, pooling=pooling, seq_length=SEQ)
    assert model.output_shape == (None, 3)
    assert model(batch).shape == (2, 3)
    assert isinstance(model.get_layer("encoder"), HubEncoder)
    assert model.get_layer("logits").units == 3
    assert models.find_encoder(model) is model.get_layer("encoder")


def test_mean_pooling_is_independent_of_padding_length(tiny_encoder, batch):
    keras.utils.set_random_seed(0)
    model = models.build_classifier(tiny_encoder, 2, pooling="mean", dropout=0.0)
    longer = {k: tf.pad(v, [[0, 0], [0, 4]]) for k, v in batch.items()}
    np.testing.assert_allclose(model(longer), model(batch), atol=1e-5)


def test_bad_arguments_name_the_fix(tiny_encoder):
    with pytest.raises(ValueError, match="choose one of"):
        models.build_classifier(tiny_encoder, 2, pooling="max")
    with pytest.raises(ValueError, match="needs >= 2"):
        models.build_classifier(tiny_encoder, 1)
    with pytest.raises(ValueError, match="has no HubEncoder layer"):
        models.find_encoder(keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)]))


def test_feature_model_shares_weights_and_exposes_hidden_states(tiny_encoder, tiny_encoder_config, batch):
    classifier = models.build_classifier(tiny_encoder, 2, seq_length=SEQ)
    features = models.feature_model(classifier)
    out = features(batch)
    assert sorted(out) == ["encoder_outputs", "input_mask", "logits", "pooled_output", "sequence_output"]
    assert len(out["encoder_outputs"]) == tiny_encoder_config["num_layers"]
    np.testing.assert_allclose(out["logits"], classifier(batch), atol=1e-6)
    assert {id(w) for w in features.weights} == {id(w) for w in classifier.weights}


def test_parameter_count_counts_every_weight(tiny_encoder, tiny_encoder_config):
    c = tiny_encoder_config
    h, v, ffn, layers = c["hidden_size"], c["vocab_size"], c["intermediate_size"], c["num_layers"]
    embeddings = v * h + 512 * h + 2 * h + 2 * h
    block = 4 * (h * h + h) + 2 * h + (h * ffn + ffn) + (ffn * h + h) + 2 * h
    pooler = h * h + h
    head = h * 2 + 2
    model = models.build_classifier(tiny_encoder, 2)
    assert models.parameter_count(model) == embeddings + layers * block + pooler + head
