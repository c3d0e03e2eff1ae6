"""kd_tf.export.int8_rows: the dynamic-int8 files' word-embedding table as int8 rows, one scale per row.

A tiny classifier whose word-embedding rows are rescaled to spread their sizes (as in a trained table,
where the largest value is five times a typical row's) is converted both ways on the real TFLite converter
and run on the LiteRT interpreter: TFLite's own one-scale table against int8 rows.
"""

import os
import shutil

import keras
import numpy as np
import pytest
import tensorflow as tf

from kd_tf.bert import HubEncoder, HubPreprocessor
from kd_tf.classify.models import build_classifier, find_encoder
from kd_tf.export import LiteRTClassifier, convert_variants, tflite_operators
from kd_tf.export.int8_rows import Int8RowLookup, int8_rows_classifier, int8_rows_supported, quantize_rows
from kd_tf.export.litert import convert_saved_model, word_embeddings_storage, write_tflite_source

SEQ_LENGTH = 32


def sst2_texts(data_dir, count):
    with open(os.path.join(data_dir, "sst2", "dev.tsv"), encoding="utf-8") as f:
        return [line.split("\t")[0] for line in f][1 : 1 + count]


@pytest.fixture(scope="module")
def classifier(tiny_encoder):
    """The tiny encoder with a mean-pooled head; its table's rows rescaled by factors from 0.05 to 1."""
    keras.utils.set_random_seed(3)
    model = build_classifier(tiny_encoder, 2, pooling="mean", name="student")
    (table,) = [v for v in find_encoder(model).saved_variables if "word_embeddings" in v.name]
    factors = np.random.default_rng(0).uniform(0.05, 1.0, size=(table.shape[0], 1)).astype("float32")
    table.assign(table.numpy() * factors * 20.0)
    return model


@pytest.fixture(scope="module")
def inputs(tiny_preprocessor, test_data_dir):
    preprocessor = HubPreprocessor(tiny_preprocessor, seq_length=SEQ_LENGTH)
    return {k: v.numpy() for k, v in preprocessor(tf.constant(sst2_texts(test_data_dir, 120))).items()}


def test_rows_round_to_their_own_scale():
    rng = np.random.default_rng(1)
    table = rng.normal(size=(50, 16)) * rng.uniform(1e-3, 1.0, size=(50, 1))
    table[7] = 0.0  # an all-zero row stays zero
    codes, scale_codes, unit = quantize_rows(table)
    assert codes.dtype == np.int8 and scale_codes.dtype == np.int32 and codes.shape == table.shape
    scales = scale_codes.astype(np.float64) * unit
    peaks = np.abs(table).max(axis=1)
    np.testing.assert_allclose(scales[peaks > 0], peaks[peaks > 0] / 127, rtol=1e-6)
    restored = codes * scales[:, None]
    # Each row is within half of its own step; one scale for the table would be up to 1000x coarser.
    assert (np.abs(restored - table) <= 0.5 * scales[:, None] * (1 + 1e-6)).all()
    assert (np.abs(codes).max(axis=1)[peaks > 0] == 127).all()
    assert not restored[7].any()


def test_bad_tables_are_refused():
    with pytest.raises(ValueError, match="2-D"):
        quantize_rows(np.ones(4))
    table = np.ones((5, 3))
    table[3, 1] = np.nan
    with pytest.raises(ValueError, match="row 3 is not finite"):
        quantize_rows(table)


def test_lookup_gathers_rows_of_the_rounded_table():
    table = np.random.default_rng(2).normal(size=(20, 8)).astype("float32")
    lookup = Int8RowLookup(table)
    ids = tf.constant([[3, 0, 19], [7, 7, 1]])
    codes, scale_codes, unit = quantize_rows(table)
    expected = (codes * (scale_codes * unit)[:, None])[ids.numpy()]
    np.testing.assert_allclose(lookup(ids).numpy(), expected, rtol=1e-6)
    assert not lookup.trainable_weights and lookup.codes.dtype == "int8"


def test_classifier_keeps_its_head_and_every_other_weight(classifier, inputs):
    quantized = int8_rows_classifier(classifier)
    assert quantized.get_layer("logits") is classifier.get_layer("logits")
    original = find_encoder(classifier).saved_variables
    table = [v for v in original if "word_embeddings" in v.name][0].numpy()
    rebuilt = [w for w in quantized.weights if "int8_row_lookup" not in w.path and w.dtype == "float32"]
    by_shape = {}
    for v in original:
        by_shape.setdefault(tuple(v.shape), []).append(v.numpy())
    for w in rebuilt:
        if "word_embeddings" in w.path or "logits" in w.path:
            continue
        assert any(np.array_equal(w.numpy(), v) for v in by_shape[tuple(w.shape)]), w.path
    reference = classifier.predict(inputs, verbose=0)
    logits = quantized.predict(inputs, verbose=0)
    step = np.abs(table).max(axis=1) / 127
    assert 0 < np.abs(logits - reference).max() < 50 * step.max()
    assert (logits.argmax(-1) == reference.argmax(-1)).mean() >= 0.99


def test_int8_rows_beat_one_scale_for_the_table_on_litert(classifier, inputs, tmp_path):
    assert word_embeddings_storage(classifier, "dynamic_int8") == "int8_rows"
    assert word_embeddings_storage(classifier, "float32") == "float"
    reference = tf.nn.softmax(classifier.predict(inputs, verbose=0)).numpy()
    diffs = {}
    for storage in ("float", "int8_rows"):
        write_tflite_source(classifier, SEQ_LENGTH, str(tmp_path / storage), word_embeddings=storage)
        converted = convert_saved_model(str(tmp_path / storage), "dynamic_int8")
        path = tmp_path / f"{storage}.tflite"
        path.write_bytes(converted)
        operators = tflite_operators(converted)
        assert not [op for op in operators if op.startswith("CUSTOM")]
        diffs[storage] = np.abs(LiteRTClassifier(str(path)).predict(inputs) - reference).max()
    assert {"GATHER", "CAST", "MUL"} <= set(operators)
    from ai_edge_litert.interpreter import Interpreter

    tensors = Interpreter(model_path=str(tmp_path / "int8_rows.tflite")).get_tensor_details()
    vocab = 30522
    tables = {t["dtype"]: t for t in tensors if len(t["shape"]) and t["shape"][0] == vocab}
    assert list(tables[np.int8]["shape"]) == [vocab, 32] and list(tables[np.int32]["shape"]) == [vocab]
    assert np.float32 not in tables  # neither the float table nor float scales are left for TFLite to round
    assert diffs["int8_rows"] < diffs["float"] / 2.5, diffs


def test_convert_variants_stores_the_table_by_variant(classifier, tmp_path):
    converted = dict(convert_variants(classifier, SEQ_LENGTH, ["float32", "dynamic_int8"], str(tmp_path)))
    assert sorted(os.listdir(tmp_path)) == ["source_float", "source_int8_rows"]
    assert len(converted["dynamic_int8"]) < 0.35 * len(converted["float32"])


def test_published_encoder_falls_back_to_tflite_quantization(tiny_encoder, tmp_path):
    plain = tmp_path / "published_like"
    shutil.copytree(tiny_encoder, plain)
    shutil.rmtree(plain / "assets.extra")  # what a published TF Hub encoder lacks
    model = build_classifier(HubEncoder(str(plain), name="encoder"), 2)
    assert not int8_rows_supported(model)
    assert word_embeddings_storage(model, "dynamic_int8") == "float"
    with pytest.raises(ValueError, match="not a kd-tf encoder folder"):
        int8_rows_classifier(model)
    converted = dict(convert_variants(model, SEQ_LENGTH, ["dynamic_int8"], str(tmp_path / "sources")))
    assert os.listdir(tmp_path / "sources") == ["source_float"] and converted["dynamic_int8"]
