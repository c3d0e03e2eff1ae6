"""kd_tf.hub: TF Hub models as Keras 3 layers, on real TF-Hub-format SavedModels."""

import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from kd_tf.bert import (
    HANDLES,
    HubEncoder,
    HubHandleError,
    HubPreprocessor,
    hub_format,
    load_module,
    resolve_handle,
)
from kd_tf.classify import models

TEXTS = [
    "a wonderful, moving film",
    "dull and far too long",
    "great acting",
    "the worst plot ever",
    "i loved every minute",
    "boring and predictable",
    "a masterpiece of cinema",
    "awful dialogue and bad jokes",
]
LABELS = np.array([1, 0, 1, 0, 1, 0, 1, 0])


@pytest.fixture(scope="module")
def batch(tiny_preprocessor):
    return HubPreprocessor(tiny_preprocessor, seq_length=16)(tf.constant(TEXTS))


def test_encoder_layer_returns_tf_hub_dict(tiny_encoder, tiny_encoder_config, batch):
    encoder = HubEncoder(tiny_encoder)
    out = encoder(batch)
    h = tiny_encoder_config["hidden_size"]
    assert out["pooled_output"].shape == (len(TEXTS), h)
    assert out["sequence_output"].shape == (len(TEXTS), 16, h)
    assert len(out["encoder_outputs"]) == tiny_encoder_config["num_layers"]
    assert out["pooled_output"].dtype == tf.float32
    pooled = HubEncoder(tiny_encoder, output_key="pooled_output")(batch)
    np.testing.assert_allclose(pooled, out["pooled_output"], atol=1e-6)
    with pytest.raises(KeyError, match="'logits' is not an output"):
        HubEncoder(tiny_encoder, output_key="logits")(batch)


def test_encoder_weights_are_the_savedmodel_variables(tiny_encoder):
    encoder = HubEncoder(tiny_encoder)
    restored = encoder._module.variables
    assert len(encoder.weights) == len(restored)
    assert all(w.value is v for w, v in zip(encoder.weights, restored))
    assert len(encoder.trainable_weights) == len(restored)
    frozen = HubEncoder(tiny_encoder, trainable=False)
    assert frozen.trainable_weights == [] and len(frozen.non_trainable_weights) == len(restored)


def test_fit_fine_tunes_the_savedmodel_variables(tiny_encoder, batch):
    keras.utils.set_random_seed(0)
    model = models.build_classifier(tiny_encoder, num_classes=2, pooling="mean")
    encoder = models.find_encoder(model)
    before = [v.numpy().copy() for v in encoder._module.variables]
    model.compile(
        optimizer=keras.optimizers.Adam(3e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    x = dict(batch)
    loss_before = model.evaluate(x, LABELS, verbose=0)
    model.fit(x, LABELS, epochs=15, batch_size=8, verbose=0)
    loss_after = model.evaluate(x, LABELS, verbose=0)
    assert loss_after < 0.5 * loss_before
    after = [v.numpy() for v in encoder._module.variables]
    changed = [not np.allclose(a, b) for a, b in zip(before, after)]
    # Every weight with a gradient moves; attention key biases have none
    # (softmax is invariant to them), so 2 of the 39 stay put.
    assert sum(changed) == len(changed) - 2


def test_training_flag_reaches_dropout_and_predict_is_deterministic(tiny_encoder, batch):
    model = models.build_classifier(tiny_encoder, num_classes=2, dropout=0.0)
    x = dict(batch)
    np.testing.assert_array_equal(model.predict(x, verbose=0), model.predict(x, verbose=0))
    assert np.abs(model(x, training=True) - model(x, training=False)).max() > 1e-4


def test_subclassed_model_and_config_round_trip(tiny_encoder, batch):
    class Classifier(keras.Model):
        def __init__(self):
            super().__init__()
            self.encoder = HubEncoder(tiny_encoder, output_key="pooled_output")
            self.head = keras.layers.Dense(2)

        def call(self, inputs, training=False):
            return self.head(self.encoder(inputs, training=training))

    model = Classifier()
    assert model(dict(batch)).shape == (len(TEXTS), 2)
    assert len(model.trainable_weights) == len(model.encoder._module.variables) + 2
    config = HubEncoder(tiny_encoder, output_key="pooled_output", name="enc").get_config()
    clone = HubEncoder.from_config(config)
    assert (clone.handle, clone.output_key, clone.name) == (tiny_encoder, "pooled_output", "enc")


def test_keras_file_round_trip(tiny_encoder, batch, tmp_path):
    model = models.build_classifier(tiny_encoder, num_classes=2)
    path = str(tmp_path / "clf.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(
        loaded.predict(dict(batch), verbose=0), model.predict(dict(batch), verbose=0), atol=1e-5
    )


def test_built_and_trained_inside_a_strategy_scope(tiny_encoder, batch):
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    with strategy.scope():
        model = models.build_classifier(tiny_encoder, num_classes=2)
        model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = model.fit(dict(batch), LABELS, epochs=2, verbose=0)
    assert np.isfinite(history.history["loss"]).all()


def test_preprocessor_in_tf_data_map_and_in_a_keras_model(tiny_preprocessor):
    pre = HubPreprocessor(tiny_preprocessor, seq_length=10)
    ds = tf.data.Dataset.from_tensor_slices(TEXTS).batch(4).map(pre)
    first = next(iter(ds))
    assert first["input_word_ids"].shape == (4, 10)
    single = tf.data.Dataset.from_tensor_slices(TEXTS).map(pre)
    np.testing.assert_array_equal(next(iter(single))["input_word_ids"], first["input_word_ids"][0])
    inputs = keras.Input((), dtype="string")
    model = keras.Model(inputs, pre(inputs))
    out = model(tf.constant(TEXTS[:2]))
    np.testing.assert_array_equal(out["input_word_ids"], first["input_word_ids"][:2])


def test_handles_cover_published_models():
    assert resolve_handle("bert_en_uncased_L-12_H-768_A-12") == (
        "https://tfhub.dev/tensorflow/bert_en_uncased_L-12_H-768_A-12/4"
    )
    assert resolve_handle("bert_en_uncased_preprocess") == (
        "https://tfhub.dev/tensorflow/bert_en_uncased_preprocess/3"
    )
    small = [k for k in HANDLES if k.startswith("small_bert/")]
    assert len(small) == 24
    assert HANDLES["small_bert/bert_en_uncased_L-4_H-512_A-8"].endswith(
        "/small_bert/bert_en_uncased_L-4_H-512_A-8/2"
    )
    assert resolve_handle("/some/local/folder") == "/some/local/folder"


@pytest.mark.parametrize(
    "handle,reason",
    [
        ("bert_en_uncased_L-12_H-768_A-12", "Could not load"),
        ("https://tfhub.dev/tensorflow/small_bert/bert_en_uncased_L-2_H-128_A-2/2", "Could not load"),
        (
            "small_bert/bert_en_uncased_L-4_H-521_A-8",
            "Did you mean the name 'small_bert/bert_en_uncased_L-4_H-512_A-8'",
        ),
        ("/no/such/folder", "neither a known name"),
    ],
)
def test_unresolvable_handle_fails_fast_with_fixes(handle, reason, monkeypatch, tmp_path):
    monkeypatch.setenv("TFHUB_CACHE_DIR", str(tmp_path / "empty_cache"))
    start = time.monotonic()
    with pytest.raises(HubHandleError) as info:
        HubEncoder(handle)
    assert time.monotonic() - start < 30
    message = str(info.value)
    assert handle in message and reason in message
    assert "local folder" in message and "TFHUB_CACHE_DIR" in message
    assert str(tmp_path / "empty_cache") in message


def test_folder_that_is_not_a_savedmodel(tmp_path):
    with pytest.raises(HubHandleError, match="without saved_model.pb"):
        load_module(str(tmp_path))


def test_preprocessor_rejects_an_encoder_folder(tiny_encoder):
    with pytest.raises(ValueError, match="has no `tokenize`"):
        HubPreprocessor(tiny_encoder)


def test_frozen_word_embeddings_stay_put_while_the_rest_trains(tiny_encoder, batch):
    keras.utils.set_random_seed(1)
    model = models.build_classifier(tiny_encoder, num_classes=2, pooling="mean", freeze_word_embeddings=True)
    encoder = models.find_encoder(model)
    names = [w.name for w in encoder.weights if not w.trainable]
    assert names == ["embeddings_word_embeddings"]
    before = {w.name: w.numpy().copy() for w in encoder.weights}
    model.compile(
        optimizer=keras.optimizers.Adam(3e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.fit(dict(batch), LABELS, epochs=2, verbose=0)
    after = {w.name: w.numpy() for w in encoder.weights}
    assert np.array_equal(before["embeddings_word_embeddings"], after["embeddings_word_embeddings"])
    assert not np.array_equal(
        before["embeddings_position_embeddings"], after["embeddings_position_embeddings"]
    )
    assert HubEncoder.from_config(encoder.get_config()).frozen == ("word_embeddings",)
    # Keras lists trainable weights first; saved_variables keeps the SavedModel's order.
    assert encoder.weights[-1].value is encoder.saved_variables[0]  # word_embeddings
    rebuilt = hub_format.load_bert_encoder(tiny_encoder, variables=encoder.saved_variables)
    np.testing.assert_array_equal(
        rebuilt.embeddings.position_embeddings.numpy(), after["embeddings_position_embeddings"]
    )
