"""Benchmark of the causal-LM wing's data and evaluation on the real SmolLM2-135M-Instruct teacher.

Measures on this machine (CPU):

- the teacher's sliding-window perplexity (`kd_tf.lm.perplexity`) on the committed WikiText-2 test
  slice (`tests/data/lm_wikitext2_test_head.txt`, 645 tokens) at windows 128 and 512, each with
  stride = window and stride = window / 2; with `--wikitext-tokens N`, also on the first N tokens of
  the full WikiText-2 raw test split from `kd_tf.paths.default_data_dir()` (skipped when absent);
- its batch-1 greedy generation speed with KerasHub's KV cache (`kd_tf.lm.generation_speed`):
  prompt processing and decoding apart, with XLA (KerasHub's default `jit_compile`) and without;
- its size (`kd_tf.lm.model_size`);
- the token-window pipeline (`kd_tf.lm.make_lm_dataset`) on IMDB reviews: tokens per second;
- a student cut from the teacher (10 of its 30 blocks, not retrained) against the teacher on held-out
  IMDB windows (`kd_tf.lm.token_metrics`) and on fixed prompts (`kd_tf.lm.side_by_side`).

Usage (from the repository root):
    .venv/bin/python benchmarks/lm_eval.py [--wikitext-tokens 0] [--reviews 2000]

It writes benchmarks/lm_eval_results.md (or --output) and prints it.
"""

import argparse
import os
import platform
import shlex
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from kd_tf.lm import (  # noqa: E402
    cut_student,
    generation_speed,
    load_causal_lm,
    load_imdb_corpus,
    make_lm_dataset,
    model_size,
    perplexity,
    side_by_side,
    smollm2_preset_dir,
    token_metrics,
    tokenize,
)
from kd_tf.paths import default_data_dir  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
SLICE = os.path.join(HERE, os.pardir, "tests", "data", "lm_wikitext2_test_head.txt")
STUDENT_BLOCKS = [0, 3, 6, 9, 12, 15, 18, 21, 24, 29]
PROMPTS = ["The capital of France is", "My favourite film is", "The weather today"]


def load_average():
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())


def table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--wikitext-tokens", type=int, default=0)
    parser.add_argument("--reviews", type=int, default=2000)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--output", default=os.path.join(HERE, "lm_eval_results.md"))
    args = parser.parse_args()
    started, lines = time.perf_counter(), []
    command = shlex.join([".venv/bin/python", "benchmarks/lm_eval.py", *sys.argv[1:]])
    lines += [
        "# Causal-LM evaluation benchmark (`kd_tf.lm`)",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {os.cpu_count()} CPU cores ({platform.machine()}), no GPU, shared with other work; "
        f"load average (1/5/15 min) at the start {load_average()}.",
        "",
    ]
    teacher = load_causal_lm(smollm2_preset_dir())
    start = time.perf_counter()
    with open(SLICE, encoding="utf-8") as f:
        ids = tokenize(teacher, f.read())
    lines += [f"Tokenizer traced and slice tokenized in {time.perf_counter() - start:.1f} s.", ""]

    rows = []
    texts = [("committed slice (tests/data)", ids)]
    wikitext = os.path.join(default_data_dir(), "text", "wikitext2_raw_test.txt")
    if args.wikitext_tokens and not os.path.isfile(wikitext):
        lines += [f"(No {wikitext}: the full test split is skipped.)", ""]
    elif args.wikitext_tokens:
        with open(wikitext, encoding="utf-8") as f:
            full = tokenize(teacher, f.read())
        texts.append((f"full test split ({len(full):,} tokens), its start", full[: args.wikitext_tokens]))
    for name, text_ids in texts:
        for window, stride in [(128, 128), (128, 64), (512, 512), (512, 256)]:
            start = time.perf_counter()
            value = perplexity(teacher, text_ids, window, stride)
            seconds = time.perf_counter() - start
            rows.append([name, f"{len(text_ids):,}", window, stride, f"{value:.2f}", f"{seconds:.1f}"])
            print(rows[-1], flush=True)
    lines += ["## Teacher perplexity on WikiText-2 test (sliding window)", ""]
    lines += table(["text", "tokens", "window", "stride", "perplexity", "seconds"], rows) + [""]

    size = model_size(teacher)
    lines += [
        "## Teacher size and batch-1 generation",
        "",
        f"{size['parameters']:,} parameters, {size['float32_bytes'] / 1e6:.1f} MB of float32 weights.",
        "",
    ]
    rows = []
    for label, jit in (("XLA (KerasHub default)", True), ("no XLA", False)):
        teacher.jit_compile = jit
        speed = generation_speed(teacher, PROMPTS[0], new_tokens=args.new_tokens, runs=3)
        rows.append(
            [
                label,
                speed["prompt_tokens"],
                speed["new_tokens"],
                f"{speed['compile_s']:.1f}",
                f"{speed['generate_s']:.2f}",
                f"{speed['tokens_per_s']:.1f}",
                f"{speed['prefill_s']:.3f}",
                f"{speed['decode_tokens_per_s']:.1f}",
            ]
        )
        print(rows[-1], flush=True)
    teacher.jit_compile = True
    lines += table(
        [
            "generate",
            "prompt tokens",
            "new tokens",
            "first call (compile) s",
            "generate s",
            "tokens/s",
            "prefill s",
            "decode tokens/s",
        ],
        rows,
    )
    lines += ["", f"Load average after generation: {load_average()}.", ""]

    reviews = load_imdb_corpus(limit=args.reviews)
    start = time.perf_counter()
    batches = make_lm_dataset(reviews, teacher, 128, batch_size=8, shuffle=True, seed=0)
    build = time.perf_counter() - start
    tokens = int(batches.cardinality()) * 8 * 128
    start = time.perf_counter()
    for _ in batches:
        pass
    epoch = time.perf_counter() - start
    lines += [
        "## Token windows from IMDB reviews",
        "",
        f"{len(reviews):,} reviews -> {int(batches.cardinality()):,} batches of 8 x 128 tokens: built "
        f"(tokenized, packed) in {build:.1f} s ({tokens / build:,.0f} tokens/s), one epoch read in "
        f"{epoch:.2f} s.",
        "",
    ]

    train, heldout = reviews.split(0.05, seed=0)
    heldout_ds = make_lm_dataset(heldout.subset(range(8)), teacher, 128, batch_size=4).take(4)
    student = cut_student(teacher, STUDENT_BLOCKS)
    start = time.perf_counter()
    metrics = token_metrics({"teacher": teacher, "student": student}, heldout_ds, reference="teacher")
    seconds = time.perf_counter() - start
    rows = [
        [
            label,
            f"{model_size(m)['parameters'] / 1e6:.1f} M",
            f"{metrics[name]['perplexity']:,.1f}",
            f"{metrics[name]['accuracy']:.3f}",
            f"{metrics[name].get('agreement', 1.0):.3f}",
            metrics[name]["tokens"],
        ]
        for name, label, m in (
            ("teacher", "teacher", teacher),
            ("student", "student (10 blocks cut, not retrained)", student),
        )
    ]
    lines += ["## Teacher and cut student on held-out IMDB windows", ""]
    lines += table(["model", "parameters", "perplexity", "top-1 accuracy", "agreement", "tokens"], rows)
    lines += ["", f"({seconds:.1f} s for both models.)", ""]
    rows = side_by_side({"teacher": teacher, "student": student}, PROMPTS, new_tokens=16)
    lines += ["## Greedy continuations (16 tokens)", ""]
    lines += table(
        ["prompt", "teacher", "student"],
        [[repr(r["prompt"]), repr(r["teacher"]), repr(r["student"])] for r in rows],
    )
    lines += [
        "",
        f"Total {time.perf_counter() - started:.0f} s; load average at the end {load_average()}.",
        "",
    ]
    text = "\n".join(lines)
    with open(args.output, "w", encoding="utf-8") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
