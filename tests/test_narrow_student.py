"""kd_tf.bert.narrow: narrower, shallower students sliced from a teacher, then distilled.

The teacher is the session's tiny encoder (2 layers, H32, 2 heads of 16, FFN 64) on the real uncased
vocabulary; importance is measured on real SST-2 sentences (tests/data).
"""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from kd_tf.bert import (
    HubPreprocessor,
    load_bert_encoder,
    narrow,
    read_encoder_metadata,
    write_student_from_teacher,
)
from kd_tf.bert.encoder import BertEncoder
from kd_tf.classify.models import build_classifier
from kd_tf.distill import Distiller, layer_map

SEQ = 32


@pytest.fixture(scope="module")
def sentences(sst2_dir):
    with open(os.path.join(sst2_dir, "train.tsv"), encoding="utf-8") as f:
        rows = [line.rstrip("\n").split("\t") for line in f][1:]
    return [r[0] for r in rows[:128]], np.array([int(r[1]) for r in rows[:128]])


@pytest.fixture(scope="module")
def inputs(tiny_preprocessor, sentences):
    packed = HubPreprocessor(tiny_preprocessor, seq_length=SEQ)(tf.constant(sentences[0]))
    return {k: v.numpy() for k, v in packed.items()}


@pytest.fixture(scope="module")
def teacher(tiny_encoder):
    return load_bert_encoder(tiny_encoder)


def cosine(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return np.sum(a * b, -1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def real_tokens(x, inputs):
    return np.asarray(x)[inputs["input_mask"] == 1]


def test_at_full_width_it_copies_the_blocks(teacher, inputs, tiny_encoder, tmp_path):
    student, record = narrow.narrow_encoder(teacher, inputs, layers=[1], hidden_size=32)
    copied = load_bert_encoder(write_student_from_teacher(tiny_encoder, tmp_path / "copy", layers=[1]))
    assert record["hidden_dims"] == list(range(32)) and record["heads"] == [[0, 1]]
    for s, c in zip(student.variables, copied.variables):
        np.testing.assert_array_equal(s.numpy(), c.numpy())


@pytest.mark.parametrize("num_heads", [1, 2])  # one whole teacher head of 16, or both heads cut to 8
def test_a_narrow_student_starts_close_to_the_teacher(teacher, inputs, num_heads):
    student, record = narrow.narrow_encoder(
        teacher, inputs, layers=[0, 1], hidden_size=16, num_heads=num_heads
    )
    config = student.config
    assert (config.hidden_size, config.num_heads, config.intermediate_size) == (16, num_heads, 32)
    dims = record["hidden_dims"]
    t_out = teacher(inputs)["encoder_outputs"]
    s_out = student(inputs)["encoder_outputs"]
    random = BertEncoder(config)(inputs)["encoder_outputs"]
    for layer in range(2):
        sliced = real_tokens(t_out[layer], inputs)[:, dims]
        near = cosine(real_tokens(s_out[layer], inputs), sliced).mean()
        far = cosine(real_tokens(random[layer], inputs), sliced).mean()
        assert near > 0.9 and near > far + 0.5, (layer, near, far)


def test_the_units_that_carry_the_signal_are_kept(tiny_encoder, inputs):
    teacher = load_bert_encoder(tiny_encoder)
    strong = [3, 7, 11, 20, 29]
    for norm in [teacher.embeddings.layer_norm] + [b.output_layer_norm for b in teacher.blocks]:
        gamma = norm.gamma.numpy()
        gamma[strong] *= 10.0
        norm.gamma.assign(gamma)
    block = teacher.blocks[1]
    rows = block.attention_output.kernel.numpy()
    rows[:16] *= 20.0  # head 0 writes far more into the residual stream
    block.attention_output.kernel.assign(rows)
    silent = np.arange(0, 64, 2)
    kernel = block.output_dense.kernel.numpy()
    kernel[silent] = 0.0  # half of the feed-forward neurons write nothing
    block.output_dense.kernel.assign(kernel)
    _, record = narrow.narrow_encoder(teacher, inputs, layers=[1], hidden_size=16, num_heads=1)
    assert set(strong) <= set(record["hidden_dims"])
    assert record["heads"] == [[0]]
    assert set(record["intermediate_units"][0]).isdisjoint(silent)


def test_query_is_scaled_when_heads_keep_fewer_dimensions(teacher, inputs):
    student, record = narrow.narrow_encoder(teacher, inputs, layers=[0], hidden_size=16, num_heads=2)
    rows, cols = record["hidden_dims"], record["query_key_dims"][0]
    t_query, s_query = teacher.blocks[0].query, student.blocks[0].query
    np.testing.assert_allclose(
        s_query.kernel.numpy(), t_query.kernel.numpy()[np.ix_(rows, cols)] * np.sqrt(8 / 16), rtol=1e-6
    )
    np.testing.assert_array_equal(
        student.blocks[0].key.kernel.numpy(), teacher.blocks[0].key.kernel.numpy()[np.ix_(rows, cols)]
    )


def test_impossible_sizes_are_named(teacher, inputs, tiny_encoder):
    with pytest.raises(ValueError, match=r"hidden_size=64: a student sliced from the teacher needs 1 to 32"):
        narrow.narrow_encoder(teacher, inputs, layers=[0], hidden_size=64)
    with pytest.raises(ValueError, match="heads of 24 dimensions, more than the teacher's 16"):
        narrow.narrow_encoder(teacher, inputs, layers=[0], hidden_size=24, num_heads=1)
    with pytest.raises(ValueError, match="choose num_heads for hidden_size=15"):
        narrow.narrow_encoder(teacher, inputs, layers=[0], hidden_size=15)
    with pytest.raises(ValueError, match=r"layers=\[0, 0\] must be distinct"):
        narrow.narrow_encoder(teacher, inputs, layers=[0, 0], hidden_size=16)
    with pytest.raises(ValueError, match="calibration inputs lack"):
        narrow.narrow_encoder(
            teacher, {"input_word_ids": inputs["input_word_ids"]}, layers=[0], hidden_size=16
        )
    with pytest.raises(ValueError, match="was not written by write_narrow_student"):
        narrow.narrow_projection(tiny_encoder)


@pytest.fixture(scope="module")
def narrow_folder(tiny_encoder, inputs, tmp_path_factory):
    """H16 (one head of 16, FFN 32), both teacher layers, 64 positions: a quarter of the teacher's width."""
    path = tmp_path_factory.mktemp("narrow") / "encoder"
    return narrow.write_narrow_student(
        tiny_encoder,
        path,
        layers=[0, 1],
        hidden_size=16,
        calibration_inputs=inputs,
        max_position_embeddings=64,
    )


def test_the_written_student_records_what_it_kept(narrow_folder, tiny_encoder):
    meta = read_encoder_metadata(narrow_folder)
    record = meta[narrow.NARROWED]
    assert record["teacher"] == str(tiny_encoder) and record["layers"] == [0, 1]
    assert meta["config"]["hidden_size"] == 16 and meta["config"]["max_position_embeddings"] == 64
    kernel = narrow.narrow_projection(narrow_folder)
    assert kernel.shape == (16, 32)
    np.testing.assert_array_equal(kernel.argmax(1), record["hidden_dims"])
    np.testing.assert_array_equal(kernel.sum(1), np.ones(16))


def test_a_narrow_student_distils_with_hidden_state_matches(
    tiny_encoder, narrow_folder, tiny_preprocessor, sentences
):
    texts, labels = sentences
    x = {
        k: v.numpy()
        for k, v in HubPreprocessor(tiny_preprocessor, seq_length=SEQ)(tf.constant(texts)).items()
    }

    def distiller(projection_from_slicing):
        keras.utils.set_random_seed(0)
        teacher = build_classifier(
            tiny_encoder, 2, pooling="mean", dropout=0.0, seq_length=SEQ, name="teacher"
        )
        student = build_classifier(
            narrow_folder, 2, pooling="mean", dropout=0.0, seq_length=SEQ, name="student"
        )
        matches = layer_map(2, 2, feature="encoder/encoder_outputs", mask="input_mask")
        d = Distiller(student, teacher, features=matches)
        d.compile(optimizer=keras.optimizers.Adam(1e-3), alpha=0.5, temperature=2.0)
        if projection_from_slicing:
            for match in matches:
                match.projector.kernel.assign(narrow.narrow_projection(narrow_folder))
        return d

    sliced, default = distiller(True), distiller(False)
    # The slicing's own correspondence starts the hidden-state match far lower than a random projection.
    start = float(sliced.loss_parts(x, labels)["feature_loss"])
    assert start < 0.5 * float(default.loss_parts(x, labels)["feature_loss"])
    history = sliced.fit(x, labels, epochs=4, batch_size=32, verbose=0).history
    assert {"feature_loss", "distillation_loss", "student_loss"} <= set(history)
    assert history["loss"][-1] < history["loss"][0]
    assert history["feature_loss"][-1] < history["feature_loss"][0]
