"""kd-tf sweep: several students of one teacher, each distilled, trained on labels and measured like for like.

One tiny sweep (module fixture) on real IMDB reviews: a narrow student with a pruned vocabulary and a plain
one-block cut, killed before its second student and resumed. The report must list every student with
figures recomputed from what the steps saved, and compare only files of the same format.
"""

import json
import os

import numpy as np
import pytest
import yaml

from kd_tf import cli
from kd_tf.classify import evaluate
from kd_tf.config import load_config
from kd_tf.pipeline import Pipeline, RunFolder, SweepRun
from tests.test_pipeline import tiny_config

STUDENTS = [
    {"name": "h16_300", "init_layers": [1], "hidden_size": 16, "vocabulary": {"top_k": 300}},
    {"name": "cut1", "num_layers": 1},
]


def read(path):
    with open(path) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def swept(tmp_path_factory, tiny_encoder, tiny_preprocessor):
    """The sweep, stopped (Ctrl-C) when its second student starts, then run again to the end."""
    tmp_path = tmp_path_factory.mktemp("sweep")
    config_path = tiny_config(
        tmp_path,
        tiny_encoder,
        tiny_preprocessor,
        data={"transfer_size": 0},
        teacher={"epochs": 1},
        student={"calibration_texts": 16, "epochs": 1},
        evaluate={"latency_rounds": 2},
    )
    values = yaml.safe_load(open(config_path))
    values["sweep"] = {"students": STUDENTS}
    with open(config_path, "w") as f:
        yaml.safe_dump(values, f)
    original = SweepRun.step_student

    def interrupted(self, name):
        if name == "cut1":
            raise KeyboardInterrupt
        return original(self, name)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(SweepRun, "step_student", interrupted)
        first = cli.main(["sweep", "--config", config_path])
    run_dir = load_config(config_path).run_dir
    steps_after_stop = sorted(os.listdir(os.path.join(run_dir, "steps")))
    second = cli.main(["sweep", "--config", config_path])
    return {
        "config": config_path,
        "run_dir": run_dir,
        "codes": (first, second),
        "steps_after_stop": steps_after_stop,
    }


def test_a_stopped_sweep_resumes_at_the_next_unfinished_student(swept):
    assert swept["codes"] == (130, 0)
    assert swept["steps_after_stop"] == [
        "cache.json",
        "student-h16_300.json",
        "sweep_teacher.json",
        "teacher.json",
    ]
    steps = os.path.join(swept["run_dir"], "steps")
    assert sorted(os.listdir(steps)) == sorted(
        swept["steps_after_stop"] + ["student-cut1.json", "sweep_report.json"]
    )
    # The first student was not trained again: its record is the one written before the stop.
    first = read(os.path.join(steps, "student-h16_300.json"))
    assert first["spec"]["hidden_size"] == 16 and first["init_layers"] == [1]
    assert read(os.path.join(steps, "student-cut1.json"))["init_layers"] == [1]  # num_layers 1 of 2: block 1
    assert read(os.path.join(steps, "cache.json"))["examples"] == 64  # the teacher labelled the texts once
    caches = [
        p for p in os.listdir(os.path.join(swept["run_dir"], "teacher_cache")) if not p.endswith(".lock")
    ]
    assert len(caches) == 1


def test_the_sweep_report_lists_every_student_like_for_like(swept):
    run_dir = swept["run_dir"]
    report = read(os.path.join(run_dir, "sweep", "report.json"))
    assert [s["name"] for s in report["students"]] == ["h16_300", "cut1"]
    teacher = read(os.path.join(run_dir, "sweep", "teacher", "evaluation.json"))["teacher"]
    teacher_predictions = evaluate.load_predictions(
        os.path.join(run_dir, "sweep", "teacher", "predictions", "teacher.npz")
    )
    t_accuracy = float(np.mean(teacher_predictions["logits"].argmax(1) == teacher_predictions["labels"]))
    assert report["teacher"]["accuracy"] == pytest.approx(t_accuracy)
    for row in report["students"]:
        folder = os.path.join(run_dir, "sweep", row["name"])
        measured = read(os.path.join(folder, "evaluation.json"))
        timed = measured["timed_with"]["teacher"]  # the teacher's files, timed in the same turns
        assert row["status"] == "done" and row["teacher_tflite"] == timed
        for role in ("student", "baseline"):
            predictions = evaluate.load_predictions(os.path.join(folder, "predictions", f"{role}.npz"))
            accuracy = float(np.mean(predictions["logits"].argmax(1) == predictions["labels"]))
            assert row[role]["accuracy"] == pytest.approx(accuracy)
            ratios = row["like_for_like"][role]
            assert sorted(ratios) == ["dynamic_int8", "float32"]  # each format against itself, only
            for variant, ratio in ratios.items():
                mine = measured[role]["tflite"][variant]
                assert timed[variant]["size_bytes"] == teacher["tflite"][variant]["size_bytes"]
                assert ratio["size_ratio"] == pytest.approx(mine["size_bytes"] / timed[variant]["size_bytes"])
                for n in ("1", "2"):
                    expected = timed[variant]["latency_ms"][n] / mine["latency_ms"][n]
                    assert ratio["speedup"][n] == pytest.approx(expected)
        assert row["comparison"]["student_accuracy_ratio"] == pytest.approx(
            row["student"]["accuracy"] / t_accuracy
        )
        assert [t["direction"] for t in row["targets"]] == [">=", ">", "<=", ">="]
    narrow, cut = report["students"]
    assert narrow["vocab_size"] == narrow["vocabulary"]["kept_tokens"] < 3000 and narrow["hidden_size"] == 16
    assert cut["vocab_size"] == 30522 and cut["vocabulary"] is None
    # The narrow, pruned student is far smaller than the one-block cut, whose embeddings are the teacher's.
    assert narrow["like_for_like"]["student"]["dynamic_int8"]["size_ratio"] < 0.1
    assert cut["like_for_like"]["student"]["dynamic_int8"]["size_ratio"] > 0.9
    assert "h16_300" in report["pareto"]["size"]
    markdown = open(os.path.join(run_dir, "sweep", "report.md")).read()
    assert "| h16_300 | 1L [1] | H16 |" in markdown and "| cut1 | 1L [1] | H32 | 30,522 |" in markdown
    assert "each ratio compares two `.tflite` files of the same format" in markdown
    assert os.path.getsize(os.path.join(run_dir, "sweep", "pareto.png")) > 5000


def test_a_student_whose_shape_changes_runs_again_and_a_new_one_joins(swept):
    """The folder takes another list of students (only they change); a changed student's record is stale,
    the others' are not, and the report's list is refreshed."""
    values = yaml.safe_load(open(swept["config"]))
    values["sweep"]["students"][1]["hidden_size"] = 16
    values["sweep"]["students"].append({"name": "h16", "init_layers": [0], "hidden_size": 16})
    path = os.path.join(os.path.dirname(swept["config"]), "changed.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(values, f)
    config = load_config(path)
    folder = RunFolder(config)
    with folder.lock():
        folder.check_config()  # another list of students is no other run
    sweep = Pipeline(config, task=SweepRun).task
    assert sweep.steps[-2:] == ("student-h16", "sweep_report")
    stale = {step: sweep.stale(step, folder.record(step)) for step in sweep.steps if folder.record(step)}
    assert stale == {
        "teacher": False,
        "cache": False,
        "sweep_teacher": False,
        "student-h16_300": False,
        "student-cut1": True,
        "sweep_report": True,
    }
    with folder.lock():  # leave the sweep's own config as it was
        RunFolder(load_config(swept["config"])).check_config()


def test_shapes_are_measured_before_any_training(swept, capsys):
    """`kd-tf sweep --shapes` cuts the students from the untrained teacher and measures their files only."""
    run_dir = swept["run_dir"]
    steps = sorted(os.listdir(os.path.join(run_dir, "steps")))
    assert cli.main(["sweep", "--config", swept["config"], "--shapes"]) == 0
    out = capsys.readouterr().out
    assert "h16_300" in out and "sweep_shapes/shapes.md" in out
    shapes = read(os.path.join(run_dir, "sweep_shapes", "shapes.json"))
    assert [s["name"] for s in shapes["students"]] == ["h16_300", "cut1"]
    narrow, cut = shapes["students"]
    assert (narrow["hidden_size"], narrow["num_heads"], narrow["layers"]) == (16, 1, 1)
    assert narrow["vocab_size"] < 3000 and cut["vocab_size"] == 30522
    # The same shapes as the trained students: the same parameters, and nearly the same bytes. The tiny
    # teacher is randomly initialised (zero biases, unit LayerNorm gains): the converter folds those adds
    # and products away, so its untrained students' files are a few percent smaller than trained ones.
    for row in (narrow, cut):
        trained = read(os.path.join(run_dir, "sweep", row["name"], "evaluation.json"))["student"]
        assert row["parameters"] == trained["parameters"]
        for variant in ("float32", "dynamic_int8"):
            assert 0.85 < row["tflite"][variant]["size_bytes"] / trained["tflite"][variant]["size_bytes"] <= 1
            ratio = row["tflite"][variant]["size_bytes"] / shapes["teacher"]["tflite"][variant]["size_bytes"]
            assert row["like_for_like"][variant]["size_ratio"] == pytest.approx(ratio)
    assert sorted(os.listdir(os.path.join(run_dir, "sweep_shapes"))) == ["shapes.json", "shapes.md"]
    assert sorted(os.listdir(os.path.join(run_dir, "steps"))) == steps  # no step recorded
