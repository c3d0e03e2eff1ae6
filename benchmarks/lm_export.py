"""Benchmark of shipping a causal-LM student (`kd_tf.export.export_causal_lm`) cut from SmolLM2.

Measures on this machine (CPU):

- a student cut from the SmolLM2-135M-Instruct teacher (10 of its 30 blocks, `cut_student`),
  optionally fine-tuned for `--train-steps` steps on IMDB review windows (next-token cross-entropy,
  no distillation: only to make perplexity meaningful; a distilled student comes from the demo);
- its export: `.tflite` sizes (float32, dynamic int8), conversion time, float32 logits parity with
  Keras, dynamic int8 top-1 agreement and perplexity change on held-out IMDB windows, LiteRT batch-1
  latency per forward at 1 and 2 threads, and the serving SavedModel's text against Keras's `generate`;
- peak memory (the process's peak RSS, `VmHWM`, reset before each measured step): the whole export,
  and one standalone dynamic int8 conversion (`convert_causal_lm`);
- the phone loop (`LiteRTCausalLM.generate`: one forward of the whole window per token) in tokens/s.

Usage (from the repository root):
    .venv/bin/python benchmarks/lm_export.py [--train-steps 128] [--windows 16] [--sequence-length 128]

It writes benchmarks/results/lm_export.md (or --output) and prints it.
"""

import argparse
import gc
import os
import platform
import re
import shlex
import shutil
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402

from kd_tf.export import LiteRTCausalLM, convert_causal_lm, export_causal_lm  # noqa: E402
from kd_tf.lm import (  # noqa: E402
    cut_student,
    load_causal_lm,
    load_imdb_corpus,
    make_lm_dataset,
    model_size,
    smollm2_preset_dir,
    tokenize,
)

HERE = os.path.dirname(os.path.abspath(__file__))
STUDENT_BLOCKS = [0, 3, 6, 9, 12, 15, 18, 21, 24, 29]
PROMPTS = ["This movie was", "The acting in this film", "I would not recommend"]


def load_average():
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())


def reset_peak_memory():
    """Resets the process's peak RSS (`VmHWM`); False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def memory_mb(field):
    """`VmRSS` (now) or `VmHWM` (peak since the last reset) in MB."""
    with open("/proc/self/status") as f:
        return int(re.search(rf"{field}:\s+(\d+)", f.read()).group(1)) / 1024


def table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]


def fine_tune(student, train, sequence_length, steps, learning_rate):
    """Next-token cross-entropy on IMDB windows for `steps` batches of 4 (the preprocessor detached)."""
    preprocessor, student.preprocessor = student.preprocessor, None
    try:
        student.compile(
            optimizer=keras.optimizers.Adam(learning_rate),
            loss=keras.losses.SparseCategoricalCrossentropy(
                from_logits=True, reduction="mean_with_sample_weight"
            ),
            weighted_metrics=[],
            jit_compile=False,
        )
        data = make_lm_dataset(train, preprocessor, sequence_length, batch_size=4, shuffle=True, seed=0)
        start = time.perf_counter()
        history = student.fit(data.repeat().take(steps), epochs=1, verbose=2)
        return time.perf_counter() - start, history.history["loss"][-1]
    finally:
        student.preprocessor = preprocessor


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--train-steps", type=int, default=128)
    parser.add_argument("--learning-rate", type=float, default=2e-4)
    parser.add_argument("--reviews", type=int, default=2000)
    parser.add_argument("--windows", type=int, default=16)
    parser.add_argument("--sequence-length", type=int, default=128)
    parser.add_argument("--max-length", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument(
        "--min-top1-agreement", type=float, default=None, help="the int8 gate (default: the library's)"
    )
    parser.add_argument("--output", default=os.path.join(HERE, "results", "lm_export.md"))
    args = parser.parse_args()
    started, length = time.perf_counter(), args.sequence_length
    command = shlex.join([".venv/bin/python", "benchmarks/lm_export.py", *sys.argv[1:]])
    lines = [
        "# Shipping a causal-LM student: LiteRT and serving SavedModel (`kd_tf.export.export_causal_lm`)",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {os.cpu_count()} CPU cores ({platform.machine()}), no GPU, shared with other work; "
        f"load average (1/5/15 min) at the start {load_average()}.",
        "",
    ]
    teacher = load_causal_lm(smollm2_preset_dir())
    student = cut_student(teacher, STUDENT_BLOCKS)
    del teacher
    gc.collect()
    size = model_size(student)
    reviews = load_imdb_corpus(limit=args.reviews)
    train, heldout = reviews.split(0.05, seed=0)
    lines += [
        f"Student: SmolLM2-135M-Instruct's embeddings, blocks {STUDENT_BLOCKS} and final norm "
        f"(`cut_student`), {size['parameters']:,} parameters ({size['float32_bytes'] / 1e6:.1f} MB "
        f"of float32 weights; tied embeddings).",
        "",
    ]
    if args.train_steps:
        seconds, loss = fine_tune(student, train, length, args.train_steps, args.learning_rate)
        lines += [
            f"Fine-tuned (next-token cross-entropy, no teacher) for {args.train_steps} steps of 4 x {length} "
            f"IMDB tokens at Adam lr {args.learning_rate:g} in {seconds:.0f} s; last training loss "
            f"{loss:.3f}. Not a distilled student: only so that perplexity means something.",
            "",
        ]
    else:
        lines += ["Not trained (a cut student's perplexity is in the 100,000s).", ""]
    windows = make_lm_dataset(heldout, student, length, batch_size=4)
    out_dir = tempfile.mkdtemp(prefix="lm_export_")
    shutil.rmtree(out_dir)
    rss_before = memory_mb("VmRSS")
    peak_known = reset_peak_memory()
    start = time.perf_counter()
    report = export_causal_lm(
        student,
        out_dir,
        windows=windows,
        prompts=PROMPTS,
        sequence_length=length,
        max_length=args.max_length,
        max_windows=args.windows,
        verbose=True,
        **({} if args.min_top1_agreement is None else {"min_top1_agreement": args.min_top1_agreement}),
    )
    export_s = time.perf_counter() - start
    export_peak = memory_mb("VmHWM") if peak_known else None
    rss_convert = memory_mb("VmRSS")
    reset_peak_memory()
    start = time.perf_counter()
    convert_causal_lm(student, length, "dynamic_int8")
    convert_s = time.perf_counter() - start
    convert_peak = memory_mb("VmHWM") if peak_known else None

    def peak(value):
        return "n/a" if value is None else f"{value:,.0f} MB"

    lines += [
        f"Export: {export_s:.0f} s in all (two conversions, {report.num_windows} held-out IMDB windows of "
        f"{length} tokens on Keras and on every .tflite, latency runs, serving SavedModel written and "
        f"checked). Process RSS (resident memory) before the export {rss_before:,.0f} MB (TensorFlow, "
        f"the student and its optimizer state loaded), peak during the export {peak(export_peak)}; before "
        f"one standalone dynamic int8 conversion (`convert_causal_lm`, {convert_s:.0f} s) "
        f"{rss_convert:,.0f} MB, peak during it {peak(convert_peak)}.",
        "",
    ]
    rows = []
    for variant, r in report.litert.items():
        rows.append(
            [
                variant,
                f"{r['size_bytes'] / 1e6:.1f}",
                f"{r['convert_s']:.0f}",
                f"{r['max_abs_diff']:.2e}",
                f"{r['relative_diff']:.2e}",
                f"{r['top1_agreement']:.2%}",
                f"{r['perplexity']:,.2f}",
                f"{r['perplexity_change']:+.2%}",
                f"{r['latency_ms']['1']:.0f}",
                f"{r['latency_ms']['2']:.0f}",
            ]
        )
    lines += [
        f"## LiteRT on {report.num_windows} held-out IMDB windows ({report.tokens} labelled tokens)",
        "",
        f"Keras perplexity of the student on the same windows: {report.keras['perplexity']:,.2f}.",
        "",
    ]
    lines += table(
        [
            "variant",
            "size (MB)",
            "convert (s)",
            "max abs diff",
            "relative diff",
            "top-1 agreement",
            "perplexity",
            "perplexity change",
            "ms per forward (1 thread)",
            "ms (2 threads)",
        ],
        rows,
    )
    rows = []
    prompt_ids = np.concatenate([[report.tokenizer["start_token_id"]], tokenize(student, PROMPTS[0])])
    for variant, r in report.litert.items():
        runner = LiteRTCausalLM(os.path.join(out_dir, r["path"]), num_threads=2)
        start = time.perf_counter()
        new = runner.generate(prompt_ids, args.new_tokens, report.tokenizer["end_token_ids"])
        seconds = time.perf_counter() - start
        text = student.preprocessor.tokenizer.detokenize(new.tolist())
        text = text.numpy().decode("utf-8", "replace") if hasattr(text, "numpy") else str(text)
        rows.append([variant, len(new), f"{len(new) / seconds:.1f}", repr(PROMPTS[0]), repr(text)])
    lines += [
        "",
        f"Latency: median batch-1 forward of a full {length}-token window. The .tflite has no KV cache: "
        "a phone app runs one such forward per generated token (`LiteRTCausalLM.generate`):",
        "",
    ]
    lines += table(["variant", "new tokens", "tokens/s (2 threads)", "prompt", "greedy continuation"], rows)
    serving = report.serving
    lines += [
        "",
        f"## Serving SavedModel (greedy, max_length {report.max_length})",
        "",
        f"Same text as the Keras model's greedy `generate` on {serving['text_match']:.0%} of "
        f"{len(serving['prompts'])} prompts; {len(serving['prompts'])} prompts generated in "
        f"{serving['generate_s']:.1f} s (first call, batch {len(serving['prompts'])}).",
        "",
    ]
    lines += table(["prompt", "generated"], [[repr(p), repr(t)] for p, t in zip(PROMPTS, serving["texts"])])
    lines += ["", "## Files", ""]
    lines += table(["file", "MB"], [[f"`{k}`", f"{v / 1e6:.2f}"] for k, v in sorted(report.files.items())])
    lines += [
        "",
        f"Total {time.perf_counter() - started:.0f} s; load average at the end {load_average()}.",
        "",
    ]
    shutil.rmtree(out_dir)
    text = "\n".join(lines)
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output + ".tmp", "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(args.output + ".tmp", args.output)
    print(text)


if __name__ == "__main__":
    main()
