"""kd_tf.config: YAML run configs, checked key by key."""

import os

import pytest
import yaml

from kd_tf import config as config_lib
from kd_tf.config import ConfigError, load_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = [
    os.path.join(REPO, "configs", name)
    for name in ("demo.yaml", "imdb_bert_base_to_small_bert.yaml", "sweep_demo.yaml")
]


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
    # The phone-sized student: H256 (0.19 of the teacher's int8 bytes, ~6x faster: docs/compression.md).
    assert (config.student.hidden_size, config.student.vocabulary.top_k) == (256, 8000)
    assert config.sweep.students == []
    assert config.data.source == "movie_reviews"
    assert config.run_dir == os.path.join("saved_models", "demo")


def test_training_runs_on_one_device_unless_the_config_says_otherwise():
    config = load_config(CONFIGS[0])
    assert (config.distribute.strategy, config.distribute.devices, config.distribute.backup) == (
        "none",
        None,
        True,
    )
    mirrored = load_config(
        CONFIGS[0], ["distribute.strategy=mirrored", "distribute.devices=['/gpu:0', '/gpu:1']"]
    )
    assert mirrored.distribute.devices == ["/gpu:0", "/gpu:1"]


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
            "distribute.strategy=gpus",
            "distribute.strategy: 'gpus' is not one of none, mirrored, multi_worker",
        ),
        ("distribute.communication=mpi", "distribute.communication: 'mpi' is not one of auto, ring, nccl"),
        ("distribute.devices=['/gpu:0']", "distribute.devices: only the mirrored strategy trains on listed"),
        ("distribute.shard_timeout=0", "distribute.shard_timeout: 0.0 is impossible: it must be > 0"),
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
    own = ["student.encoder=/models/small", "student.hidden_size=null", "student.vocabulary=null"]
    assert load_config(CONFIGS[0], own + ["student.init_layers=[9]"])


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


def test_the_demo_sweep_is_the_demo_run_with_students():
    """configs/sweep_demo.yaml shares the demo's run folder: every key but `sweep` must be the demo's."""
    demo, sweep = (config_lib.config_to_dict(load_config(p)) for p in (CONFIGS[0], CONFIGS[2]))
    students = sweep.pop("sweep")["students"]
    demo.pop("sweep")
    assert demo == sweep
    assert [s["name"] for s in students] == [
        "2L_H384_8k", "3L_H256_8k", "2L_H256_8k", "2L_H256_6k", "3L_H192_8k", "4L_H192_8k",
    ]  # fmt: skip
    # A student's own keys win over the student section's; the keys it leaves null come from there.
    config = load_config(CONFIGS[2])
    first = config_lib.sweep_student(config, config.sweep.students[0])
    assert (first.init_layers, first.hidden_size, first.epochs) == ([1, 4], 384, config.student.epochs)
    deep = config_lib.sweep_student(config, config.sweep.students[5])
    assert deep.init_layers is None and deep.hidden_size == 192  # num_layers: spread once the depth is known


TEACHER = "the teacher kd-tf:all-MiniLM-L6-v2"
SHAPES = [
    ("student.hidden_size=500", f"student.hidden_size: 500 is more than {TEACHER}'s 384"),
    ("student.hidden_size=0", "student.hidden_size: 0 is impossible: it must be >= 1"),
    ("student.hidden_size=250", "student.num_heads: choose it for hidden_size 250"),
    ("student.num_heads=5", "student.num_heads: 5 heads do not divide hidden_size 256"),
    ("student.num_heads=4", "student.num_heads: 4 heads of 64 dimensions are wider than the teacher's"),
    ("student.num_heads=16", f"student.num_heads: 16 is more than {TEACHER}'s 12"),
    ("student.intermediate_size=2000", "student.intermediate_size: 2000 is more than the teacher"),
    ("student.vocabulary={top_k: 8, coverage: 0.9}", "student.vocabulary: give exactly one of top_k"),
    ("student.vocabulary={}", "student.vocabulary: give exactly one of top_k"),
    (
        "student.vocabulary={coverage: 1.5}",
        "student.vocabulary.coverage: 1.5 is impossible: it must be in (0, 1]",
    ),
    (
        "student.vocabulary={topk: 3}",
        "student.vocabulary.topk: unknown key. Did you mean student.vocabulary.top_k",
    ),
    ("student.encoder=/models/small", "student.hidden_size: only a student cut from the teacher is sliced"),
    ("distill.hidden_state_loss=l1", "distill.hidden_state_loss: 'l1' is not one of mse, cosine"),
    ("distill.hidden_state_weight=0", "distill.hidden_state_weight: 0.0 is impossible: it must be > 0"),
    ("evaluate.latency_rounds=0", "evaluate.latency_rounds: 0 is impossible: it must be >= 1"),
    ("sweep.students=[{name: a}, {name: a}]", "sweep.students[1].name: 'a' names two students"),
    ("sweep.students=[{name: ../x}]", "sweep.students[0].name: '../x': give each student a plain name"),
    ("sweep.students=[{name: teacher}]", "sweep.students[0].name: 'teacher': give each student a plain"),
    ("sweep.students=[{name: a, num_layers: 7}]", "sweep.students[0].num_layers: 7 is more than the 6"),
    ("sweep.students=[{name: a, num_layers: 2, init_layers: [0]}]", "sweep.students[0]: give init_layers or"),
    ("sweep.students=[{name: a, init_layers: [0, 6]}]", "sweep.students[0].init_layers: [0, 6] names block"),
    (
        "sweep.students=[{name: a, hidden_size: 100}]",
        "sweep.students[0].num_heads: choose it for hidden_size",
    ),
    ("sweep.students=[{name: a, vocabulary: {}}]", "sweep.students[0].vocabulary: give exactly one of top_k"),
    ("sweep.students=[{nam: a}]", "sweep.students[0].nam: unknown key. Did you mean sweep.students[0].name"),
]


@pytest.mark.parametrize("override,message", SHAPES)
def test_student_shapes_are_checked_when_the_config_is_read(override, message):
    with pytest.raises(ConfigError) as info:
        load_config(CONFIGS[0], [override])
    assert message in str(info.value)


def test_shapes_of_an_unknown_teacher_are_checked_for_what_needs_no_teacher():
    """A local teacher's sizes are unknown until the run reads its folder: only self-consistency is
    checked when the config is read."""
    config = load_config(CONFIGS[0], ["teacher.encoder=/models/teacher", "teacher.preprocessor=/models/pre"])
    assert config.student.hidden_size == 256
    config_lib.check_student_shape(config.student)  # nothing to compare with: no error
    with pytest.raises(ConfigError, match="student.num_heads: 3 heads do not divide hidden_size 256"):
        load_config(CONFIGS[0], ["teacher.encoder=/models/teacher", "student.num_heads=3"])
    shape = {"num_layers": 6, "hidden_size": 32, "num_heads": 2, "intermediate_size": 64}
    with pytest.raises(
        ConfigError, match="student.hidden_size: 256 is more than the teacher /models/teacher's 32"
    ):
        config_lib.check_student_shape(config.student, shape, "/models/teacher")
