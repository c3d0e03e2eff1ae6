"""How much of a student's dynamic-int8 error is its word-embedding table's, quantized with one scale?

TFLite's dynamic-range quantization (`kd_tf.export`'s `dynamic_int8` variant) stores the dense kernels with
one scale per output channel but the word-embedding table of a `GATHER` with a single scale for the whole
table, so rows with small values lose most of their precision. This script isolates that step in Keras: it
rounds only the distilled student's word-embedding table to int8 (symmetric, one scale for the table, as
the converter does; then one scale per row, what `kd_tf.export.int8_rows` stores), and compares the labels and
probabilities on the run's test reviews with the float student's.

Usage:
    python benchmarks/int8_embedding.py saved_models/demo saved_models/demo_transfer3000

Writes benchmarks/results/int8_embedding.{md,json}.
"""

import argparse
import json
import os
import sys

import numpy as np

from kd_tf.classify import agreement, find_encoder, predict_logits
from kd_tf.pipeline import open_run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results", "int8_embedding")


def round_to_int8(table, per_row):
    """`table` rounded to symmetric int8 and back: one scale for the table, or one per row."""
    peak = np.abs(table).max(axis=1, keepdims=True) if per_row else np.abs(table).max()
    scale = np.maximum(peak, 1e-12) / 127.0
    return np.clip(np.round(table / scale), -127, 127) * scale


def softmax(logits):
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def measure(run_dir):
    """The float student's test predictions against those with its embedding table rounded to int8."""
    run = open_run(run_dir)
    student = run.load_model("student")
    test = run.dataset(run.splits["test"], role="student", bucketing=False)
    reference, _ = predict_logits(student, test)
    (table,) = [v for v in find_encoder(student).saved_variables if "word_embeddings" in v.name]
    original = table.numpy()
    row = {"run": os.path.basename(os.path.abspath(run_dir)), "texts": int(len(reference))}
    row["rows"], row["hidden"] = (int(n) for n in original.shape)
    row["table_peak"] = float(np.abs(original).max())
    row["median_row_peak"] = float(np.median(np.abs(original).max(axis=1)))
    for name, per_row in (("per_table", False), ("per_row", True)):
        table.assign(round_to_int8(original, per_row))
        logits, _ = predict_logits(student, test)
        table.assign(original)
        row[name] = {
            "label_agreement": float(agreement(logits, reference)),
            "max_abs_prob_diff": float(np.abs(softmax(logits) - softmax(reference)).max()),
        }
    return row


def render(rows):
    lines = [
        "# The word-embedding table's share of a student's int8 error",
        "",
        "`python benchmarks/int8_embedding.py "
        + " ".join(f"saved_models/{r['run']}" for r in rows)
        + "`: only",
        "the distilled student's word-embedding table rounded to symmetric int8, every other weight float32;",
        "label agreement and largest probability difference against the float student on the run's test "
        "reviews.",
        "",
        "| run | test texts | table (rows x hidden) | largest value: table / median row "
        "| one scale per table: agreement, max diff | one scale per row: agreement, max diff |",
        "|---|---:|---|---|---|---|",
    ]
    for r in rows:
        t, w = r["per_table"], r["per_row"]
        lines.append(
            f"| `{r['run']}` | {r['texts']} | {r['rows']:,} x {r['hidden']} | "
            f"{r['table_peak']:.3f} / {r['median_row_peak']:.3f} | "
            f"{t['label_agreement']:.2%}, {t['max_abs_prob_diff']:.4f} | "
            f"{w['label_agreement']:.2%}, {w['max_abs_prob_diff']:.4f} |"
        )
    lines += [
        "",
        "One scale for the table is what TFLite's dynamic-range quantization gives a `GATHER`'s table; one",
        "scale per row is what kd-tf's `dynamic_int8` files store (`kd_tf.export.int8_rows`; their",
        "`export_report.md` gives the whole file's differences).",
        "",
    ]
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", help="Finished run folders (e.g. saved_models/demo).")
    parser.add_argument("--out", default=RESULTS, help="Results path without extension (.md, .json).")
    args = parser.parse_args()
    rows = [measure(run_dir) for run_dir in args.runs]
    with open(args.out + ".json", "w") as f:
        json.dump(rows, f, indent=2)
    with open(args.out + ".md", "w") as f:
        f.write(render(rows))
    print(render(rows))


if __name__ == "__main__":
    sys.exit(main())
