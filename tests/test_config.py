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
