"""kd_tf.classify.evaluate: metrics against scikit-learn, sizes, speed on a real model."""

import numpy as np
import pytest
import tensorflow as tf
from sklearn import metrics as sk

from kd_tf.bert import HubPreprocessor
from kd_tf.classify import evaluate, models


def test_metrics_match_scikit_learn():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 200)
    logits = rng.normal(size=(200, 3)) + np.eye(3)[labels] * 0.8
    got = evaluate.classification_metrics(labels, logits, ["a", "b", "c"])
    pred = logits.argmax(1)
    assert got["accuracy"] == pytest.approx(sk.accuracy_score(labels, pred))
    p, r, f, s = sk.precision_recall_fscore_support(labels, pred, zero_division=0)
    assert got["precision"] == pytest.approx(p.mean())
    assert got["recall"] == pytest.approx(r.mean())
    assert got["f1"] == pytest.approx(f.mean())
    assert got["per_class"]["b"]["support"] == int(s[1])
    assert got["confusion_matrix"] == sk.confusion_matrix(labels, pred).tolist()


def test_metrics_hand_case_and_errors():
    got = evaluate.classification_metrics([0, 0, 1, 1], [0, 0, 0, 0])
    assert got["accuracy"] == 0.5
    # Class 1 is never predicted: precision 0, recall 0; class 0: p = 0.5, r = 1.
    assert got["precision"] == pytest.approx(0.25)
    assert got["recall"] == pytest.approx(0.5)
    assert got["f1"] == pytest.approx((2 * 0.5 * 1 / 1.5) / 2)
    with pytest.raises(ValueError, match="one prediction per labelled example"):
        evaluate.classification_metrics([0, 1], [0])


def test_predictions_round_trip_and_agreement(tmp_path):
    logits = np.array([[2.0, 1.0], [0.0, 3.0], [1.0, 0.5]], np.float32)
    path = evaluate.save_predictions(tmp_path / "p" / "m.npz", logits, [0, 1, 1], ids=["a", "b", "c"])
    back = evaluate.load_predictions(path)
    np.testing.assert_array_equal(back["logits"], logits)
    assert back["ids"].tolist() == ["a", "b", "c"]
    assert evaluate.agreement(logits, logits[[0, 1, 1]]) == pytest.approx(2 / 3)


def test_speed_and_size_of_a_real_model(tiny_encoder, tiny_preprocessor, tmp_path):
    model = models.build_classifier(tiny_encoder, 2)
    inputs = HubPreprocessor(tiny_preprocessor, seq_length=16)(tf.constant(["a fine film"] * 8))
    speed = evaluate.measure_speed(model, inputs, runs=5, throughput_batch=4)
    assert speed["latency_ms"] > 0 and speed["latency_ms_p90"] >= speed["latency_ms"]
    assert speed["examples_per_s"] > 0 and speed["throughput_batch"] == 4
    assert speed["seq_length"] == 16
    model.export(str(tmp_path / "sm"), verbose=False)
    size = evaluate.directory_bytes(str(tmp_path / "sm"))
    # float32 weights dominate the SavedModel.
    assert size > 4 * models.parameter_count(model)
    logits, labels = evaluate.predict_logits(
        model, tf.data.Dataset.from_tensor_slices((dict(inputs), tf.zeros([8], tf.int32))).batch(3)
    )
    assert logits.shape == (8, 2) and labels.tolist() == [0] * 8
    np.testing.assert_allclose(logits, model.predict(dict(inputs), verbose=0), atol=1e-5)
