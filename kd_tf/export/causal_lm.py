"""Ship a causal LM: LiteRT files for phones and a serving SavedModel, each verified against Keras.

`export_causal_lm` turns a KerasHub causal LM (a distilled student) into:

```
out_dir/
  litert/model_<variant>.tflite   float32, float16, dynamic_int8; builtin ops only; int32 inputs
                                  token_ids, padding_mask [1, L] -> float32 logits [1, L, vocabulary]
  litert/tokenizer/               the tokenizer's assets (vocabulary.json and merges.txt for
                                  byte-pair tokenizers): what an app tokenizes with
  serving/                        SavedModel: prompt strings in, greedy generated text out
  export_report.json/.md          sizes, logits parity, agreement, perplexity change, latency
```

It runs four steps, one function each: (1) `_check_inputs` refuses unsuitable input before anything
is written and cuts the sample windows; (2) `_export_litert` converts every variant from one
SavedModel of the logits function (`kd_tf.export.lm_litert`) and runs each `.tflite` on the LiteRT
interpreter against the Keras logits on the same windows; (3) `_export_serving` writes the serving
SavedModel (`kd_tf.export.lm_serving`), loads it back and compares its text with the Keras model's
greedy `generate`; (4) `_finish` gives the verdict. Everything is written into a hidden sibling
folder renamed to `out_dir` only when every check passed, as `export_student` does.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import os
import shutil
import tempfile
import time

import numpy as np

from kd_tf.export.checks import check_texts, environment, file_sizes, prepare_out_dir
from kd_tf.export.litert import convert_saved_model, tflite_operators
from kd_tf.export.lm_litert import LM_VARIANTS, LiteRTCausalLM, write_logits_saved_model
from kd_tf.export.lm_report import CausalLMExportReport
from kd_tf.export.lm_serving import GENERATE_ENDPOINT, stop_token_ids, write_generation_saved_model
from kd_tf.export.report import LATENCY_THREADS, ExportError

__all__ = ["DEFAULT_LM_VARIANTS", "export_causal_lm"]

DEFAULT_LM_VARIANTS = ("float32", "dynamic_int8")
_BATCH = 4  # windows per Keras forward while comparing
_PROMPT_WORDS = 6


def export_causal_lm(
    model,
    out_dir,
    *,
    sample_texts=None,
    windows=None,
    prompts=None,
    variants=DEFAULT_LM_VARIANTS,
    sequence_length=128,
    max_length=64,
    max_windows=16,
    max_float32_diff=1e-4,
    min_top1_agreement=0.5,
    min_text_match=1.0,
    latency_runs=20,
    verbose=False,
):
    """Exports a causal LM for phones (LiteRT) and servers (SavedModel) and verifies every file.

    Each `.tflite` runs on the LiteRT interpreter over real token windows
    and is compared with the Keras model's logits on the same windows; the
    serving SavedModel is loaded back and its text compared with the Keras
    model's greedy `generate`. Gates: float32 logits within
    `max_float32_diff` of Keras (relative to the logits' scale); float16 and
    dynamic int8 top-1 next-token agreement at least `min_top1_agreement`
    (a bound for gross failures only: the perplexity change is reported);
    every logit of a real position finite; the served text equal to Keras's
    on at least `min_text_match` of the prompts.

    Args:
        model: a KerasHub `CausalLM` with its preprocessor (a student from
            `kd_tf.lm.cut_student` after training), or what
            `kd_tf.lm.load_causal_lm` loads (a `.keras` file, a folder).
        out_dir: folder to create; an existing folder must be empty.
        sample_texts: real texts of the task (a list of `str` or a
            `kd_tf.lm.TextCorpus`), packed into windows of `sequence_length`
            tokens as `kd_tf.lm.lm_windows` does. Pass this or `windows`.
        windows: token windows instead: batches from
            `kd_tf.lm.make_lm_dataset` or the arrays of `kd_tf.lm.cut_windows`,
            at most `sequence_length` tokens long.
        prompts: prompts for the serving check; default: the first words of
            the first three sample texts (required with `windows`).
        variants: LiteRT variants, a subset of `LM_VARIANTS`.
        sequence_length: L, the fixed window of the `.tflite` inputs (the
            context a phone app keeps).
        max_length: tokens per sequence the serving model generates, prompt
            included.
        max_windows: the most windows compared (each costs a forward per
            variant).
        max_float32_diff: largest allowed max |LiteRT - Keras| float32 logit
            divided by the largest |Keras| logit.
        min_top1_agreement: smallest allowed top-1 agreement of float16 and
            dynamic int8 with Keras. Healthy dynamic int8 agreed on 86% of
            held-out IMDB tokens for a SmolLM2 student fine-tuned briefly
            (perplexity +2.3%) and on 96% for a tiny random Llama; the default
            0.5 only catches a broken conversion.
        min_text_match: smallest allowed share of prompts whose served text
            equals Keras's.
        latency_runs: batch-1 forwards whose median is each latency.
        verbose: print progress.

    Returns:
        The `CausalLMExportReport` (also saved in `out_dir`).

    Raises:
        ExportError: the model, texts, windows, prompts or `out_dir` are
            unsuitable (before anything is written), a conversion needs
            non-builtin ops, or an exported file differs from the Keras model
            beyond the limits (`error.report` holds the numbers). In every
            case `out_dir` is left as it was.

    Example:

    ```python
    from kd_tf.export import export_causal_lm
    from kd_tf.lm import load_imdb_corpus

    texts = load_imdb_corpus(limit=200).texts[-20:]
    report = export_causal_lm(student, "export_lm", sample_texts=texts, sequence_length=128)
    report.litert["dynamic_int8"]["perplexity_change"], report.litert["float32"]["latency_ms"]
    ```
    """
    plan = _check_inputs(
        model, out_dir, sample_texts, windows, prompts, variants, sequence_length, max_length, max_windows
    )
    plan.log = (lambda message: print(message, flush=True)) if verbose else (lambda message: None)
    report = CausalLMExportReport(
        out_dir=plan.out_dir,
        sequence_length=plan.sequence_length,
        max_length=plan.max_length,
        num_windows=len(plan.windows["token_ids"]),
        tokens=int(round(float(plan.windows["sample_weight"].sum()))),
        thresholds={
            "max_float32_diff (relative)": max_float32_diff,
            "min_top1_agreement (float16, dynamic_int8)": min_top1_agreement,
            "min_text_match": min_text_match,
        },
        environment=environment(),
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    )
    limits = _Limits(max_float32_diff, min_top1_agreement, min_text_match, int(latency_runs))
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(plan.out_dir)}.tmp-", dir=plan.parent)
    try:
        _export_litert(plan, tmp, report, limits)
        _export_serving(plan, tmp, report, limits)
        _finish(plan, tmp, report)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    plan.log(f"export written to {plan.out_dir}")
    return report


@dataclasses.dataclass
class _Plan:
    """What step 1 checked and resolved: everything the later steps need."""

    model: object
    windows: dict
    prompts: list
    variants: tuple
    sequence_length: int
    max_length: int
    out_dir: str
    parent: str
    log: object = None


@dataclasses.dataclass
class _Limits:
    max_float32_diff: float
    min_top1_agreement: float
    min_text_match: float
    latency_runs: int


def _check_model(model):
    from kd_tf.lm import load_causal_lm

    if isinstance(model, (str, os.PathLike)):
        try:
            model = load_causal_lm(model)
        except (OSError, ValueError) as error:
            raise ExportError(f"cannot load the causal LM {os.fspath(model)}: {error}") from error
    if not hasattr(model, "generate_step") or not hasattr(model, "inputs"):
        raise ExportError(
            f"model is a {type(model).__name__}; pass a KerasHub CausalLM (kd_tf.lm.load_causal_lm, "
            "kd_tf.lm.cut_student) or the path of its .keras file."
        )
    if getattr(model, "preprocessor", None) is None:
        raise ExportError(
            "the model has no preprocessor: the serving model and the sample texts need its tokenizer. "
            "Attach it again (model.preprocessor = teacher.preprocessor) before exporting."
        )
    return model


def _sample_windows(model, sample_texts, windows, sequence_length, max_windows):
    """At most `max_windows` windows as numpy arrays (token_ids, padding_mask, labels, sample_weight)."""
    from kd_tf.lm import TextCorpus, lm_windows
    from kd_tf.lm.evaluate import _batches

    if (sample_texts is None) == (windows is None):
        raise ExportError(
            "pass sample_texts (real texts of the task) or windows (from kd_tf.lm.make_lm_dataset), "
            "exactly one of them."
        )
    if sample_texts is not None:
        if not isinstance(sample_texts, TextCorpus):
            sample_texts = TextCorpus(texts=check_texts(sample_texts, "sample_texts"), source="sample_texts")
        windows = lm_windows(sample_texts, model, sequence_length).take(max_windows).batch(_BATCH)
    keys = ("token_ids", "padding_mask", "labels", "sample_weight")
    parts, count = {key: [] for key in keys}, 0
    try:
        for x, labels, weights in _batches(windows, _BATCH):
            for key, value in zip(keys, (x["token_ids"], x["padding_mask"], labels, weights)):
                parts[key].append(np.asarray(value)[: max_windows - count])
            count += len(parts["labels"][-1])
            if count >= max_windows:
                break
    except ValueError as error:
        raise ExportError(str(error)) from error
    if not count:
        raise ExportError("the sample texts or windows give no window; pass real texts of the task.")
    arrays = {key: np.concatenate(value) for key, value in parts.items()}
    length = arrays["token_ids"].shape[1]
    if length > sequence_length:
        raise ExportError(
            f"the windows are {length} tokens long but sequence_length={sequence_length}; pass "
            f"sequence_length={length} or cut the windows to at most {sequence_length} tokens."
        )
    if arrays["sample_weight"].sum() <= 0:
        raise ExportError("the windows hold no labelled token: nothing to compare perplexity on.")
    return arrays


def _check_prompts(model, prompts, sample_texts, max_length):
    from kd_tf.lm import tokenize

    if prompts is None:
        if sample_texts is None:
            raise ExportError("with windows, pass prompts= (a few prompt strings) for the serving check.")
        texts = getattr(sample_texts, "texts", sample_texts)
        prompts = [" ".join(text.split()[:_PROMPT_WORDS]) for text in list(texts)[:3]]
    prompts = check_texts(prompts, "prompts")
    longest = max(len(ids) for ids in tokenize(model, prompts)) + 1  # and the start token
    if longest >= max_length:
        raise ExportError(
            f"a prompt takes {longest} tokens (with the start token), max_length={max_length} leaves "
            f"nothing to generate; pass max_length > {longest} or shorter prompts."
        )
    return prompts


def _check_inputs(
    model, out_dir, sample_texts, windows, prompts, variants, sequence_length, max_length, max_windows
):
    """Step 1: refuse unsuitable input before anything is written; cut the sample windows."""
    variants = tuple(variants)
    unknown = [v for v in variants if v not in LM_VARIANTS]
    if not variants or unknown or len(set(variants)) != len(variants):
        raise ExportError(f"variants {list(variants)}: choose distinct names from {list(LM_VARIANTS)}.")
    sequence_length, max_length, max_windows = int(sequence_length), int(max_length), int(max_windows)
    if sequence_length < 2 or max_length < 2 or max_windows < 1:
        raise ExportError(
            f"sequence_length={sequence_length} and max_length={max_length} must be >= 2 and "
            f"max_windows={max_windows} >= 1."
        )
    model = _check_model(model)
    arrays = _sample_windows(model, sample_texts, windows, sequence_length, max_windows)
    prompts = _check_prompts(model, prompts, sample_texts, max_length)
    out_dir, parent = prepare_out_dir(out_dir)
    return _Plan(model, arrays, prompts, variants, sequence_length, max_length, out_dir, parent)


class _Comparison:
    """Running comparison of one variant's logits with Keras's, window by window.

    Differences and perplexities are None once a logit is not finite (the report is strict JSON).
    """

    def __init__(self):
        self.max_abs_diff, self.scale, self.agree, self.nll, self.finite = 0.0, 0.0, 0.0, 0.0, True

    def update(self, logits, reference, mask, labels, weights):
        if not mask.any():
            return
        real_logits, real_reference = logits[mask], reference[mask]
        if not np.isfinite(real_logits).all():
            self.finite = False
            return
        self.max_abs_diff = max(self.max_abs_diff, float(np.max(np.abs(real_logits - real_reference))))
        self.scale = max(self.scale, float(np.max(np.abs(real_reference))))
        self.agree += float(np.sum(weights * (logits.argmax(-1) == reference.argmax(-1))))
        self.nll += float(np.sum(weights * _label_nll(logits, labels)))

    def result(self, tokens, keras_nll):
        if not self.finite:
            return {"finite": False, "top1_agreement": 0.0} | dict.fromkeys(
                ("max_abs_diff", "logits_scale", "relative_diff", "perplexity", "perplexity_change")
            )
        return {
            "finite": True,
            "max_abs_diff": self.max_abs_diff,
            "logits_scale": self.scale,
            "relative_diff": self.max_abs_diff / max(self.scale, 1e-12),
            "top1_agreement": self.agree / tokens,
            "perplexity": math.exp(self.nll / tokens),
            "perplexity_change": math.exp((self.nll - keras_nll) / tokens) - 1,
        }


def _label_nll(logits, labels):
    """-log p(label) at every position `[n]` of one window's logits `[n, vocabulary]`, in float64."""
    shifted = logits.astype(np.float64)
    shifted -= shifted.max(-1, keepdims=True)
    log_norm = np.log(np.exp(shifted).sum(-1))
    return log_norm - np.take_along_axis(shifted, labels[:, None].astype(np.int64), -1)[:, 0]


def _convert(source, tmp, variant):
    start = time.perf_counter()
    flatbuffer = convert_saved_model(source, variant, None)
    relative = f"litert/model_{variant}.tflite"
    with open(os.path.join(tmp, relative), "wb") as f:
        f.write(flatbuffer)
    return relative, {
        "path": relative,
        "size_bytes": len(flatbuffer),
        "operators": tflite_operators(flatbuffer),
        "convert_s": time.perf_counter() - start,
    }


def _export_litert(plan, tmp, report, limits):
    """Step 2: every LiteRT variant, run on the interpreter and compared with the Keras logits."""
    import tensorflow as tf

    from kd_tf.lm import model_size

    os.makedirs(os.path.join(tmp, "litert", "tokenizer"))
    plan.model.preprocessor.tokenizer.save_assets(os.path.join(tmp, "litert", "tokenizer"))
    plan.log("LiteRT: the logits function as a SavedModel ...")
    source = write_logits_saved_model(plan.model, plan.sequence_length, os.path.join(tmp, ".litert_source"))
    runners, comparisons = {}, {}
    for variant in plan.variants:
        plan.log(f"LiteRT {variant}: converting ...")
        relative, report.litert[variant] = _convert(source, tmp, variant)
        runners[variant], comparisons[variant] = LiteRTCausalLM(os.path.join(tmp, relative)), _Comparison()
    shutil.rmtree(source)
    w = plan.windows
    keras_nll = 0.0
    plan.log(f"LiteRT: comparing on {len(w['token_ids'])} windows ...")
    for start in range(0, len(w["token_ids"]), _BATCH):
        rows = slice(start, start + _BATCH)
        x = {
            "token_ids": tf.constant(w["token_ids"][rows]),
            "padding_mask": tf.constant(w["padding_mask"][rows]),
        }
        reference = np.asarray(plan.model(x, training=False), np.float32)
        for i, row in enumerate(range(len(w["token_ids"]))[rows]):
            keras_nll += float(np.sum(w["sample_weight"][row] * _label_nll(reference[i], w["labels"][row])))
            for variant, runner in runners.items():
                logits = runner(w["token_ids"][row], w["padding_mask"][row])[0]
                comparisons[variant].update(
                    logits, reference[i], w["padding_mask"][row], w["labels"][row], w["sample_weight"][row]
                )
    tokens = float(w["sample_weight"].sum())
    report.keras = {
        "perplexity": math.exp(keras_nll / tokens) if math.isfinite(keras_nll) else None,
        "parameters": model_size(plan.model)["parameters"],
    }
    window = w["token_ids"][0]
    for variant in plan.variants:
        result = report.litert[variant]
        result.update(comparisons[variant].result(tokens, keras_nll))
        result["latency_ms"] = {
            str(n): LiteRTCausalLM(os.path.join(tmp, result["path"]), num_threads=n).latency_ms(
                window, runs=limits.latency_runs
            )
            for n in LATENCY_THREADS
        }
        result["tokens_per_s"] = {n: 1e3 / ms for n, ms in result["latency_ms"].items()}
        _gate_litert(variant, result, report, limits)
        plan.log(
            f"  {variant}: {result['size_bytes'] / 1e6:.2f} MB, "
            f"relative diff {_fmt(result['relative_diff'])}, "
            f"top-1 agreement {result['top1_agreement']:.2%}, perplexity {_fmt(result['perplexity'])} "
            f"(Keras {_fmt(report.keras['perplexity'])}), {result['latency_ms']['1']:.1f} ms per forward"
        )


def _fmt(value):
    return "n/a" if value is None else f"{value:.4g}"


def _gate_litert(variant, result, report, limits):
    if not result["finite"]:
        report.failures.append(f"{variant} gives non-finite logits on LiteRT: the conversion is broken")
    elif variant == "float32":
        report.check(
            result["relative_diff"] <= limits.max_float32_diff,
            f"float32 on LiteRT differs from the Keras logits by {result['relative_diff']:.2e} of their "
            f"scale > {limits.max_float32_diff}",
        )
    else:
        report.check(
            result["top1_agreement"] >= limits.min_top1_agreement,
            f"{variant} on LiteRT agrees with the Keras top-1 next token on "
            f"{result['top1_agreement']:.2%} of tokens < {limits.min_top1_agreement:.0%}",
        )


def _export_serving(plan, tmp, report, limits):
    """Step 3: the serving SavedModel, loaded back and compared with the Keras model's greedy text."""
    import tensorflow as tf

    from kd_tf.lm.evaluate import _greedy

    plan.log("serving SavedModel ...")
    path = os.path.join(tmp, "serving")
    write_generation_saved_model(plan.model, path, plan.max_length)
    served = tf.saved_model.load(path)
    start = time.perf_counter()
    texts = served.signatures["serving_default"](tf.constant(plan.prompts))["text"].numpy()
    generate_s = time.perf_counter() - start
    del served
    texts = [t.decode("utf-8", errors="replace") for t in texts]
    with _greedy(plan.model):
        reference = list(plan.model.generate(plan.prompts, max_length=plan.max_length))
    mismatches = [
        {"prompt": p, "served": t, "keras": r} for p, t, r in zip(plan.prompts, texts, reference) if t != r
    ]
    match = 1.0 - len(mismatches) / len(plan.prompts)
    report.serving = {
        "path": "serving",
        "endpoint": GENERATE_ENDPOINT,
        "prompts": plan.prompts,
        "texts": texts,
        "text_match": match,
        "mismatches": mismatches,
        "generate_s": generate_s,
    }
    report.check(
        match >= limits.min_text_match,
        f"the serving SavedModel generates other text than the Keras model on {len(mismatches)} of "
        f"{len(plan.prompts)} prompts (first: {mismatches[0] if mismatches else None})",
    )
    tokenizer = plan.model.preprocessor.tokenizer
    report.tokenizer = {
        "path": "litert/tokenizer",
        "start_token_id": _int_or_none(getattr(tokenizer, "start_token_id", None)),
        "end_token_ids": stop_token_ids(plan.model),
        "pad_token_id": _int_or_none(getattr(tokenizer, "pad_token_id", None)),
        "vocabulary_size": int(tokenizer.vocabulary_size()),
    }


def _int_or_none(value):
    return None if value is None else int(value)


def _finish(plan, tmp, report):
    """Step 4: the verdict; the report and the folder are moved into place only if every check passed."""
    report.files = file_sizes(tmp)
    if report.failures:
        raise ExportError(
            f"export failed its checks, nothing was written to {plan.out_dir}:\n- "
            + "\n- ".join(report.failures)
            + "\n\n"
            + report.to_markdown(),
            report,
        )
    report.save(tmp)
    if os.path.isdir(plan.out_dir):
        os.rmdir(plan.out_dir)  # empty, checked in step 1
    os.replace(tmp, plan.out_dir)
