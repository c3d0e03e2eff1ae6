"""kd_tf.classify.report: the run report, rebuilt from what a run folder holds."""

import json
import os

import numpy as np
import pytest
import yaml

from kd_tf.classify import evaluate, report

LABELS = ["neg", "pos"]


def _write_json(path, value):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(value, f)


@pytest.fixture()
def run_dir(tmp_path):
    """A run folder as the pipeline leaves it, with hand-chosen predictions."""
    root = tmp_path / "run"
    labels = np.array([0, 0, 1, 1, 1, 0, 1, 0])
    teacher = np.eye(2)[[0, 0, 1, 1, 1, 0, 1, 1]] * 3.0  # 7 of 8 right
    student = np.eye(2)[[0, 0, 1, 1, 0, 0, 1, 1]] * 2.0  # 6 of 8 right
    baseline = np.eye(2)[[0, 1, 1, 1, 0, 0, 0, 1]] * 1.0  # 4 of 8 right
    for role, logits in (("teacher", teacher), ("student", student), ("baseline", baseline)):
        evaluate.save_predictions(root / "predictions" / f"{role}.npz", logits, labels)
        _write_json(str(root / role / "history.json"), {"history": {"loss": [1.0, 0.5]}, "seconds": 10.0})
    measured = {"parameters": 100, "latency_ms": 4.0, "layers": 2, "tflite_bytes": 1000}
    _write_json(
        str(root / "evaluation.json"),
        {
            "teacher": {**measured, "parameters": 400, "latency_ms": 12.0, "layers": 6},
            "student": measured,
            "baseline": measured,
        },
    )
    _write_json(str(root / "data" / "splits.json"), {"label_names": LABELS, "sizes": {"test": 8}})
    for step, seconds in (("teacher", 5.0), ("distill", 3.0), ("evaluate", 1.0)):
        _write_json(str(root / "steps" / f"{step}.json"), {"step": step, "seconds": seconds})
    with open(root / "config.yaml", "w") as f:
        yaml.safe_dump({"run_name": "r", "data": {"seq_length": 16, "source": "table"}}, f)
    return str(root)


def test_quality_is_recomputed_from_the_predictions(run_dir):
    built = report.build_report(run_dir)
    m = built["models"]
    assert m["teacher"]["accuracy"] == pytest.approx(7 / 8)
    assert m["student"]["accuracy"] == pytest.approx(6 / 8)
    assert m["baseline"]["accuracy"] == pytest.approx(4 / 8)
    assert m["student"]["agreement_with_teacher"] == pytest.approx(7 / 8)
    assert m["student"]["confusion_matrix"] == [[3, 1], [1, 3]]
    c = built["comparison"]
    assert c["student_accuracy_ratio"] == pytest.approx(6 / 7)
    assert c["student_minus_baseline_accuracy"] == pytest.approx(0.25)
    assert c["size_ratio"] == pytest.approx(4.0) and c["speedup"] == pytest.approx(3.0)
    assert c["layer_ratio"] == pytest.approx(1 / 3)
    targets = {t["name"]: t["met"] for t in built["targets"]}
    assert targets == {
        "teacher accuracy": True,
        "student accuracy / teacher accuracy": False,
        "student accuracy - label-only student accuracy": True,
    }
    assert built["steps"] == {"teacher": 5.0, "distill": 3.0, "evaluate": 1.0}


def test_written_report_is_json_markdown_and_plots(run_dir):
    paths = report.write_report(report.build_report(run_dir), run_dir)
    with open(paths["json"]) as f:
        saved = json.load(f)
    assert saved["schema_version"] == report.SCHEMA_VERSION
    markdown = open(paths["markdown"]).read()
    assert "| distilled student | 0.7500 |" in markdown
    assert "student accuracy / teacher accuracy >= 0.97: 0.8571: **missed**" in markdown
    for name in saved["plots"].values():
        assert os.path.getsize(os.path.join(run_dir, name)) > 1000


def test_a_run_without_evaluation_says_what_to_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="run the evaluate step"):
        report.build_report(str(tmp_path))
