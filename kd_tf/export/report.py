"""What an export wrote and how each file compares with the Keras student: `ExportReport`."""

from __future__ import annotations

import dataclasses
import json
import os

VARIANTS = ("float32", "float16", "dynamic_int8", "full_int8")
"""TFLite variants: float32 weights; float16 weights; int8 weights with float
activations (dynamic range); int8 weights and activations calibrated on text
(full integer, float32 probabilities out)."""

GATED_VARIANTS = ("float16", "dynamic_int8")
REPORT_JSON = "export_report.json"
REPORT_MARKDOWN = "export_report.md"
LATENCY_THREADS = (1, 2)


class ExportError(RuntimeError):
    """An export was refused or failed a check; the message says what to do.

    Attributes:
        report: the `ExportReport` measured so far when a verification
            failed (None when the export was refused before writing).
    """

    def __init__(self, message, report=None):
        super().__init__(message)
        self.report = report


class ReportFiles:
    """What every export report shares: checks that record failures, and its two files.

    A dataclass that inherits this is saved as `export_report.json` and
    `export_report.md` in its folder, and loaded back from either path; it
    must have a `failures` list and a `to_markdown()` method.
    """

    @property
    def passed(self):
        """True when every check passed."""
        return not self.failures

    def check(self, ok, message):
        """Records `message` as a failure unless `ok`."""
        if not ok:
            self.failures.append(message)

    def to_dict(self):
        """The report as JSON-ready dict."""
        return dataclasses.asdict(self)

    @classmethod
    def load(cls, path):
        """Reads a report written by `save` (a JSON file or its folder).

        Example:
        ```python
        ExportReport.load("export").label_names  # ['negative', 'positive']
        ```
        """
        path = os.fspath(path)
        if os.path.isdir(path):
            path = os.path.join(path, REPORT_JSON)
        with open(path) as f:
            values = json.load(f)
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})

    def save(self, folder):
        """Writes `export_report.json` and `export_report.md` into `folder`.

        Returns:
            The paths, as a dict with `json` and `markdown`.
        """
        paths = {"json": os.path.join(folder, REPORT_JSON), "markdown": os.path.join(folder, REPORT_MARKDOWN)}
        with open(paths["json"], "w") as f:
            json.dump(self.to_dict(), f, indent=1)
        with open(paths["markdown"], "w") as f:
            f.write(self.to_markdown())
        return paths


# ----------------------------------------------------------------------------
# The report.
# ----------------------------------------------------------------------------
@dataclasses.dataclass
class ExportReport(ReportFiles):
    """What an export wrote and how each file compares with the Keras student.

    Attributes:
        out_dir: the export folder.
        seq_length: fixed sequence length of the .tflite inputs and the
            serving preprocessing.
        label_names: class names in output order.
        num_samples: number of texts every form was compared on.
        files: dict from each file's path (relative to `out_dir`) to bytes.
        serving: `max_abs_diff` and `label_agreement` of the serving
            SavedModel against the Keras student.
        hub_encoder: `max_abs_diff` of the TF-Hub-format encoder's
            `sequence_output` against the student's encoder.
        tflite: dict by variant: `path`, `size_bytes`, `operators`, LiteRT's
            `max_abs_diff` and `label_agreement` (inputs tokenized by the
            student's preprocessor), `flip_max_margin` (the largest Keras
            top-1 minus top-2 probability among texts whose label changed:
            small means only borderline texts flip), `latency_ms` by thread
            count (median,
            batch 1), and `mediapipe`: TextClassifier on the texts folded by
            `normalize_for_mobile` (`max_abs_diff`, `label_agreement`) and on
            the raw texts (`raw_max_abs_diff`, `raw_label_agreement`,
            `texts_changed_by_folding`: texts the fold changes beyond the ASCII
            lower-casing MediaPipe does itself); also `model_bytes` (the
            file without its MediaPipe metadata, what a like-for-like size
            compares) and `cpu_ms` (CPU time at 1 thread). Latencies come
            from `kd_tf.export.litert.interleaved_latency_ms`, the variants
            (and the teacher's files) taking turns. `word_embeddings`: how the
            file holds the word-embedding table (`"int8_rows"`: int8 with one
            scale per row; `"float"`: as the variant converts floats).
        teacher: the teacher's like-for-like figures when a teacher was
            given: `tflite` (by variant: `size_bytes`, `latency_ms`,
            `cpu_ms`, timed in the same turns as the student's files) and
            `source` (what the files were converted from).
        like_for_like: `kd_tf.classify.evaluate.like_for_like(teacher,
            student)`: size ratio and speed-ups by variant, only between
            files of the same variant.
        calibration: where the full int8 calibration texts came from
            (`source`, `texts`) and the `rows` they were joined into (see
            `kd_tf.export.litert.calibration_rows`: no padding in calibration rows).
        thresholds: the limits applied.
        failures: the checks that failed (empty for a finished export).
        environment: versions of kd-tf and the runtimes.
        created: UTC time of the export.

    Example:
    ```python
    report = ExportReport.load("export/export_report.json")
    report.tflite["float32"]["max_abs_diff"] < 1e-4  # True
    ```
    """

    out_dir: str
    seq_length: int
    label_names: list
    num_samples: int
    files: dict = dataclasses.field(default_factory=dict)
    serving: dict = dataclasses.field(default_factory=dict)
    hub_encoder: dict = dataclasses.field(default_factory=dict)
    tflite: dict = dataclasses.field(default_factory=dict)
    calibration: dict = dataclasses.field(default_factory=dict)
    thresholds: dict = dataclasses.field(default_factory=dict)
    failures: list = dataclasses.field(default_factory=list)
    environment: dict = dataclasses.field(default_factory=dict)
    created: str = ""
    teacher: dict = dataclasses.field(default_factory=dict)
    like_for_like: dict = dataclasses.field(default_factory=dict)

    def to_markdown(self):
        """The report as a Markdown page (tables of sizes, agreement, latency)."""

        def num(value, fmt):
            return "n/a" if value is None else format(value, fmt)

        lines = [
            "# Export report",
            "",
            f"- folder: `{self.out_dir}`",
            f"- created: {self.created}",
            f"- labels (output order): {', '.join(self.label_names)}",
            f"- sequence length: {self.seq_length}",
            f"- compared on {self.num_samples} texts; full int8 calibrated on "
            f"{self.calibration.get('texts', 'n/a')} texts "
            f"({self.calibration.get('source', 'n/a')}), joined into "
            f"{self.calibration.get('rows', 'n/a')} rows that fill the sequence",
            f"- status: {'passed' if self.passed else 'FAILED'}",
            "",
            "| form | size (MB) | max abs diff of probabilities | label agreement |",
            "|---|---:|---:|---:|",
            f"| serving SavedModel | {self._folder_mb('serving')} | "
            f"{num(self.serving.get('max_abs_diff'), '.2e')} | "
            f"{num(self.serving.get('label_agreement'), '.2%')} |",
            f"| TF Hub encoder (sequence_output) | {self._folder_mb('hub_encoder')} | "
            f"{num(self.hub_encoder.get('max_abs_diff'), '.2e')} | - |",
            "",
            "## TFLite",
            "",
            "| variant | size (MB) | LiteRT max abs diff | LiteRT agreement | "
            "MediaPipe max abs diff | MediaPipe agreement | MediaPipe raw-text "
            "agreement | largest Keras margin of a flipped label | "
            "latency 1 thread (ms) | latency 2 threads (ms) |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for variant, r in self.tflite.items():
            mp = r.get("mediapipe") or {}
            latency = r.get("latency_ms", {})
            lines.append(
                f"| {variant} | {r['size_bytes'] / 1e6:.2f} | "
                f"{num(r.get('max_abs_diff'), '.2e')} | "
                f"{num(r.get('label_agreement'), '.2%')} | "
                f"{num(mp.get('max_abs_diff'), '.2e')} | "
                f"{num(mp.get('label_agreement'), '.2%')} | "
                f"{num(mp.get('raw_label_agreement'), '.2%')} | "
                f"{num(r.get('flip_max_margin'), '.3f')} | "
                f"{num(latency.get('1'), '.2f')} | {num(latency.get('2'), '.2f')} |"
            )
        lines += [
            "",
            "Latency: batch-1 LiteRT interpreter on this machine, the "
            "variants taking turns, each the best round median. MediaPipe "
            "columns: TextClassifier on the texts folded by "
            "`normalize_for_mobile`; raw-text agreement: on the texts "
            "as given.",
        ]
        rows = [v for v, r in self.tflite.items() if r.get("word_embeddings") == "int8_rows"]
        if rows:
            lines += [
                "",
                f"Word-embedding table stored as int8 with one scale per row in: {', '.join(rows)} "
                "(`kd_tf.export.int8_rows`; TFLite's own quantization gives the table one scale).",
            ]
        lines += self._like_for_like_lines(num)
        lines += ["", "## Thresholds", ""]
        lines += [f"- {k}: {v}" for k, v in self.thresholds.items()]
        if self.failures:
            lines += ["", "## Failures", ""] + [f"- {f}" for f in self.failures]
        lines += ["", "## Files", "", "| file | bytes |", "|---|---:|"]
        lines += [f"| `{k}` | {v:,} |" for k, v in sorted(self.files.items())]
        return "\n".join(lines) + "\n"

    def _like_for_like_lines(self, num):
        if not self.like_for_like:
            return []
        teacher = self.teacher.get("tflite", {})
        lines = [
            "",
            "## Like for like with the teacher",
            "",
            f"The teacher's `.tflite` files of the same variants at sequence length {self.seq_length} "
            f"({self.teacher.get('source', 'given')}), timed in the same turns as the student's. Ratios "
            f"only compare two files of the same variant; sizes without the MediaPipe metadata, which only "
            f"the student's files carry.",
            "",
            "| variant | teacher MB | student MB | student / teacher bytes | teacher ms (1 / 2 threads) | "
            "student ms (1 / 2 threads) | speed-up (1 / 2 threads) | speed-up, CPU time (1 thread) |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for variant, ratio in self.like_for_like.items():
            t, s = teacher[variant], self.tflite[variant]
            speedup = ratio.get("speedup", {})
            lines.append(
                f"| {variant} | {t['size_bytes'] / 1e6:.2f} | {s['model_bytes'] / 1e6:.2f} | "
                f"{num(ratio.get('size_ratio'), '.3f')} | "
                f"{num(t['latency_ms'].get('1'), '.2f')} / {num(t['latency_ms'].get('2'), '.2f')} | "
                f"{num(s['latency_ms'].get('1'), '.2f')} / {num(s['latency_ms'].get('2'), '.2f')} | "
                f"{num(speedup.get('1'), '.2f')}x / {num(speedup.get('2'), '.2f')}x | "
                f"{num(ratio.get('cpu_speedup', {}).get('1'), '.2f')}x |"
            )
        return lines

    def _folder_mb(self, folder):
        total = sum(v for k, v in self.files.items() if k.startswith(folder + "/"))
        return f"{total / 1e6:.2f}"
