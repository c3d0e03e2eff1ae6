"""Teacher recipes for the demo: test accuracy against the teacher step's time on 2 cores.

Every recipe is `configs/demo.yaml` (all-MiniLM-L6-v2, mean pooling, 2,000 training / 400 validation
reviews, AdamW with warmup and cosine decay) with the teacher settings it had before this study (`BASE`:
every block, 1 epoch, lr 1e-4) and a few `--set` overrides, fine-tuned by kd-tf's own teacher
step (`kd-tf finetune-teacher`). The levers tried buy data per second:

* `teacher.train_top_blocks: N`: only the top N blocks and the head learn, on the frozen lower blocks'
  outputs computed once and reused every epoch (`kd_tf.classify.upper_blocks`), so more epochs fit;
* `teacher.epochs`, `teacher.learning_rate`: what those epochs are spent on;
* `data.seq_length`: more of each review (IMDB reviews average ~300 wordpieces; the demo reads 128).

Each teacher is scored on the demo's held-out test reviews (the same 1,000 texts for every recipe of the
same data split) with 95% paired-bootstrap intervals, and an exact McNemar test against the first recipe
(`kd_tf.classify.statistics`). Time is the teacher step's wall time from its step record, plus this
process's CPU seconds while it ran (what a busy machine distorts least).

Usage:
    python benchmarks/teacher_recipes.py        # every recipe, in order; a rerun reuses finished ones
    python benchmarks/teacher_recipes.py --recipes all-1ep top2-3ep

Writes benchmarks/results/teacher_recipes.{md,json,png} after every recipe. Run folders go to --workdir.
"""

import argparse
import json
import os
import resource
import sys
import time
import warnings

import numpy as np

from kd_tf import cli
from kd_tf.classify import predict_logits
from kd_tf.classify.statistics import PairedBootstrap, mcnemar_test
from kd_tf.pipeline import open_run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "demo.yaml")
RESULTS = os.path.join(ROOT, "benchmarks", "results", "teacher_recipes")

# The demo's teacher settings before this study, under every recipe: later edits of configs/demo.yaml
# do not change what a recipe measures.
BASE = {
    "data.train_size": 2000,
    "data.transfer_size": 0,
    "data.seq_length": 128,
    "teacher.train_top_blocks": "null",
    "teacher.epochs": 1,
    "teacher.learning_rate": 1e-4,
}

# name -> (what it is, --set overrides of BASE). The first is the reference of the tests.
RECIPES = {
    "all-1ep": ("every block, 1 epoch (the demo before this study)", {"teacher.epochs": 1}),
    "top2-3ep": ("top 2 of 6 blocks, 3 epochs", {"teacher.train_top_blocks": 2, "teacher.epochs": 3}),
    "all-2ep": ("every block, 2 epochs", {"teacher.epochs": 2}),
    "top2-3ep-lr3e-4": (
        "top 2 of 6 blocks, 3 epochs, lr 3e-4",
        {"teacher.train_top_blocks": 2, "teacher.epochs": 3, "teacher.learning_rate": 3e-4},
    ),
    "all-1ep-4k": (
        "every block, 1 epoch, 4,000 training reviews",
        {"teacher.epochs": 1, "data.train_size": 4000},
    ),
    "top2-3ep-4k": (
        "top 2 of 6 blocks, 3 epochs, 4,000 training reviews",
        {"teacher.train_top_blocks": 2, "teacher.epochs": 3, "data.train_size": 4000},
    ),
    "head-10ep": (
        "head only (encoder frozen), 10 epochs, lr 1e-3",
        {"teacher.train_top_blocks": 0, "teacher.epochs": 10, "teacher.learning_rate": 1e-3},
    ),
    "top3-2ep": ("top 3 of 6 blocks, 2 epochs", {"teacher.train_top_blocks": 3, "teacher.epochs": 2}),
    "top2-2ep-seq256": (
        "top 2 of 6 blocks, 2 epochs, 256 wordpieces",
        {"teacher.train_top_blocks": 2, "teacher.epochs": 2, "data.seq_length": 256},
    ),
}


def log(message):
    print(f"[teacher_recipes] {message}", flush=True)


def cpu_seconds():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_recipe(name, workdir):
    """Fine-tunes (or reuses) the teacher of recipe `name`; returns its record, test logits and labels."""
    overrides = {"run_name": name, "output_dir": workdir, **BASE, **RECIPES[name][1]}
    args = ["finetune-teacher", "--config", CONFIG]
    for key, value in overrides.items():
        args += ["--set", f"{key}={value}"]
    run_dir = os.path.join(workdir, name)
    timing_path = os.path.join(run_dir, "recipe_timing.json")
    finished = os.path.exists(os.path.join(run_dir, "steps", "teacher.json"))
    cpu, load = cpu_seconds(), os.getloadavg()[0]
    if cli.main(args) != 0:
        raise SystemExit(f"recipe {name}: kd-tf {' '.join(args)} failed (see above).")
    if not finished:  # timed now; a reused teacher keeps the timing of the run that trained it
        with open(timing_path, "w") as f:
            json.dump({"cpu_seconds": cpu_seconds() - cpu, "load_average_before": load}, f)
    with open(os.path.join(run_dir, "steps", "teacher.json")) as f:
        record = json.load(f)
    with open(timing_path) as f:
        record.update(json.load(f))
    run = open_run(run_dir)
    logits, labels = predict_logits(
        run.load_model("teacher"), run.dataset(run.splits["test"], bucketing=False)
    )
    return record, logits, labels


def summarize(records, logits, labels, resamples=2000):
    """The rows of the results table: accuracy with intervals, McNemar vs the first recipe, time."""
    names = list(records)
    boot = PairedBootstrap(labels, {n: logits[n] for n in names}, num_classes=2, resamples=resamples, seed=0)
    rows = []
    for name in names:
        test = mcnemar_test(labels, logits[name], logits[names[0]]) if name != names[0] else None
        r = records[name]
        rows.append(
            {
                "recipe": name,
                "what": RECIPES[name][0],
                "overrides": RECIPES[name][1],
                "test_accuracy": boot.estimates[name]["accuracy"],
                "test_ci": boot.interval(name),
                "difference_ci": boot.difference_interval(name, names[0]) if test else None,
                "mcnemar_p": test.p_value if test else None,
                "best_val_accuracy": r["best_val_accuracy"],
                "best_epoch": r["best_epoch"],
                "step_seconds": r["seconds"],
                "training_seconds": r["training_seconds"],
                "cpu_seconds": r["cpu_seconds"],
                "load_average_before": r["load_average_before"],
            }
        )
    return {"test_examples": int(len(labels)), "bootstrap": boot.settings(), "rows": rows}


def render(result):
    """The markdown table of `summarize`'s result."""
    lines = [
        "# Teacher recipes for the demo (all-MiniLM-L6-v2 on 2,000 IMDB reviews)",
        "",
        f"`python benchmarks/teacher_recipes.py` on {result['machine']}; test set: the demo's "
        f"{result['test_examples']} held-out reviews; 95% percentile bootstrap intervals "
        f"({result['bootstrap']['resamples']} resamples), exact McNemar against "
        f"`{result['rows'][0]['recipe']}`.",
        "",
        "| recipe | what | test accuracy (95% CI) | vs first (95% CI), McNemar p | best val (epoch) | "
        "teacher step wall s | CPU s | load before |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        low, high = r["test_ci"]
        vs = "—"
        if r["difference_ci"]:
            d = r["test_accuracy"] - result["rows"][0]["test_accuracy"]
            low_d, high_d = r["difference_ci"]
            vs = f"{d:+.3f} ({low_d:+.3f}, {high_d:+.3f}), p {r['mcnemar_p']:.3g}"
        lines.append(
            f"| `{r['recipe']}` | {r['what']} | {r['test_accuracy']:.3f} ({low:.3f}–{high:.3f}) | {vs} | "
            f"{r['best_val_accuracy']:.3f} ({r['best_epoch']}) | {r['step_seconds']:.0f} | "
            f"{r['cpu_seconds']:.0f} | {r['load_average_before']:.1f} |"
        )
    lines += [
        "",
        "Wall time is the whole teacher step (data, model load, the frozen blocks' pass, training, saving); "
        "CPU s is this process's CPU time while the step ran (2 cores: at most twice the wall time).",
        "",
        "![accuracy against time](teacher_recipes.png)",
        "",
    ]
    return "\n".join(lines)


def plot(result, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in result["rows"]:
        low, high = r["test_ci"]
        acc = r["test_accuracy"]
        ax.errorbar(
            r["step_seconds"], acc, yerr=[[acc - low], [high - acc]], fmt="o", capsize=4, label=r["recipe"]
        )
    ax.axhline(0.85, color="gray", linestyle="--", linewidth=1, label="target 0.85")
    ax.set_xlabel("teacher step wall time on 2 cores (s)")
    ax.set_ylabel("test accuracy (95% CI)")
    ax.set_title("Demo teacher recipes")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipes", nargs="+", choices=sorted(RECIPES), default=list(RECIPES))
    parser.add_argument("--workdir", default=os.path.join(ROOT, "saved_models", "teacher_recipes"))
    parser.add_argument("--out", default=RESULTS, help="Results path without extension (.md, .json, .png).")
    parser.add_argument("--render", action="store_true", help="Only redraw the .md and .png from the .json.")
    args = parser.parse_args()
    if args.render:
        with open(args.out + ".json") as f:
            result = json.load(f)
        with open(args.out + ".md", "w") as f:
            f.write(render(result))
        return plot(result, args.out + ".png")
    warnings.filterwarnings("ignore", message="Your input ran out of data")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    records, logits, labels_by_length = {}, {}, {}
    for name in args.recipes:
        start = time.perf_counter()
        log(f"{name}: {RECIPES[name][0]}")
        record, recipe_logits, labels = run_recipe(name, os.path.abspath(args.workdir))
        records[name], logits[name] = record, recipe_logits
        labels_by_length.setdefault(len(labels), labels)
        if not np.array_equal(labels_by_length[len(labels)], labels):
            raise SystemExit(f"recipe {name} was scored on other test texts; the table needs the same ones.")
        result = summarize(records, logits, labels)
        result["machine"] = f"{os.cpu_count()} cores"
        with open(args.out + ".json", "w") as f:
            json.dump(result, f, indent=2)
        with open(args.out + ".md", "w") as f:
            f.write(render(result))
        plot(result, args.out + ".png")
        log(
            f"{name}: test accuracy {result['rows'][-1]['test_accuracy']:.3f} "
            f"({time.perf_counter() - start:.0f} s)"
        )
    print(render(result))


if __name__ == "__main__":
    sys.exit(main())
