"""kd_tf.config: YAML run configs, checked key by key."""

import os

import pytest
import yaml

from kd_tf import config as config_lib
from kd_tf.config import ConfigError, load_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = [os.path.join(REPO, "configs", name) for name in ("demo.yaml", "imdb_bert_base_to_small_bert.yaml")]


@pytest.mark.parametrize("path", CONFIGS)
def test_shipped_configs_load_and_round_trip(path, tmp_path):
    config = load_config(path)
    out = tmp_path / "config.yaml"
    config_lib.save_config(config, out)
    assert load_config(out) == config
    with open(path) as f:
        written = yaml.safe_load(f)
    # Every key of the shipped files is a real field (no silently ignored typo).
    assert config_lib.config_to_dict(config)["data"].keys() >= written["data"].keys()


def test_demo_config_values():
    config = load_config(CONFIGS[0])
    assert config.teacher.encoder == "kd-tf:all-MiniLM-L6-v2"
    assert config.teacher.pooling == "mean"
    assert config.student.init_layers == [1, 4]
    assert config.data.source == "movie_reviews"
    assert config.run_dir == os.path.join("saved_models", "demo")


def test_set_overrides_parse_yaml_values():
    config = load_config(
        CONFIGS[0],
        [
            "teacher.epochs=3",
            "student.init_layers=[0, 5]",
            "distill.alpha=0.5",
            "teacher.preprocessor=null",
            "run_name=other",
        ],
    )
    assert config.teacher.epochs == 3
    assert config.student.init_layers == [0, 5]
    assert config.distill.alpha == 0.5
    assert config.run_name == "other"


@pytest.mark.parametrize(
    "override,message",
    [
        ("teacher.epoch=2", "teacher.epoch: unknown key. Did you mean teacher.epochs?"),
        ("teacher.epochs=two", "teacher.epochs: expected an integer, got 'two'"),
        ("teacher.epochs=0", "teacher.epochs: 0 is impossible: it must be >= 1"),
        ("data.seq_length=1024", "data.seq_length: 1024 is impossible: it must be in [3, 512]"),
        ("distill.alpha=1.5", "distill.alpha: 1.5 is impossible: it must be in [0, 1]"),
        ("distill.loss=hinge", "distill.loss: 'hinge' is not one of kl, soft_cross_entropy, mse"),
        ("data.bucketing=yes please", "data.bucketing: expected true/false"),
        ("export.variants=[int4]", "export.variants: 'int4' is not one of"),
        ("data.source=table", "data.path: the table source needs a path"),
        ("teacher=3", "teacher: expected a mapping of TeacherConfig fields"),
        ("epochs", "--set 'epochs': write key=value"),
        ("teacher.learning_rate=.inf", "teacher.learning_rate: inf is not a finite number"),
        ("distill.temperature=.nan", "distill.temperature: nan is not a finite number"),
        ("run_name=..", "run_name: '..' must be a plain folder name"),
        ("run_name=.", "run_name: '.' must be a plain folder name"),
        ("run_name=a/b", "run_name: 'a/b' must be a plain folder name"),
        ("seed=-1", "seed: -1 is impossible: it must be in [0, 4294967295]"),
        ("seed=4294967296", "seed: 4294967296 is impossible: it must be in [0, 4294967295]"),
        ("data.batch_size=0", "data.batch_size: 0 is impossible: it must be in [1, 8192]"),
        ("data.batch_size=100000", "data.batch_size: 100000 is impossible: it must be in [1, 8192]"),
        ("student.init_layers=[1, 1]", "student.init_layers: [1, 1] repeats [1]"),
        ("student.init_layers=[-1, 2]", "student.init_layers: [-1, 2] is impossible: it must be >= 0"),
        (
            "student.init_layers=[1, 6]",
            "student.init_layers: [1, 6] names block 6, but the teacher kd-tf:all-MiniLM-L6-v2 has 6 blocks",
        ),
    ],
)
def test_bad_values_name_the_key(override, message):
    with pytest.raises(ConfigError) as info:
        load_config(CONFIGS[0], [override])
    assert message in str(info.value)
    assert str(info.value).startswith(CONFIGS[0])


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("teacher: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_every_field_is_documented():
    lines = config_lib.describe_fields()
    assert any(line.startswith("distill.temperature: ") for line in lines)
    assert all(": " in line and len(line.split(": ", 1)[1]) > 5 for line in lines)


def test_extreme_valid_values_are_accepted():
    config = load_config(
        CONFIGS[0], ["seed=4294967295", "data.batch_size=8192", "student.init_layers=[0, 5]", "run_name=.x"]
    )
    assert (config.seed, config.data.batch_size, config.student.init_layers) == (2**32 - 1, 8192, [0, 5])
    # A student with its own encoder copies no teacher blocks: init_layers is not checked against them.
    assert load_config(CONFIGS[0], ["student.encoder=/models/small", "student.init_layers=[9]"])


def test_a_key_written_twice_is_refused_with_both_lines(tmp_path):
    path = tmp_path / "twice.yaml"
    path.write_text("run_name: a\nteacher:\n  epochs: 1\n  dropout: 0.2\n  epochs: 3\nseed: 1\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == (
        f"{path}: teacher.epochs is written twice (lines 3 and 5); YAML would keep only the second. "
        f"Delete one of them."
    )
    path.write_text("seed: 1\nrun_name: a\nseed: 2\n")
    with pytest.raises(ConfigError, match=r"seed is written twice \(lines 1 and 3\)"):
        load_config(path)


def test_known_teacher_depth_matches_the_installed_preset(minilm_dir):
    import json

    with open(os.path.join(minilm_dir, "config.json")) as f:
        layers = json.load(f)["num_hidden_layers"]
    assert config_lib.TEACHER_LAYERS["kd-tf:all-MiniLM-L6-v2"] == layers


def test_saved_config_is_written_whole(tmp_path):
    config = load_config(CONFIGS[0])
    out = tmp_path / "config.yaml"
    out.write_text("old")
    config_lib.save_config(config, out)
    assert load_config(out) == config and os.listdir(tmp_path) == ["config.yaml"]
