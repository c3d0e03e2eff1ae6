"""The causal-LM run (`task: causal_lm`) end to end on a tiny random Llama: steps, resume, report, config."""

import json
import os

import numpy as np
import pytest

from kd_tf.config import ConfigError, config_from_dict, load_config
from kd_tf.lm import convert_gguf, load_causal_lm, perplexity
from kd_tf.pipeline import Pipeline
from kd_tf.pipeline.causal_lm import CausalLMRun
from tests.conftest import REPO_ROOT, TEST_DATA
from tests.lm_tiny import write_tiny_gguf

REVIEWS = os.path.join(TEST_DATA, "imdb", "aclImdb")  # 48 real IMDB reviews, one .txt file each
WIKITEXT = os.path.join(TEST_DATA, "lm_wikitext2_test_head.txt")
LENGTH, BATCH, EPOCHS, WINDOWS = 32, 4, 2, 16


def tiny_lm_config(teacher, output_dir, **train):
    return config_from_dict(
        {
            "task": "causal_lm",
            "run_name": "tiny_lm",
            "output_dir": str(output_dir),
            "seed": 0,
            "causal_lm": {
                "teacher": str(teacher),
                "student_blocks": [1],
                "data": {
                    "source": "text",
                    "path": REVIEWS,
                    "heldout_fraction": 0.25,
                    "sequence_length": LENGTH,
                    "train_tokens": WINDOWS * LENGTH,
                    "batch_size": BATCH,
                },
                "train": {
                    "epochs": EPOCHS,
                    "learning_rate": 1e-3,
                    "k": 4,
                    "samples": 4,
                    "checkpoints": 2,
                    "curve_tokens": 64,
                    **train,
                },
                "evaluate": {
                    "wikitext_path": WIKITEXT,
                    "wikitext_tokens": 160,
                    "heldout_tokens": 160,
                    "window": LENGTH,
                    "stride": 16,
                    "prompts": ["This movie was", "The actors"],
                    "new_tokens": 4,
                    "speed_new_tokens": 3,
                    "speed_runs": 1,
                    "speed_rounds": 1,
                },
            },
        }
    )


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory):
    """A tiny run, stopped after the distill step and resumed: (config, first records, all records)."""
    root = tmp_path_factory.mktemp("lm_run")
    write_tiny_gguf(root / "tiny.gguf", seed=5)
    teacher = convert_gguf(root / "tiny.gguf", root / "hf")
    config = tiny_lm_config(teacher, root / "runs")
    first = Pipeline(config, verbose=0).run(["teacher", "windows", "cache", "distill"])
    records = Pipeline(config, verbose=0).run()
    with open(os.path.join(config.run_dir, "report.json")) as f:
        report = json.load(f)
    return config, first, records, report


def test_resume_reuses_finished_steps_and_runs_the_rest(lm_run):
    config, first, records, _ = lm_run
    assert isinstance(Pipeline(config).task, CausalLMRun)
    assert list(records) == list(CausalLMRun.steps)
    for step in first:  # reused: the same record, to the second (with the token that ties it to its outputs)
        assert {k: v for k, v in records[step].items() if k != "token"} == first[step]
    assert set(records) - set(first) == {"baseline", "evaluate", "report"}


def test_both_students_read_the_same_tokens(lm_run):
    _, _, records, report = lm_run
    steps = EPOCHS * WINDOWS // BATCH
    assert records["windows"]["tokens"] == records["windows"]["learnt_tokens"] == WINDOWS * LENGTH
    for step, targets in (("distill", "sparse"), ("baseline", "none")):
        assert records[step]["targets"] == targets
        assert records[step]["steps"] == steps
        assert records[step]["tokens"] == steps * BATCH * LENGTH
    assert records["baseline"]["stopped_by"] == "steps"  # never more steps than the distilled student
    assert report["comparison"]["equal_tokens"] is True
    assert records["cache"]["bytes_per_token"] == pytest.approx((4 + 4) * 4 + 4)  # ids + values + tail


def test_report_perplexity_is_kd_tf_perplexity(lm_run):
    config, _, _, report = lm_run
    with np.load(os.path.join(config.run_dir, "data", "evaluation.npz")) as f:
        ids = f["wikitext"][:161]
    models = report["models"]
    for role, model in (
        ("teacher", load_causal_lm(config.causal_lm.teacher)),
        ("student", load_causal_lm(os.path.join(config.run_dir, "student", "model.keras"))),
    ):
        value = models[role]["perplexity"]["wikitext"]
        assert np.isfinite(value) and value > 1
        assert value == pytest.approx(perplexity(model, ids, window=LENGTH, stride=16), rel=1e-5)
    for role in ("student", "baseline"):
        for text in ("wikitext", "heldout"):
            assert 0 <= models[role]["agreement"][text] <= 1
            assert np.isfinite(models[role]["perplexity"][text])
    assert report["texts"]["wikitext"]["tokens_scored"] == 160
    assert report["perplexity"] == {"window": LENGTH, "stride": 16}
    s, b = models["student"]["perplexity"]["heldout"], models["baseline"]["perplexity"]["heldout"]
    assert report["comparison"]["perplexity_reduction"]["heldout"] == pytest.approx(1 - s / b)


def test_report_fields_curves_targets_and_files(lm_run):
    config, _, records, report = lm_run
    assert report["schema_version"] == 1 and report["task"] == "causal_lm"
    models = report["models"]
    assert [models[r]["blocks"] for r in ("teacher", "student", "baseline")] == [2, 1, 1]
    assert report["comparison"]["block_ratio"] == 0.5
    speed = {r: models[r]["generation"]["tokens_per_s"] for r in models}
    assert all(v > 0 for v in speed.values())
    assert report["comparison"]["generation_speedup"]["student"] == pytest.approx(
        speed["student"] / speed["teacher"]
    )
    curves = report["curves"]
    for role, step in (("student", "distill"), ("baseline", "baseline")):
        assert [p["tokens"] for p in curves[role]] == [0, 512, 1024]  # before training, 2 checkpoints
        assert curves[role][-1]["perplexity"] == records[step]["perplexity"]
    first = [curves[r][0]["perplexity"]["wikitext"] for r in ("student", "baseline")]
    assert first[0] == pytest.approx(first[1])  # the same cut student before training
    targets = {t["name"]: t for t in report["targets"]}
    assert targets["student blocks / teacher blocks"]["met"] is False  # 1 of 2 blocks > 1/3
    assert len(targets) == 4 and all(t["met"] in (True, False) for t in targets.values())
    assert [g["prompt"] for g in report["generations"]] == ["This movie was", "The actors"]
    with open(os.path.join(config.run_dir, "report.md")) as f:
        markdown = f.read()
    assert "| distilled student | 1 |" in markdown and "## Targets" in markdown
    with open(os.path.join(config.run_dir, report["plots"]["perplexity_vs_tokens"]), "rb") as f:
        assert f.read(4) == b"\x89PNG"


def test_kd_tf_report_renders_a_causal_lm_run_again(lm_run, capsys):
    from kd_tf import cli

    config = lm_run[0]
    os.remove(os.path.join(config.run_dir, "report.md"))
    assert cli.main(["--debug", "report", config.run_dir]) == 0
    assert "cross-entropy student" in capsys.readouterr().out
    assert os.path.exists(os.path.join(config.run_dir, "report.md"))
    assert cli.build_parser().parse_args(["lm-demo"]).command == "lm-demo"


def test_checkpoints_stop_at_the_step_limit_and_the_time_budget():
    import keras

    from kd_tf.pipeline.causal_lm import _checkpoints

    x, y = np.zeros((40, 3), "float32"), np.zeros((40, 1), "float32")
    for budget, limit, stopped_by, tokens in (
        (None, 3, "steps", [0, 20, 30]),
        (1e-9, None, "time budget", [0, 10]),
    ):
        model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
        model.compile("sgd", "mse")
        callback = _checkpoints(
            model, {}, {2}, 10, budget, limit, 4
        )  # a checkpoint at step 2, 10 tokens a step
        model.fit(x, y, batch_size=4, epochs=2, verbose=0, callbacks=[callback])
        assert callback.stopped_by == stopped_by
        assert [p["tokens"] for p in callback.points] == tokens  # before training, checkpoints, the end
        assert callback.seconds >= 0


def test_lm_demo_config_cuts_at_most_a_third_of_smollm2():
    config = load_config(os.path.join(REPO_ROOT, "configs", "lm_demo.yaml"))
    assert config.task == "causal_lm"
    blocks = config.causal_lm.student_blocks
    assert len(blocks) * 3 <= 30 and len(set(blocks)) == len(blocks) and max(blocks) < 30


@pytest.mark.parametrize(
    "values, words",
    [
        ({"task": "causal_lm", "teacher": {"epochs": 1}}, "causal_lm.teacher"),
        ({"causal_lm": {"student_blocks": [0, 1]}}, "set task: causal_lm"),
        ({"task": "causal_lm", "causal_lm": {"student_blocks": [0, 30]}}, "has 30 blocks"),
        ({"task": "causal_lm", "causal_lm": {"student_blocks": [3, 3]}}, "repeats a block"),
        ({"task": "causal_lm", "causal_lm": {"data": {"source": "text"}}}, "needs a path"),
        ({"task": "causal_lm", "causal_lm": {"evaluate": {"window": 64, "stride": 65}}}, "stride"),
        ({"task": "causal_lm", "causal_lm": {"train": {"epochs": 0}}}, "causal_lm.train.epochs"),
        ({"task": "regression"}, "task"),
    ],
)
def test_causal_lm_config_errors_name_the_key_and_the_fix(values, words):
    with pytest.raises(ConfigError, match=words.replace(".", r"\.")):
        config_from_dict(values)
