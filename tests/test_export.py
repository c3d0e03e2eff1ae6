"""kd_tf.export on a trained tiny student: every file run on its real runtime.

One export (module fixture) of a 2-layer H32 student fitted for a few steps on
real SST-2 sentences feeds most tests: the LiteRT interpreter runs every
.tflite with inputs bound by name, MediaPipe TextClassifier reads the
metadata and classifies raw strings, the serving SavedModel is loaded in a
fresh process after its folder moved, and `kd-tf export` runs as users run it.
"""

import json
import os
import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from kd_tf import export
from kd_tf.bert import HubEncoder, HubPreprocessor, hub_format
from kd_tf.classify.models import build_classifier, find_encoder
from kd_tf.export import metadata as mobile_metadata
from kd_tf.export.checks import file_sizes
from kd_tf.export.litert import calibration_rows
from kd_tf.export.report import GATED_VARIANTS
from kd_tf.export.saved_model import write_hub_encoder

SEQ_LENGTH = 32
LABELS = ["negative", "positive"]


def read_sst2(data_dir, split, start, count):
    path = os.path.join(data_dir, "sst2", f"{split}.tsv")
    with open(path, encoding="utf-8") as f:
        rows = [line.rstrip("\n").split("\t") for line in f][1 + start : 1 + start + count]
    return [r[0] for r in rows], np.array([int(r[1]) for r in rows])


def keras_probabilities(student, preprocessor, texts):
    inputs = preprocessor(tf.constant(texts))
    return tf.nn.softmax(student.predict(inputs, verbose=0)).numpy()


@pytest.fixture(scope="module")
def sst2(test_data_dir):
    train_texts, train_labels = read_sst2(test_data_dir, "train", 0, 128)
    dev_texts, _ = read_sst2(test_data_dir, "dev", 0, 200)
    fresh_texts, _ = read_sst2(test_data_dir, "dev", 200, 40)
    return dict(train=train_texts, labels=train_labels, dev=dev_texts, fresh=fresh_texts)


@pytest.fixture(scope="module")
def preprocessor(tiny_preprocessor):
    return HubPreprocessor(tiny_preprocessor, seq_length=SEQ_LENGTH)


@pytest.fixture(scope="module")
def student(tiny_encoder, preprocessor, sst2):
    """The tiny encoder with a mean-pooled head, fitted 8 steps on SST-2."""
    keras.utils.set_random_seed(1)
    model = build_classifier(tiny_encoder, len(LABELS), pooling="mean", name="student")
    model.compile(keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(preprocessor(tf.constant(sst2["train"])), sst2["labels"], batch_size=32, epochs=2, verbose=0)
    return model


@pytest.fixture(scope="module")
def exported(student, preprocessor, sst2, tmp_path_factory):
    out = tmp_path_factory.mktemp("export_parent") / "export"
    report = export.export_student(
        student,
        out,
        preprocessor,
        LABELS,
        sst2["dev"],
        seq_length=SEQ_LENGTH,
        calibration_texts=sst2["train"],
        latency_runs=10,
        teacher=student,  # its own teacher: every like-for-like figure is known exactly
    )
    return out, report


# ----------------------------------------------------------------------------
# What is written.
# ----------------------------------------------------------------------------
def test_files_written_and_nothing_else(exported):
    out, report = exported
    assert sorted(os.listdir(out)) == [
        "export_report.json",
        "export_report.md",
        "hub_encoder",
        "hub_preprocessor",
        "labels.txt",
        "serving",
        "tflite",
    ]
    assert sorted(os.listdir(out / "tflite")) == [f"model_{v}.tflite" for v in sorted(export.VARIANTS)]
    assert (out / "labels.txt").read_text() == "negative\npositive\n"
    assert os.listdir(out.parent) == ["export"]  # no temporary folder left
    assert report.passed and report.failures == []


def test_report_numbers_and_sizes(exported):
    out, report = exported
    saved = export.ExportReport.load(out)
    assert saved.to_dict() == json.loads(json.dumps(report.to_dict()))
    assert saved.num_samples == 200 and saved.seq_length == SEQ_LENGTH
    for relative, size in saved.files.items():
        assert os.path.getsize(out / relative) == size
    for variant in export.VARIANTS:
        result = saved.tflite[variant]
        assert result["size_bytes"] == os.path.getsize(out / result["path"])
        assert set(result["latency_ms"]) == {"1", "2"}
        assert all(0 < ms < 1000 for ms in result["latency_ms"].values())
    sizes = {v: saved.tflite[v]["size_bytes"] for v in export.VARIANTS}
    assert sizes["float16"] < 0.6 * sizes["float32"]
    assert sizes["dynamic_int8"] < 0.35 * sizes["float32"]
    assert saved.tflite["float32"]["max_abs_diff"] < 1e-4
    assert saved.serving["max_abs_diff"] < 1e-4
    assert saved.hub_encoder["max_abs_diff"] < 1e-4
    for variant in GATED_VARIANTS:
        assert saved.tflite[variant]["label_agreement"] >= 0.99
        assert saved.tflite[variant]["mediapipe"]["label_agreement"] >= 0.99
    assert {v: saved.tflite[v]["word_embeddings"] for v in export.VARIANTS} == {
        "float32": "float",
        "float16": "float",
        "dynamic_int8": "int8_rows",
        "full_int8": "float",
    }
    markdown = (out / "export_report.md").read_text()
    assert "| full_int8 |" in markdown and "status: passed" in markdown
    assert "one scale per row in: dynamic_int8" in markdown


def test_the_teacher_is_measured_like_for_like(exported):
    """The student given as its own teacher: converted to the same float32 and dynamic-int8 variants (and
    only those), its files are the student's byte for byte without the metadata, and every ratio compares
    two files of the same variant."""
    out, report = exported
    assert sorted(report.teacher["tflite"]) == sorted(report.like_for_like) == ["dynamic_int8", "float32"]
    assert report.teacher["source"] == "converted from the Keras model 'student'"
    for variant, ratio in report.like_for_like.items():
        student, teacher = report.tflite[variant], report.teacher["tflite"][variant]
        assert student["model_bytes"] == teacher["size_bytes"] and ratio["size_ratio"] == 1.0
        assert student["size_bytes"] > student["model_bytes"]  # the metadata only the student's file carries
        for threads, speedup in ratio["speedup"].items():
            assert speedup == teacher["latency_ms"][threads] / student["latency_ms"][threads]
            assert 0.25 < speedup < 4.0  # the same model, timed in turns
        assert set(ratio["cpu_speedup"]) == {"1"}
    markdown = (out / "export_report.md").read_text()
    assert "## Like for like with the teacher" in markdown
    assert "Ratios only compare two files of the same variant" in markdown
    assert not [f for f in report.files if "teacher" in f]  # nothing of the teacher is written


def test_full_int8_is_calibrated_on_rows_without_padding(exported, preprocessor, sst2):
    _, report = exported
    rows = calibration_rows(preprocessor, sst2["train"], SEQ_LENGTH)
    assert (rows["input_mask"].sum(-1) == SEQ_LENGTH).all()
    assert report.calibration["texts"] == len(sst2["train"])
    assert report.calibration["rows"] == len(rows["input_mask"]) > 10


# ----------------------------------------------------------------------------
# LiteRT.
# ----------------------------------------------------------------------------
def test_litert_runs_every_variant_with_inputs_bound_by_name(exported, student, preprocessor, sst2):
    from ai_edge_litert.interpreter import Interpreter

    out, report = exported
    texts = sst2["dev"]
    reference = keras_probabilities(student, preprocessor, texts)
    inputs = {k: v.numpy() for k, v in preprocessor(tf.constant(texts)).items()}
    for variant in export.VARIANTS:
        path = str(out / f"tflite/model_{variant}.tflite")
        interpreter = Interpreter(model_path=path)
        details = interpreter.get_input_details()
        assert sorted(d["name"] for d in details) == sorted(
            f"serving_default_{k}:0" for k in ("input_word_ids", "input_mask", "input_type_ids")
        )
        assert all(list(d["shape"]) == [1, SEQ_LENGTH] and d["dtype"] == np.int32 for d in details)
        (output,) = interpreter.get_output_details()
        assert output["dtype"] == np.float32 and list(output["shape"]) == [1, 2]
        assert not [op for op in export.tflite_operators(open(path, "rb").read()) if op.startswith("CUSTOM")]

        probabilities = export.LiteRTClassifier(path).predict(inputs)
        np.testing.assert_allclose(probabilities.sum(-1), 1.0, atol=1e-5)
        diff = np.abs(probabilities - reference).max()
        agreement = np.mean(probabilities.argmax(-1) == reference.argmax(-1))
        assert diff == pytest.approx(report.tflite[variant]["max_abs_diff"], abs=1e-6)
        if variant == "float32":
            assert diff < 1e-4
        elif variant in GATED_VARIANTS:
            assert agreement >= 0.99
        else:
            assert agreement == pytest.approx(report.tflite[variant]["label_agreement"])


def test_litert_answers_unseen_texts_like_keras(exported, student, preprocessor, sst2):
    out, _ = exported
    texts = sst2["fresh"]
    reference = keras_probabilities(student, preprocessor, texts)
    runner = export.LiteRTClassifier(out / "tflite/model_float32.tflite", num_threads=2)
    probabilities = runner.predict(preprocessor(tf.constant(texts)))
    assert np.abs(probabilities - reference).max() < 1e-4
    assert runner.seq_length == SEQ_LENGTH


# ----------------------------------------------------------------------------
# MediaPipe.
# ----------------------------------------------------------------------------
def test_metadata_holds_tokenizer_labels_and_parser_version(exported, bert_vocab_file):
    out, _ = exported
    for variant in export.VARIANTS:
        meta = mobile_metadata.read_metadata(out / f"tflite/model_{variant}.tflite")
        assert meta["min_parser_version"] == "1.1.0"
        files = meta["associated_files"]
        assert files["labels.txt"].split() == LABELS
        with open(bert_vocab_file, encoding="utf-8") as f:
            assert files["vocab.txt"].split("\n")[:5] == f.read().split("\n")[:5]
        subgraph = meta["subgraph_metadata"][0]
        assert [t["name"] for t in subgraph["input_tensor_metadata"]] == ["ids", "segment_ids", "mask"]
        unit = subgraph["input_process_units"][0]
        assert unit["options_type"] == "BertTokenizerOptions"


def test_mediapipe_classifies_raw_strings_like_keras(exported, student, preprocessor, sst2):
    from mediapipe.tasks.python.core.base_options import BaseOptions
    from mediapipe.tasks.python.text import text_classifier

    out, _ = exported
    texts = sst2["fresh"]
    assert all(t.isascii() for t in texts)
    reference = keras_probabilities(student, preprocessor, texts)
    options = text_classifier.TextClassifierOptions(
        base_options=BaseOptions(model_asset_path=str(out / "tflite/model_float32.tflite"))
    )
    with text_classifier.TextClassifier.create_from_options(options) as classifier:
        results = [classifier.classify(t).classifications[0] for t in texts]
    for result, expected in zip(results, reference):
        scores = {c.category_name: c.score for c in result.categories}
        assert sorted(scores) == sorted(LABELS)
        got = np.array([scores[name] for name in LABELS])
        np.testing.assert_allclose(got, expected, atol=1e-4)
        assert result.categories[0].category_name == LABELS[int(expected.argmax())]

    quantized = mobile_metadata.mediapipe_classify(
        out / "tflite/model_dynamic_int8.tflite", texts, len(LABELS)
    )
    assert np.mean(quantized.argmax(-1) == reference.argmax(-1)) >= 0.95


def test_accents_need_the_documented_fold_on_the_phone(exported, student, preprocessor):
    out, _ = exported
    texts = [
        "how do you spell cliché ?",
        "a naïve , café-society romance",
        "It´s a thriller that didn´t grip me",
    ]
    reference = keras_probabilities(student, preprocessor, texts)
    folded = [mobile_metadata.normalize_for_mobile(t) for t in texts]
    assert folded[0] == "how do you spell cliche ?"
    path = out / "tflite/model_float32.tflite"
    after_fold = mobile_metadata.mediapipe_classify(path, folded, len(LABELS))
    np.testing.assert_allclose(after_fold, reference, atol=1e-4)


# ----------------------------------------------------------------------------
# Serving SavedModel and TF Hub folders.
# ----------------------------------------------------------------------------
def test_serving_savedmodel_in_a_fresh_process_after_a_move(exported, student, preprocessor, sst2, tmp_path):
    out, _ = exported
    shutil.copytree(out / "serving", tmp_path / "copy")
    moved = tmp_path / "elsewhere" / "student"
    os.makedirs(moved.parent)
    shutil.move(tmp_path / "copy", moved)
    texts = sst2["fresh"][:16]
    code = (
        "import json, sys, tensorflow as tf, tensorflow_text\n"
        "model = tf.saved_model.load(sys.argv[1])\n"
        "serve = model.signatures['serving_default']\n"
        "out = serve(tf.constant(json.loads(sys.argv[2])))\n"
        "print(json.dumps({'inputs': list(serve.structured_input_signature[1]),\n"
        "                  'probabilities': out['probabilities'].numpy().tolist(),\n"
        "                  'label_id': out['label_id'].numpy().tolist(),\n"
        "                  'label': [s.decode() for s in out['label'].numpy()]}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(moved), json.dumps(texts)],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    reference = keras_probabilities(student, preprocessor, texts)
    assert answer["inputs"] == ["text"]
    np.testing.assert_allclose(answer["probabilities"], reference, atol=1e-4)
    assert answer["label_id"] == reference.argmax(-1).tolist()
    assert answer["label"] == [LABELS[i] for i in answer["label_id"]]


def test_hub_encoder_and_preprocessor_reload_as_tf_hub_models(exported, student, preprocessor, sst2):
    out, _ = exported
    texts = sst2["fresh"][:8]
    reloaded_pre = HubPreprocessor(str(out / "hub_preprocessor"), seq_length=SEQ_LENGTH)
    inputs = reloaded_pre(tf.constant(texts))
    for key, value in preprocessor(tf.constant(texts)).items():
        np.testing.assert_array_equal(inputs[key].numpy(), value.numpy())
    reloaded = HubEncoder(str(out / "hub_encoder"), trainable=False)
    expected = find_encoder(student)(inputs)
    got = reloaded(inputs)
    for key in ("sequence_output", "pooled_output"):
        np.testing.assert_allclose(got[key].numpy(), expected[key].numpy(), atol=1e-5)
    assert hub_format.read_encoder_metadata(out / "hub_encoder")["config"]["num_layers"] == 2


def test_encoder_not_written_by_kd_tf_is_resaved_with_its_weights(tiny_encoder, tmp_path):
    plain = tmp_path / "published_like"
    shutil.copytree(tiny_encoder, plain)
    shutil.rmtree(plain / "assets.extra")  # what a published TF Hub encoder lacks
    encoder = HubEncoder(str(plain))
    encoder.weights[0].assign(encoder.weights[0] + 0.01)  # "fine-tuned"
    write_hub_encoder(encoder, None, None, str(tmp_path / "out"))
    ids = tf.constant([[101, 2204, 3185, 102, 0]])
    inputs = {"input_word_ids": ids, "input_mask": tf.sign(ids), "input_type_ids": tf.zeros_like(ids)}
    written = HubEncoder(str(tmp_path / "out"), trainable=False)
    np.testing.assert_allclose(
        written(inputs)["sequence_output"].numpy(), encoder(inputs)["sequence_output"].numpy(), atol=1e-6
    )


# ----------------------------------------------------------------------------
# The metadata writer's workaround.
# ----------------------------------------------------------------------------
def test_minimum_parser_version_follows_the_schema_rules():
    import flatbuffers
    from mediapipe.tasks.metadata import metadata_schema_py_generated as fb

    def version(build):
        metadata = fb.ModelMetadataT()
        subgraph = fb.SubGraphMetadataT()
        metadata.subgraphMetadata = [subgraph]
        build(metadata, subgraph)
        builder = flatbuffers.Builder(0)
        builder.Finish(metadata.Pack(builder), b"M001")
        return mobile_metadata.minimum_parser_version(builder.Output())

    def vocabulary(metadata, subgraph):
        item = fb.AssociatedFileT()
        item.type = fb.AssociatedFileType.VOCABULARY
        metadata.associatedFiles = [item]

    def bert(metadata, subgraph):
        unit = fb.ProcessUnitT()
        unit.optionsType = fb.ProcessUnitOptions.BertTokenizerOptions
        unit.options = fb.BertTokenizerOptionsT()
        subgraph.inputProcessUnits = [unit]

    def groups(metadata, subgraph):
        subgraph.inputTensorGroups = [fb.TensorGroupT()]

    def custom(metadata, subgraph):
        subgraph.customMetadata = [fb.CustomMetadataT()]

    assert version(lambda m, s: None) == "1.0.0"
    assert version(vocabulary) == "1.0.1"
    assert version(bert) == "1.1.0"
    assert version(groups) == "1.2.0"
    assert version(custom) == "1.5.0"
    with pytest.raises(ValueError, match="M001"):
        mobile_metadata.minimum_parser_version(b"not metadata")


def test_writer_import_leaves_no_stand_in_behind():
    writers = mobile_metadata.metadata_writers()
    assert hasattr(writers.text_classifier.MetadataWriter, "create_for_bert_model")
    assert not [name for name in sys.modules if name.startswith("mediapipe.tasks.cc")]


# ----------------------------------------------------------------------------
# Bad input: clear errors, nothing written.
# ----------------------------------------------------------------------------
def test_untrained_student_is_refused(tiny_encoder, preprocessor, sst2, tmp_path):
    untrained = build_classifier(tiny_encoder, 2, pooling="mean")
    with pytest.raises(export.ExportError, match="looks untrained.*allow_untrained"):
        export.export_student(
            untrained, tmp_path / "out", preprocessor, LABELS, sst2["dev"][:10], seq_length=SEQ_LENGTH
        )
    assert os.listdir(tmp_path) == []


def test_incompatible_models_are_refused(student, preprocessor, sst2, tmp_path):
    def refused(model, match, labels=LABELS):
        with pytest.raises(export.ExportError, match=match):
            export.export_student(
                model,
                tmp_path / "out",
                preprocessor,
                labels,
                sst2["dev"][:10],
                seq_length=SEQ_LENGTH,
                allow_untrained=True,
            )
        assert os.listdir(tmp_path) == []

    renamed = {k: keras.Input((None,), dtype="int32", name=k) for k in ("ids", "mask", "segments")}
    encoder = find_encoder(student)
    inner = {
        "input_word_ids": renamed["ids"],
        "input_mask": renamed["mask"],
        "input_type_ids": renamed["segments"],
    }
    pooled = encoder(inner)["pooled_output"]
    refused(keras.Model(renamed, keras.layers.Dense(2)(pooled)), "takes inputs")
    two = keras.Model(student.input, [student.output, student.output])
    refused(two, "has 2 outputs")
    refused(student, "2 label names|shape", labels=["a", "b", "c"])
    refused(student, "distinct", labels=["pos", "pos"])
    softmax = keras.Model(
        student.input, keras.layers.Dense(2, activation="softmax")(encoder(student.input)["pooled_output"])
    )
    refused(softmax, "softmax")


def test_cased_vocabulary_is_refused_for_metadata(student, sst2, tmp_path):
    vocab = tmp_path / "cased_vocab.txt"
    vocab.write_text(
        "\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "The", "the", "film", "Film", "good"]) + "\n"
    )
    cased = hub_format.write_bert_preprocessor(str(tmp_path / "cased"), str(vocab), lower_case=False)
    with pytest.raises(export.ExportError, match="cased.*lower-cases"):
        export.export_student(
            student, tmp_path / "out", cased, LABELS, sst2["dev"][:10], seq_length=SEQ_LENGTH
        )
    assert not os.path.exists(tmp_path / "out")


def test_folder_with_another_runs_files_is_refused(exported, student, preprocessor, sst2):
    out, _ = exported
    before = file_sizes(out)
    with pytest.raises(export.ExportError, match="already holds files.*export_report"):
        export.export_student(student, out, preprocessor, LABELS, sst2["dev"][:10], seq_length=SEQ_LENGTH)
    assert file_sizes(out) == before


def test_failed_check_leaves_no_complete_looking_folder(student, preprocessor, sst2, tmp_path):
    with pytest.raises(export.ExportError, match="float32 on LiteRT differs") as error:
        export.export_student(
            student,
            tmp_path / "out",
            preprocessor,
            LABELS,
            sst2["dev"][:20],
            seq_length=SEQ_LENGTH,
            variants=["float32"],
            metadata=False,
            max_float32_diff=1e-12,
            latency_runs=2,
        )
    assert os.listdir(tmp_path) == []
    assert error.value.report.tflite["float32"]["max_abs_diff"] < 1e-4
    assert not error.value.report.passed


# ----------------------------------------------------------------------------
# kd-tf export.
# ----------------------------------------------------------------------------
def test_cli_export(student, tiny_preprocessor, sst2_dir, tmp_path):
    model_path = tmp_path / "student.keras"
    student.save(model_path)
    out = tmp_path / "export"
    dev = os.path.join(sst2_dir, "dev.tsv")
    args = [
        sys.executable,
        "-m",
        "kd_tf.cli",
        "export",
        str(model_path),
        str(out),
        "--preprocessor",
        tiny_preprocessor,
        "--labels",
        "negative,positive",
        "--seq-length",
        str(SEQ_LENGTH),
        "--sample-file",
        dev,
        "--max-samples",
        "100",
        "--variants",
        "float32,dynamic_int8",
        "--latency-runs",
        "5",
        "--teacher",
        str(model_path),
    ]
    result = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "tflite/model_dynamic_int8.tflite:" in result.stdout
    assert "dynamic_int8 against the teacher's dynamic_int8: 1.000 of its bytes" in result.stdout
    report = export.ExportReport.load(out)
    assert sorted(report.tflite) == ["dynamic_int8", "float32"]
    assert report.num_samples == 100 and report.passed

    again = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert again.returncode == 1
    assert "kd-tf export: error: ExportError" in again.stderr
    assert "already holds files" in again.stderr
