"""BERT-shaped distillation on TF-Hub-format encoders: logits plus hidden-state matching with masks."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from kd_tf.bert import hub_format
from kd_tf.classify.models import build_classifier, feature_model
from kd_tf.distill import Distiller, FeatureMatch, TeacherCache, layer_map

SEQ = 12


@pytest.fixture(scope="module")
def student_encoder(tmp_path_factory):
    """1 layer, H16: narrower than the tiny teacher (2 layers, H32), so projections are needed."""
    path = tmp_path_factory.mktemp("student_encoder") / "encoder"
    return hub_format.write_bert_encoder(
        str(path),
        num_layers=1,
        hidden_size=16,
        num_heads=2,
        intermediate_size=32,
        vocab_size=30522,
        dropout_rate=0.0,
        attention_dropout_rate=0.0,
        seed=11,
    )


def _batch(n=16, seed=0):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(4, SEQ + 1, size=n)
    mask = (np.arange(SEQ)[None, :] < lengths[:, None]).astype("int32")
    ids = rng.integers(1000, 30000, size=(n, SEQ)).astype("int32") * mask
    ids[:, 0] = 101
    x = {"input_word_ids": ids, "input_mask": mask, "input_type_ids": np.zeros_like(mask)}
    return x, (lengths % 2).astype("int32")


def test_bert_logits_and_feature_distillation(tiny_encoder, student_encoder, tmp_path):
    keras.utils.set_random_seed(0)
    teacher = build_classifier(tiny_encoder, 2, pooling="pooled", dropout=0.0, seq_length=SEQ, name="teacher")
    student = build_classifier(
        student_encoder, 2, pooling="mean", dropout=0.0, seq_length=SEQ, name="student"
    )
    teacher_before = [np.array(w) for w in teacher.weights]
    matches = layer_map(2, 1, feature="encoder/encoder_outputs", mask="input_mask") + [
        FeatureMatch("encoder/pooled_output", loss="cosine", weight=0.5)
    ]
    assert matches[0].teacher_feature == "encoder/encoder_outputs/1"
    distiller = Distiller(student, teacher, features=matches)
    distiller.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
        alpha=0.5,
        temperature=2.0,
    )
    assert all(m.projector is not None for m in matches)  # 16 -> 32
    x, y = _batch()
    history = distiller.fit(x, y, epochs=4, batch_size=8, verbose=0).history
    assert {"loss", "student_loss", "distillation_loss", "feature_loss", "accuracy"} <= set(history)
    assert history["feature_loss"][-1] < history["feature_loss"][0]
    for before, after in zip(teacher_before, teacher.weights):
        np.testing.assert_array_equal(before, np.array(after))
    # Padding is masked in the hidden-state match: changing padded token ids does not change it.
    parts = distiller.loss_parts(x, y)
    x2 = dict(x, input_word_ids=np.where(x["input_mask"] == 1, x["input_word_ids"], 7).astype("int32"))
    assert float(distiller.loss_parts(x2, y)["feature_loss"]) == pytest.approx(
        float(parts["feature_loss"]), rel=1e-4
    )
    # The exported student holds no teacher and no projection.
    student_ids = {id(v) for v in student.weights}
    assert not student_ids & {id(v) for m in matches for v in m.weights}
    distiller.student.export(str(tmp_path / "student"), verbose=False)
    reloaded = tf.saved_model.load(str(tmp_path / "student"))  # keep a reference while serving
    served = reloaded.serve(x)
    np.testing.assert_allclose(served.numpy(), np.asarray(student(x)), atol=1e-5)


def test_bert_teacher_features_are_cached_with_the_logits(tiny_encoder, student_encoder, tmp_path):
    teacher = build_classifier(tiny_encoder, 2, dropout=0.0, seq_length=SEQ, name="teacher")
    student = build_classifier(
        student_encoder, 2, pooling="mean", dropout=0.0, seq_length=SEQ, name="student"
    )
    d = Distiller(student, teacher, features=[FeatureMatch("encoder/pooled_output", loss="mse")])
    d.compile(alpha=0.0, temperature=1.0)
    x, y = _batch(8, seed=1)
    live = d.loss_parts(x, y)
    cache = TeacherCache(tmp_path, d, progress=False)
    xb, targets = next(iter(cache.attach(tf.data.Dataset.from_tensor_slices((x, y))).batch(8)))
    assert set(targets["teacher_outputs"]) == {"logits", "encoder/pooled_output"}
    from_cache = d.loss_parts(xb, targets)
    assert float(from_cache["loss"]) == pytest.approx(float(live["loss"]), rel=1e-5)
    assert float(from_cache["feature_loss"]) == pytest.approx(float(live["feature_loss"]), rel=1e-5)


def test_bert_dict_output_feature_models(tiny_encoder, student_encoder):
    """Models whose dict output holds the features (kd_tf.classify.feature_model) distill by key."""
    teacher = feature_model(build_classifier(tiny_encoder, 2, dropout=0.0, seq_length=SEQ, name="teacher"))
    student = feature_model(
        build_classifier(student_encoder, 2, pooling="mean", dropout=0.0, seq_length=SEQ, name="student")
    )
    assert len(teacher.output["encoder_outputs"]) == 2 and len(student.output["encoder_outputs"]) == 1
    d = Distiller(student, teacher, features=layer_map(2, 1, mask="input_mask"))
    d.compile(alpha=0.5, temperature=2.0)
    x, y = _batch(8, seed=2)
    parts = d.loss_parts(x, y)
    assert float(parts["feature_loss"]) > 0 and np.isfinite(float(parts["loss"]))
