"""Fine-tuning only a teacher's top blocks on its lower blocks' outputs, computed once."""

import json
import os
import shutil

import keras
import numpy as np
import pytest
import tensorflow as tf

from kd_tf import cli
from kd_tf.bert import HubPreprocessor, hub_format
from kd_tf.bert.split import split_encoder
from kd_tf.classify import TextDataset, make_dataset, upper_blocks
from kd_tf.config import load_config
from kd_tf.pipeline import open_run
from tests.test_pipeline import tiny_config

TEXTS = ["a fine film", "dull and far too long, I left before the end", "great", "not good at all"]


@pytest.fixture(scope="module")
def encoded(tiny_encoder, tiny_preprocessor):
    """The tiny encoder in Keras and its input dict for TEXTS (padded to 16)."""
    encoder = hub_format.load_bert_encoder(tiny_encoder)
    inputs = HubPreprocessor(tiny_preprocessor, seq_length=16)(tf.constant(TEXTS))
    return encoder, inputs


@pytest.mark.parametrize("top_blocks", [0, 1, 2])
def test_above_after_below_is_the_whole_encoder(encoded, top_blocks):
    encoder, inputs = encoded
    below, above = split_encoder(encoder, top_blocks)
    assert len(below.blocks) + len(above.blocks) == 2
    whole = encoder(inputs)
    parts = above(below(inputs))
    mask = inputs["input_mask"].numpy()[:, :, None]
    np.testing.assert_allclose(
        parts["sequence_output"].numpy() * mask, whole["sequence_output"].numpy() * mask, atol=1e-5
    )
    np.testing.assert_allclose(parts["pooled_output"].numpy(), whole["pooled_output"].numpy(), atol=1e-5)


def test_split_refuses_what_it_cannot_cut(encoded, tiny_encoder):
    encoder, _ = encoded
    with pytest.raises(ValueError, match="choose 0..2"):
        split_encoder(encoder, 3)
    with pytest.raises(TypeError, match="load_bert_encoder"):
        split_encoder(keras.Sequential(), 1)


def test_batches_of_cached_outputs_are_cut_to_their_longest_text(encoded, tiny_preprocessor):
    encoder, _ = encoded
    below, _ = split_encoder(encoder, 1)
    data = TextDataset(texts=TEXTS, labels=[1, 0, 1, 0], label_names=["neg", "pos"])
    dataset = make_dataset(data, tiny_preprocessor, batch_size=2, seq_length=16, bucketing=False)
    outputs = upper_blocks.lower_block_outputs(below, dataset)
    assert outputs["hidden_states"].shape == (4, 16, 32)
    lengths = outputs["input_mask"].sum(axis=1)
    batches = list(upper_blocks.outputs_dataset(outputs, data.labels, batch_size=2))
    assert [b[0]["hidden_states"].shape[1] for b in batches] == [max(lengths[:2]), max(lengths[2:])]
    assert [b[1].numpy().tolist() for b in batches] == [[1, 0], [1, 0]]
    with pytest.raises(ValueError, match="3 labels for 4 cached outputs"):
        upper_blocks.outputs_dataset(outputs, [0, 1, 0], batch_size=2)


def _block_weights(encoder_dir, variables=None):
    encoder = hub_format.load_bert_encoder(encoder_dir, variables=variables)
    return [[w.numpy() for w in block.weights] for block in encoder.blocks]


def test_the_teacher_step_trains_only_the_top_block(tmp_path, tiny_encoder, tiny_preprocessor, capsys):
    """`teacher.train_top_blocks: 1`: the lower block keeps the encoder's weights exactly, the top block
    and head learn, and the saved whole teacher scores on the validation texts what the top-block model
    scored on their cached outputs."""
    config_path = tiny_config(tmp_path, tiny_encoder, tiny_preprocessor, teacher={"train_top_blocks": 1})
    assert cli.main(["finetune-teacher", "--config", config_path]) == 0
    assert "lower 1 blocks are frozen: computing their outputs once" in capsys.readouterr().out
    run_dir = load_config(config_path).run_dir
    before = _block_weights(tiny_encoder)
    after = _block_weights(os.path.join(run_dir, "teacher", "hub_encoder"))
    for a, b in zip(before[0], after[0]):
        np.testing.assert_array_equal(a, b)
    assert max(np.abs(a - b).max() for a, b in zip(before[1], after[1])) > 1e-4

    run = open_run(run_dir)
    teacher = run.load_model("teacher")
    teacher.compile(metrics=["accuracy"], loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    accuracy = teacher.evaluate(run.dataset(run.splits["validation"]), return_dict=True, verbose=0)[
        "accuracy"
    ]
    with open(os.path.join(run_dir, "steps", "teacher.json")) as f:
        record = json.load(f)
    assert accuracy == pytest.approx(record["best_val_accuracy"], abs=1e-6)


def test_top_blocks_need_a_kd_tf_encoder_with_that_many_blocks(
    tmp_path, tiny_encoder, tiny_preprocessor, capsys
):
    config_path = tiny_config(tmp_path, tiny_encoder, tiny_preprocessor, teacher={"train_top_blocks": 3})
    assert cli.main(["finetune-teacher", "--config", config_path]) == 1
    err = capsys.readouterr().err
    assert (
        "teacher.train_top_blocks=3" in err
        and "choose 0..2" in err
        and "set teacher.train_top_blocks to null" in err
    )

    opaque = str(tmp_path / "opaque_encoder")
    shutil.copytree(tiny_encoder, opaque)
    os.remove(os.path.join(opaque, hub_format.METADATA_FILE))  # as a published TF Hub SavedModel
    (tmp_path / "o").mkdir()
    config_path = tiny_config(
        tmp_path / "o",
        opaque,
        tiny_preprocessor,
        teacher={"encoder": opaque, "train_top_blocks": 1},
        student={"encoder": opaque, "init_layers": None},
    )
    assert cli.main(["finetune-teacher", "--config", config_path]) == 1
    err = capsys.readouterr().err
    assert "cannot be rebuilt" in err and "kd-tf-written encoder" in err
    assert not os.path.exists(os.path.join(load_config(config_path).run_dir, "teacher"))


def test_non_finite_lower_blocks_stop_the_teacher_step(tmp_path, tiny_encoder, tiny_preprocessor, capsys):
    """A frozen block with a NaN weight: nothing is trained on its outputs and nothing is saved."""
    encoder = hub_format.load_bert_encoder(tiny_encoder)
    kernel = encoder.blocks[0].weights[0]
    kernel.assign(np.full(kernel.shape, np.nan, np.float32))
    broken = hub_format.save_bert_encoder(encoder, str(tmp_path / "broken_encoder"))
    config_path = tiny_config(
        tmp_path,
        broken,
        tiny_preprocessor,
        teacher={"train_top_blocks": 1},
        student={"encoder": tiny_encoder, "init_layers": None},
    )
    assert cli.main(["finetune-teacher", "--config", config_path]) == 1
    err = capsys.readouterr().err
    assert "the frozen lower blocks give non-finite outputs for 64 of 64 texts" in err and broken in err
    assert not os.path.exists(os.path.join(load_config(config_path).run_dir, "teacher"))
