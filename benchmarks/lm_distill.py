"""kd-tf against keras.distillation distilling a causal LM: time, memory and perplexity on the same work.

The SmolLM2-135M-Instruct teacher (`kd_tf.lm.smollm2_preset_dir`), a student cut to 6 of its 30 blocks
(`cut_student`, blocks 0, 6, 12, 18, 24, 29 as `configs/lm_demo.yaml`), and windows of 128 tokens cut
from whole IMDB reviews (`lm_windows(..., packing=False)`: each review in its own windows, the last one
padded, so padding is real). Both tools read the same windows in the same order (shuffled every epoch
with the same seed), start from the same student weights, use Adam at the same learning rate for the
same epochs, alpha = 0 (distillation alone) and T = 1:

- `kd-tf`: `kd_tf.lm.distill_causal_lm` with a sparse teacher cache (top-16 ids + 48 tokens drawn from
  the teacher's tail, as `configs/lm_demo.yaml`), built in a fresh folder inside the timed call; the
  loss counts only real tokens (the windows' sample weights);
- `keras.distillation`: `keras.distillation.Distiller` with `LogitsDistillation(temperature=1,
  loss=keras.losses.KLDivergence())` (KL of the full 49,152-token softmaxes; its default
  `loss="kl_divergence"` applies KL to the logits themselves, see `docs/distiller.md`), the live teacher
  run at every step; it takes no sample weights, so padded positions count in its loss.

Each tool runs in its own process (so its peak resident memory is its own). Measured per tool: wall
seconds of the whole call (set-up, cache build, tracing and `fit`), real tokens per second (learnt
tokens x epochs / wall s), the last epoch's seconds, peak resident memory while it runs (sampled every
20 ms; the process holds the teacher in both), and the student's held-out perplexity
(`kd_tf.lm.perplexity`, windows of 128 tokens every 64, over held-out reviews packed as in
`kd_tf.pipeline.causal_lm.packed_ids`). Results go to `benchmarks/results/lm_distill.md` (and `.json`).

Usage (from the repository root; ~6 min on 2 shared CPU cores with the defaults):
    .venv/bin/python benchmarks/lm_distill.py [--windows 64] [--epochs 2] [--batch-size 4]
"""

import argparse
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from distill_vs_peers import PeakRSS  # noqa: E402
from lm_sparse_cache import EpochTimes, load_average, table, write_atomic  # noqa: E402

from kd_tf.json_files import write_json  # noqa: E402
from kd_tf.lm import (  # noqa: E402
    cut_student,
    distill_causal_lm,
    lm_windows,
    load_causal_lm,
    load_imdb_corpus,
    perplexity,
    smollm2_preset_dir,
)
from kd_tf.pipeline.causal_lm import packed_ids  # noqa: E402

RESULTS = os.path.join(HERE, "results")
ARMS = ("kd-tf", "keras.distillation")


class SetupTimes(EpochTimes):
    """`EpochTimes`, plus the seconds from `start` to the first step (set-up, cache build)."""

    def __init__(self, start):
        super().__init__()
        self.start = start

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        self.setup_s = time.perf_counter() - self.start


def prepare(args):
    """The teacher, the training windows (whole reviews, padded) and the held-out token ids."""
    teacher = load_causal_lm(smollm2_preset_dir())
    train, heldout = load_imdb_corpus(limit=args.reviews).split(args.heldout_fraction, seed=0)
    windows = lm_windows(train, teacher, args.length, packing=False).take(args.windows)
    heldout_ids = packed_ids(heldout, teacher)[: args.heldout_tokens + 1]
    return teacher, windows, heldout_ids


def window_stats(windows):
    """Positions, real (learnt) tokens and a fingerprint of the windows, to check both tools read them."""
    x, _, weights = next(iter(windows.batch(int(windows.cardinality()))))
    ids = x["token_ids"].numpy()
    return dict(
        windows=int(ids.shape[0]),
        positions=int(ids.size),
        real_tokens=int(weights.numpy().sum()),
        input_padding=int((~x["padding_mask"].numpy()).sum()),
        fingerprint=int(np.sum(ids.astype(np.int64) * np.arange(1, ids.size + 1).reshape(ids.shape)) % 2**61),
    )


def train_kd_tf(args, teacher, student, windows, callbacks):
    """kd-tf: the sparse cache (built in a fresh folder, inside the timed call), loss over real tokens."""
    with tempfile.TemporaryDirectory(prefix="lm_distill_cache_") as cache_dir:
        history = distill_causal_lm(
            teacher,
            student,
            windows,
            batch_size=args.batch_size,
            epochs=args.epochs,
            targets="sparse",
            k=args.k,
            mode="top_k",
            samples=args.samples,
            optimizer=keras.optimizers.Adam(args.lr),
            cache_dir=cache_dir,
            seed=args.seed,
            callbacks=callbacks,
            verbose=2,
        )
    return history.history


def train_keras(args, teacher, student, windows, callbacks):
    """keras.distillation: the live teacher every step, KL over every position (no sample weights)."""
    count = int(windows.cardinality())
    data = (
        windows.shuffle(count, seed=args.seed, reshuffle_each_iteration=True)  # distill_causal_lm's order
        .batch(args.batch_size)
        .map(lambda x, labels, weights: (x, labels))
        .prefetch(tf.data.AUTOTUNE)
    )
    distiller = keras.distillation.Distiller(
        teacher=teacher,
        student=student,
        distillation_losses=keras.distillation.LogitsDistillation(
            temperature=1.0, loss=keras.losses.KLDivergence()
        ),
        student_loss_weight=0.0,
    )
    distiller.compile(optimizer=keras.optimizers.Adam(args.lr), loss="sparse_categorical_crossentropy")
    return distiller.fit(data, epochs=args.epochs, callbacks=callbacks, verbose=2).history


def run_arm(args):
    """One tool, in this process: trains, measures, writes `args.child_json`."""
    load = load_average()
    teacher, windows, heldout_ids = prepare(args)
    stats = window_stats(windows)
    keras.utils.set_random_seed(args.seed)
    student = cut_student(teacher, args.blocks)
    train = train_kd_tf if args.arm == "kd-tf" else train_keras
    rss_before = PeakRSS.current()
    start = time.perf_counter()
    times = SetupTimes(start)
    with PeakRSS() as memory:
        history = train(args, teacher, student, windows, [times])
    wall_s = time.perf_counter() - start
    result = dict(
        arm=args.arm,
        load_start=load,
        wall_s=wall_s,
        setup_s=times.setup_s,
        epoch_s=times.seconds,
        tokens_per_s=stats["real_tokens"] * args.epochs / wall_s,
        last_epoch_tokens_per_s=stats["real_tokens"] / times.seconds[-1],
        rss_before=rss_before,
        peak_rss=memory.peak,
        process_peak_rss=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        perplexity=perplexity(student, heldout_ids, args.length, args.length // 2),
        history={name: [float(v) for v in values] for name, values in history.items()},
        **stats,
    )
    print(json.dumps({k: v for k, v in result.items() if k != "history"}), flush=True)
    write_json(args.child_json, result)


def report(args, results, command, started):
    """Writes `args.output` (markdown) and its `.json`."""
    runs = {run["arm"]: run for run in results["runs"]}
    first = results["runs"][0]
    lines = [
        "# kd-tf against keras.distillation: distilling a causal LM",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {os.cpu_count()} CPU cores ({platform.machine()}), no GPU, shared with other work; load "
        f"average (1/5/15 min) at the start {results['load_start']}, now {load_average()}.",
        "",
        f"Setup: teacher SmolLM2-135M-Instruct ({results['teacher_parameters']:,} parameters); student cut "
        f"to blocks {args.blocks} ({results['student_parameters']:,} parameters); {first['windows']} windows "
        f"of {args.length} tokens cut from whole IMDB reviews, each review padded ({first['positions']:,} "
        f"positions, {first['real_tokens']:,} real tokens to learn: "
        f"{100 * (1 - first['real_tokens'] / first['positions']):.0f}% of the positions are padding) x "
        f"{args.epochs} epochs, batch {args.batch_size}, Adam lr {args.lr}, alpha 0, T 1, seed {args.seed}. "
        "Same windows in the same order, same initial student, one process per tool. Held-out: "
        f"{args.heldout_tokens:,} tokens of other reviews (`kd_tf.lm.perplexity`, window {args.length}, "
        f"stride {args.length // 2}): teacher {results['teacher_perplexity']:.1f}, the cut student before "
        f"training {results['initial_perplexity']:,.0f}.",
        "",
    ]
    rows = []
    for arm in ARMS:
        run = runs.get(arm)
        if run is None:
            continue
        rows.append(
            [
                arm,
                f"{run['wall_s']:.0f}",
                f"{run['setup_s']:.0f}",
                f"{run['epoch_s'][-1]:.0f}",
                f"{run['tokens_per_s']:.0f}",
                f"{run['last_epoch_tokens_per_s']:.0f}",
                f"{run['peak_rss'] / 2**30:.2f}",
                f"{(run['peak_rss'] - run['rss_before']) / 2**30:.2f}",
                f"{run['perplexity']:.1f}",
                run["load_start"],
            ]
        )
    header = [
        "tool",
        "wall s",
        "set-up s",
        "last epoch s",
        "real tokens/s",
        "real tokens/s (last epoch)",
        "peak RSS GiB",
        "above start GiB",
        "held-out perplexity",
        "load at start",
    ]
    lines += table(header, rows)
    lines += [
        "",
        "Wall s: the whole call (kd-tf: `distill_causal_lm`, its sparse cache built in a fresh folder; "
        "keras.distillation: `Distiller`, `compile`, `fit`). Set-up s: from the call to the first step "
        "(kd-tf's cache build is in it). Real tokens/s: learnt tokens x epochs / wall s. Peak RSS: the "
        "process's resident memory while the tool runs (teacher included in both); above start: less the "
        "resident memory just before the call.",
    ]
    if len(runs) == len(ARMS):
        kd, peer = runs["kd-tf"], runs["keras.distillation"]
        lines += [
            "",
            f"kd-tf: {kd['tokens_per_s'] / peer['tokens_per_s']:.2f}x keras.distillation's real tokens/s "
            f"over the whole call ({kd['last_epoch_tokens_per_s'] / peer['last_epoch_tokens_per_s']:.2f}x "
            f"in the last epoch), peak RSS {kd['peak_rss'] / peer['peak_rss']:.2f}x; held-out perplexity "
            f"{kd['perplexity']:.1f} against {peer['perplexity']:.1f} for keras.distillation, whose loss "
            "counts the padded positions.",
        ]
    lines += ["", f"Total {time.perf_counter() - started:.0f} s.", ""]
    write_atomic(args.output, "\n".join(lines))
    write_json(os.path.splitext(args.output)[0] + ".json", results)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reviews", type=int, default=300)
    parser.add_argument("--heldout-fraction", type=float, default=0.1)
    parser.add_argument("--windows", type=int, default=64, help="training windows (x length positions)")
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--heldout-tokens", type=int, default=2048)
    parser.add_argument("--blocks", type=int, nargs="+", default=[0, 6, 12, 18, 24, 29])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--k", type=int, default=16)
    parser.add_argument("--samples", type=int, default=48)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    parser.add_argument("--output", default=os.path.join(RESULTS, "lm_distill.md"))
    parser.add_argument("--arm", choices=ARMS, help=argparse.SUPPRESS)
    parser.add_argument("--child-json", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.arm:
        return run_arm(args)
    started = time.perf_counter()
    command = shlex.join([".venv/bin/python", "benchmarks/lm_distill.py", *sys.argv[1:]])
    results = dict(load_start=load_average(), args=vars(args), runs=[])
    with tempfile.TemporaryDirectory(prefix="lm_distill_") as folder:
        for arm in args.arms:
            path = os.path.join(folder, "run.json")
            subprocess.run(
                [
                    sys.executable,
                    os.path.abspath(__file__),
                    *sys.argv[1:],
                    "--arm",
                    arm,
                    "--child-json",
                    path,
                ],
                check=True,
            )
            with open(path, encoding="utf-8") as f:
                results["runs"].append(json.load(f))
    fingerprints = {run["fingerprint"] for run in results["runs"]}
    if len(fingerprints) != 1:
        raise RuntimeError(f"The tools read different windows (fingerprints {fingerprints}); rerun.")
    teacher, _, heldout_ids = prepare(args)
    initial = cut_student(teacher, args.blocks)
    results.update(
        teacher_parameters=int(teacher.count_params()),
        student_parameters=int(initial.count_params()),
        teacher_perplexity=perplexity(teacher, heldout_ids, args.length, args.length // 2),
        initial_perplexity=perplexity(initial, heldout_ids, args.length, args.length // 2),
    )
    report(args, results, command, started)
    print(open(args.output, encoding="utf-8").read())


if __name__ == "__main__":
    main()
