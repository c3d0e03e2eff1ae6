"""kd_tf.classify.report: the run report, rebuilt from what a run folder holds."""

import json
import math
import os

import numpy as np
import pytest
import yaml

from kd_tf.classify import evaluate, report
from kd_tf.classify.statistics import PairedBootstrap

LABELS = ["neg", "pos"]
N = 200


def _write_json(path, value):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(value, f)


def _logits(labels, right, scale=2.0):
    """Logits that predict the true label on the indices `right` and the other label elsewhere."""
    predicted = 1 - labels
    predicted[right] = labels[right]
    return np.eye(2)[predicted] * scale


def _binomial_p(a, b):
    """Two-sided exact binomial p-value of a successes in a + b trials at 1/2, by hand."""
    n = a + b
    return min(1.0, 2 * sum(math.comb(n, k) for k in range(min(a, b) + 1)) / 2**n)


# Which of the 200 examples each model gets right: teacher 180, student 170, baseline 150.
RIGHT = {
    "teacher": np.r_[0:180],
    "student": np.r_[0:160, 180:190],
    "baseline": np.r_[0:140, 190:200],
}


# The same two .tflite formats of every model: bytes, LiteRT ms at 1 and 2 threads, CPU ms at 1 thread.
TEACHER_TFLITE = {
    "float32": {"size_bytes": 4000, "latency_ms": {"1": 12.0, "2": 8.0}, "cpu_ms": {"1": 11.0}},
    "dynamic_int8": {"size_bytes": 1000, "latency_ms": {"1": 6.0, "2": 4.0}, "cpu_ms": {"1": 5.5}},
}
STUDENT_TFLITE = {
    "float32": {"size_bytes": 1000, "latency_ms": {"1": 3.0, "2": 2.0}, "cpu_ms": {"1": 2.75}},
    "dynamic_int8": {"size_bytes": 240, "latency_ms": {"1": 1.6, "2": 1.0}, "cpu_ms": {"1": 1.25}},
}


@pytest.fixture()
def run_dir(tmp_path):
    """A run folder as the pipeline leaves it, with hand-chosen predictions on 200 examples."""
    root = tmp_path / "run"
    labels = np.arange(N) % 2
    for role, right in RIGHT.items():
        evaluate.save_predictions(root / "predictions" / f"{role}.npz", _logits(labels, right), labels)
        _write_json(str(root / role / "history.json"), {"history": {"loss": [1.0, 0.5]}, "seconds": 10.0})
    measured = {"parameters": 100, "latency_ms": 4.0, "layers": 2, "tflite": STUDENT_TFLITE}
    _write_json(
        str(root / "evaluation.json"),
        {
            "teacher": {
                **measured,
                "parameters": 400,
                "latency_ms": 12.0,
                "layers": 6,
                "tflite": TEACHER_TFLITE,
            },
            "student": measured,
            "baseline": measured,
        },
    )
    _write_json(str(root / "data" / "splits.json"), {"label_names": LABELS, "sizes": {"test": N}})
    for step, seconds in (("teacher", 5.0), ("distill", 3.0), ("baseline", 3.0), ("evaluate", 1.0)):
        _write_json(str(root / "steps" / f"{step}.json"), {"step": step, "seconds": seconds, "token": step})
    config = {"run_name": "r", "seed": 5, "data": {"seq_length": 16, "source": "table"}}
    with open(root / "config.yaml", "w") as f:
        yaml.safe_dump(config, f)
    return str(root)


def test_quality_intervals_and_tests_are_recomputed_from_the_predictions(run_dir):
    built = report.build_report(run_dir)
    m, c = built["models"], built["comparison"]
    assert built["schema_version"] == 3
    assert built["statistics"]["resamples"] == 2000 and built["statistics"]["seed"] == 5
    assert (m["teacher"]["accuracy"], m["student"]["accuracy"], m["baseline"]["accuracy"]) == (
        0.9,
        0.85,
        0.75,
    )
    # The student agrees with the teacher where both are right (160) or both wrong (10 of 200).
    assert m["student"]["agreement_with_teacher"] == pytest.approx(170 / 200)
    assert m["student"]["confusion_matrix"] == [[85, 15], [15, 85]]
    # Intervals: the same paired bootstrap, the same seed and resamples.
    labels = np.arange(N) % 2
    boot = PairedBootstrap(
        labels,
        {r: _logits(labels, right) for r, right in RIGHT.items()},
        num_classes=2,
        resamples=2000,
        seed=5,
    )
    for role in RIGHT:
        assert m[role]["accuracy_interval"] == pytest.approx(list(boot.interval(role)))
        assert m[role]["f1_interval"] == pytest.approx(list(boot.interval(role, "f1")))
        low, high = m[role]["accuracy_interval"]
        p = m[role]["accuracy"]
        assert low < p < high and high - low == pytest.approx(
            2 * 1.96 * math.sqrt(p * (1 - p) / N), abs=0.015
        )
    assert c["student_accuracy_ratio"] == pytest.approx(0.85 / 0.9)
    assert c["student_accuracy_ratio_interval"] == pytest.approx(
        list(boot.ratio_interval("student", "teacher"))
    )
    assert c["student_minus_baseline_accuracy"] == pytest.approx(0.1)
    # McNemar on the discordant examples: student-only 140..159 and 180..189 (30), baseline-only 190..199.
    vs_baseline = c["tests"]["student_vs_baseline"]
    assert (vs_baseline["only_a_right"], vs_baseline["only_b_right"]) == (30, 10)
    assert vs_baseline["p_value"] == pytest.approx(_binomial_p(30, 10)) and vs_baseline["significant"]
    vs_teacher = c["tests"]["student_vs_teacher"]
    assert (vs_teacher["only_a_right"], vs_teacher["only_b_right"]) == (10, 20)
    assert vs_teacher["p_value"] == pytest.approx(_binomial_p(10, 20)) and not vs_teacher["significant"]
    assert c["parameter_ratio"] == pytest.approx(0.25) and c["keras_speedup"] == pytest.approx(3.0)
    assert c["layer_ratio"] == pytest.approx(1 / 3)
    # Like for like: float32 with float32, int8 with int8, at each thread count.
    assert c["like_for_like"]["student"] == {
        "float32": {"size_ratio": 0.25, "speedup": {"1": 4.0, "2": 4.0}, "cpu_speedup": {"1": 4.0}},
        "dynamic_int8": {"size_ratio": 0.24, "speedup": {"1": 3.75, "2": 4.0}, "cpu_speedup": {"1": 4.4}},
    }
    targets = {t["name"]: (t["verdict"], t["met"]) for t in built["targets"]}
    # 0.9 on 200 examples: the whole interval is above 0.85. 0.944 with an interval reaching past 0.97:
    # undecided. The student's 10-point lead is significant. Its int8 file is 0.24 of the teacher's, and
    # it is 4.4x faster in CPU time (3.75x in wall time: the speed target reads the CPU time).
    assert targets == {
        "teacher accuracy": ("met", True),
        "student accuracy / teacher accuracy": ("undecided", None),
        "student accuracy - label-only student accuracy": ("met", True),
        "student int8 .tflite bytes / teacher int8 .tflite bytes": ("met", True),
        "teacher int8 LiteRT latency / student int8 LiteRT latency (batch 1, 1 thread)": ("met", True),
    }
    assert [t["direction"] for t in built["targets"]] == [">=", ">=", ">", "<=", ">="]
    assert built["steps"] == {"teacher": 5.0, "distill": 3.0, "baseline": 3.0, "evaluate": 1.0}
    assert built["seeds"] is None and built["test_sets"] == {}


def test_a_lead_that_is_not_significant_is_said_so(run_dir):
    labels = np.arange(N) % 2
    # The baseline now gets 0..165 right: 4 examples behind the student, 6 vs 10 discordant.
    evaluate.save_predictions(
        os.path.join(run_dir, "predictions", "baseline.npz"), _logits(labels, np.r_[0:166]), labels
    )
    built = report.build_report(run_dir)
    gain = built["targets"][2]
    assert gain["value"] == pytest.approx(0.02)
    assert gain["verdict"] == "undecided" and gain["met"] is None
    assert f"p = {_binomial_p(10, 6):.3g}, not significant at 0.05" in gain["evidence"]
    paths = report.write_report(built, run_dir)
    markdown = open(paths["markdown"]).read()
    assert "student accuracy - label-only student accuracy > 0.0: +0.0200 (95% CI " in markdown
    assert ": not significant (exact McNemar" in markdown


def test_written_report_is_json_markdown_and_plots(run_dir):
    paths = report.write_report(report.build_report(run_dir), run_dir)
    with open(paths["json"]) as f:
        saved = json.load(f)
    assert saved["schema_version"] == report.SCHEMA_VERSION
    markdown = open(paths["markdown"]).read()
    low, high = saved["models"]["student"]["accuracy_interval"]
    assert f"| distilled student | 0.8500 ({low:.3f}–{high:.3f}) |" in markdown
    assert "student accuracy / teacher accuracy >= 0.97: 0.9444 (95% CI " in markdown
    assert "undecided (the interval straddles the threshold" in markdown
    assert "2,000 resamples, seed 5" in markdown
    # The table shows every model's int8 file and LiteRT latency, and the like-for-like section says so.
    assert "| int8 .tflite | int8 LiteRT ms (b=1, 1 thread) |" in markdown
    assert "A ratio only ever compares two files of the same format" in markdown
    assert "| distilled student | dynamic_int8 | 0.240 | 3.75x / 4.00x | 4.40x |" in markdown
    assert "student int8 .tflite bytes / teacher int8 .tflite bytes <= 0.25: 0.240: met" in markdown
    assert set(saved["plots"].values()) == {
        "training_curves.png",
        "accuracy_vs_size.png",
        "accuracy_intervals.png",
    }
    for name in saved["plots"].values():
        assert os.path.getsize(os.path.join(run_dir, name)) > 1000


def test_seeds_report_mean_sd_and_wins(run_dir):
    labels = np.arange(N) % 2
    # Seeds 1005 and 2005: student 160 and 176 right, baseline 150 and 180 right.
    extra = {1005: (np.r_[0:160], np.r_[0:150]), 2005: (np.r_[0:176], np.r_[0:180])}
    for seed, (student, baseline) in extra.items():
        folder = os.path.join(run_dir, "seeds", f"seed{seed}")
        evaluate.save_predictions(os.path.join(folder, "student.npz"), _logits(labels, student), labels)
        evaluate.save_predictions(os.path.join(folder, "baseline.npz"), _logits(labels, baseline), labels)
    with open(os.path.join(run_dir, "config.yaml")) as f:
        config = yaml.safe_load(f)
    config["distill"] = {"seeds": 3}
    with open(os.path.join(run_dir, "config.yaml"), "w") as f:
        yaml.safe_dump(config, f)
    _write_json(
        os.path.join(run_dir, "steps", "seeds.json"),
        {"step": "seeds", "seconds": 1.0, "seeds": 3, "seed_values": [5, 1005, 2005]},
    )
    built = report.build_report(run_dir)
    seeds = built["seeds"]
    student = [0.85, 0.80, 0.88]
    baseline = [0.75, 0.75, 0.90]
    assert seeds["models"]["student"]["accuracy"]["values"] == pytest.approx(student)
    assert seeds["models"]["student"]["accuracy"]["mean"] == pytest.approx(np.mean(student))
    assert seeds["models"]["student"]["accuracy"]["sd"] == pytest.approx(np.std(student, ddof=1))
    assert seeds["models"]["baseline"]["accuracy"]["sd"] == pytest.approx(np.std(baseline, ddof=1))
    diff = np.subtract(student, baseline)
    assert seeds["student_minus_baseline_accuracy"]["mean"] == pytest.approx(diff.mean())
    assert seeds["student_wins"] == 2 and seeds["status"] == "complete"
    # Seed 1005: student-only 150..159 (10), baseline-only none.
    assert seeds["per_seed"][1]["p_value"] == pytest.approx(_binomial_p(10, 0))
    assert seeds["student_accuracy_ratio"]["values"] == pytest.approx([s / 0.9 for s in student])
    paths = report.write_report(built, run_dir)
    markdown = open(paths["markdown"]).read()
    assert "## Seeds (3)" in markdown
    assert f"| distilled student | {np.mean(student):.4f} ± {np.std(student, ddof=1):.4f} |" in markdown
    assert "ahead in 2 of 3 seeds" in markdown
    assert "accuracy, 3 seeds (mean ± sd)" in markdown.splitlines()[4]
    assert os.path.getsize(paths["seeds"]) > 1000
    # Asked for 4 seeds, trained for 3: the report says the step has not run for 4.
    config["distill"] = {"seeds": 4}
    with open(os.path.join(run_dir, "config.yaml"), "w") as f:
        yaml.safe_dump(config, f)
    assert report.build_report(run_dir)["seeds"]["status"].startswith("the seeds step has not run for 4")


def _test_set(run_dir, name, right, tokens):
    labels = np.arange(100) % 2
    folder = os.path.join(run_dir, "test_sets", name)
    for role, r in right.items():
        evaluate.save_predictions(
            os.path.join(folder, "predictions", f"{role}.npz"), _logits(labels, r), labels
        )
    _write_json(
        os.path.join(folder, "test_set.json"),
        {
            "file": "/data/sst2/dev.tsv",
            "format": "tsv",
            "examples": 100,
            "label_names": LABELS,
            "label_mapping": {"0": {"label": "neg", "examples": 50, "by": "id"}},
            "models": {r: {"step": report.TRAINING_STEPS[r], "token": tokens[r]} for r in right},
        },
    )


def test_other_test_sets_get_intervals_retention_and_staleness(run_dir):
    right = {"teacher": np.r_[0:80], "student": np.r_[0:72], "baseline": np.r_[0:60]}
    _test_set(run_dir, "sst2-dev", right, {"teacher": "teacher", "student": "distill", "baseline": "old"})
    built = report.build_report(run_dir)
    entry = built["test_sets"]["sst2-dev"]
    assert entry["models"]["teacher"]["accuracy"] == 0.8 and entry["models"]["student"]["accuracy"] == 0.72
    assert entry["comparison"]["student_accuracy_ratio"] == pytest.approx(0.9)
    low, high = entry["comparison"]["student_accuracy_ratio_interval"]
    assert low < 0.9 < high
    assert entry["comparison"]["tests"]["student_vs_teacher"]["only_b_right"] == 8
    # The baseline was trained again (its step's token changed) after the set was scored.
    stale = entry["models"]["baseline"]
    assert stale["accuracy"] is None and stale["status"].startswith("stale: the label-only student")
    assert "student_vs_baseline" not in entry["comparison"]["tests"]
    paths = report.write_report(built, run_dir)
    markdown = open(paths["markdown"]).read()
    assert "### sst2-dev" in markdown and "labels 0 → neg (50)" in markdown
    assert "- cross-domain retention (student / teacher accuracy): 0.9000 (95% CI " in markdown
    assert "kd-tf evaluate" in markdown  # how to refresh the stale model
    # The plot shows the extra set too: it grows with the rows.
    assert os.path.getsize(paths["accuracy with intervals"]) > 1000


def test_non_finite_predictions_meet_no_target(run_dir):
    labels = np.arange(N) % 2
    evaluate.save_predictions(
        os.path.join(run_dir, "predictions", "student.npz"), np.full((N, 2), np.nan), labels
    )
    built = report.build_report(run_dir)
    student = built["models"]["student"]
    assert student["accuracy"] is None and student["accuracy_interval"] is None
    assert student["status"].startswith("non-finite logits: 200 of 200")
    assert [t["verdict"] for t in built["targets"]] == ["met", "not measured", "not measured", "met", "met"]


def test_ratios_are_only_taken_between_equal_formats(run_dir):
    """A teacher measured only as float32 and a student only as int8 give no ratio, and no size or speed
    target is decided on them; with one format in common, only that one is compared."""
    path = os.path.join(run_dir, "evaluation.json")
    with open(path) as f:
        measured = json.load(f)
    measured["teacher"]["tflite"] = {"float32": TEACHER_TFLITE["float32"]}
    for role in ("student", "baseline"):
        measured[role]["tflite"] = {"dynamic_int8": STUDENT_TFLITE["dynamic_int8"]}
    _write_json(path, measured)
    built = report.build_report(run_dir)
    assert built["comparison"]["like_for_like"] == {"student": {}, "baseline": {}}
    assert [(t["verdict"], t["value"]) for t in built["targets"][3:]] == [("not measured", None)] * 2
    measured["student"]["tflite"] = STUDENT_TFLITE
    _write_json(path, measured)
    ratios = report.build_report(run_dir)["comparison"]["like_for_like"]["student"]
    assert list(ratios) == ["float32"] and ratios["float32"]["size_ratio"] == 0.25


def test_a_run_without_evaluation_says_what_to_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="run the evaluate step"):
        report.build_report(str(tmp_path))
