"""Export a trained student for servers and phones, verified on the real runtimes.

`export_student` turns a classifier from `kd_tf.classify.build_classifier`
(logits out) into files that a server and a mobile app use as they are, runs
every file on its runtime and compares it with the Keras student:

```
out_dir/
  serving/                SavedModel on raw text: signature serving_default,
                          strings in, probabilities / label_id / label out
  hub_encoder/            the student's encoder in TF Hub format (HubEncoder)
  hub_preprocessor/       the matching TF Hub BERT preprocessor
  tflite/model_<variant>.tflite   float32, float16, dynamic_int8, full_int8;
                          builtin ops only; int32 inputs input_word_ids,
                          input_mask, input_type_ids at [1, seq_length];
                          float32 probabilities out; BERT tokenizer and label
                          metadata for MediaPipe Tasks TextClassifier
  labels.txt              the label names, one a line, in output order
  export_report.json/.md  sizes, differences, label agreement, latency (and,
                          given a teacher, its like-for-like sizes and latency)
```

`export_student` runs six steps, one function each: (1) `_check_inputs` refuses unsuitable input before
anything is written; (2) `_keras_reference` computes the Keras student's probabilities; (3)
`_export_serving`, (4) `_export_hub_format` and (5) `_export_tflite` write each form and compare it with
them, and `like_for_like.time_tflite` times every `.tflite` (and a given teacher's, like for like);
(6) `_finish` gives the verdict. Everything is written into a hidden sibling folder that is renamed
to `out_dir` only when every check passed, so a failed export never leaves a folder that looks complete.
See docs/mobile.md for the app side.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import shutil
import tempfile

import numpy as np

from kd_tf.export import metadata as mobile_metadata
from kd_tf.export.checks import (
    check_labels,
    check_student,
    check_texts,
    compare,
    encoder_config,
    environment,
    file_sizes,
    find_vocab,
    load_student,
    local_folder,
    prepare_out_dir,
)
from kd_tf.export.like_for_like import check_teacher, time_tflite
from kd_tf.export.litert import (
    LiteRTClassifier,
    calibration_rows,
    convert_variants,
    tflite_input_names,
    tflite_operators,
    tokenize,
    word_embeddings_storage,
)
from kd_tf.export.report import GATED_VARIANTS, VARIANTS, ExportError, ExportReport
from kd_tf.export.saved_model import write_hub_encoder, write_serving


def export_student(
    student,
    out_dir,
    preprocessor,
    label_names,
    sample_texts,
    seq_length=128,
    variants=VARIANTS,
    calibration_texts=None,
    encoder_path=None,
    metadata=True,
    vocab_file=None,
    allow_untrained=False,
    max_float32_diff=1e-4,
    min_label_agreement=0.99,
    latency_runs=50,
    latency_rounds=3,
    teacher=None,
    teacher_preprocessor=None,
    verbose=False,
):
    """Exports a trained student for servers and phones and verifies every file.

    Writes into `out_dir`: `serving/` (SavedModel on raw strings),
    `hub_encoder/` and `hub_preprocessor/` (TF Hub format),
    `tflite/model_<variant>.tflite` (with MediaPipe metadata), `labels.txt`,
    `export_report.json` and `export_report.md`. Each form is run on
    `sample_texts` (serving SavedModel, LiteRT at 1 and 2 threads, MediaPipe
    `TextClassifier`) and compared with the Keras student's probabilities.

    Args:
        student: the trained classifier from `kd_tf.classify.build_classifier`
            (TF Hub input dict in, logits out), the path of its `.keras`
            file, or the `Distiller` that trained it (its `student` is
            exported).
        out_dir: folder to create; an existing folder must be empty.
        preprocessor: the student's `HubPreprocessor`, or its handle/folder.
        label_names: class names in output order (e.g. `["negative",
            "positive"]`).
        sample_texts: real texts of the task to compare on (a few hundred
            make the 99% label agreement meaningful).
        seq_length: fixed sequence length of the .tflite inputs (and of the
            serving preprocessing); longer texts are truncated.
        variants: TFLite variants, a subset of `VARIANTS`.
        calibration_texts: real training texts for the full int8
            calibration; by default `sample_texts`.
        encoder_path: the kd-tf encoder folder describing the student's
            encoder architecture; by default the HubEncoder's handle.
        metadata: attach MediaPipe BERT metadata (needs mediapipe and an
            uncased vocabulary); False writes plain .tflite files.
        vocab_file: the preprocessor's vocabulary; by default the single
            `.txt` in its `assets/`.
        allow_untrained: export a student that shows no sign of training.
        max_float32_diff: largest allowed absolute difference of
            probabilities for float32 forms (serving, TF Hub encoder, float32
            .tflite, MediaPipe float32).
        min_label_agreement: smallest allowed label agreement of float16 and
            dynamic int8 (LiteRT and MediaPipe). Full int8 is reported only.
        latency_runs: batch-1 runs per round (see `latency_rounds`).
        latency_rounds: rounds in which the variants (and the teacher's
            files) take turns; each latency is the best round median
            (`kd_tf.export.litert.interleaved_latency_ms`).
        teacher: the teacher, to report like-for-like sizes and speed-ups:
            its Keras classifier (converted here to the float32 and dynamic
            int8 variants the export writes), or its `.tflite` files as
            `{variant: path}`. Its files are timed in the same turns as the
            student's; nothing of it is written to `out_dir`.
        teacher_preprocessor: the teacher's preprocessor (handle, folder or
            `HubPreprocessor`), to feed it its own tokens of the same text;
            by default the student's (the same vocabulary).
        verbose: print progress.

    Returns:
        The `ExportReport` (also saved in `out_dir`).

    Raises:
        ExportError: the student, labels, texts, preprocessor, teacher or
            `out_dir` are unsuitable (before anything is written), a conversion needs
            non-builtin ops, or an exported form differs from the Keras
            student beyond the limits (`error.report` holds the numbers). In
            every case `out_dir` is left as it was.
        ImportError: if `metadata=True` and mediapipe is not installed.

    Example:
    ```python
    report = export_student(student, "export", "models/preprocessor",
                            ["negative", "positive"], dev_texts[:200],
                            seq_length=128, calibration_texts=train_texts[:200])
    report.tflite["dynamic_int8"]["label_agreement"] >= 0.99  # True
    ```
    """
    import tensorflow_text  # noqa: F401  (the preprocessor's ops)

    plan = _check_inputs(
        student,
        out_dir,
        preprocessor,
        label_names,
        sample_texts,
        seq_length,
        variants,
        calibration_texts,
        encoder_path,
        metadata,
        vocab_file,
        allow_untrained,
        teacher,
        teacher_preprocessor,
    )
    plan.log = (lambda message: print(message, flush=True)) if verbose else (lambda message: None)
    report = ExportReport(
        out_dir=plan.out_dir,
        seq_length=plan.seq_length,
        label_names=plan.label_names,
        num_samples=len(plan.sample_texts),
        calibration=plan.calibration,
        thresholds={
            "max_float32_diff": max_float32_diff,
            "min_label_agreement": min_label_agreement,
            "gated_variants": list(GATED_VARIANTS),
        },
        environment=environment(),
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    )
    limits = _Limits(max_float32_diff, min_label_agreement, latency_runs, latency_rounds)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(plan.out_dir)}.tmp-", dir=plan.parent)
    try:
        inputs, reference = _keras_reference(plan)
        _export_serving(plan, tmp, reference, report, limits)
        _export_hub_format(plan, tmp, inputs, report, limits)
        first = _export_tflite(plan, tmp, inputs, reference, report, limits)
        time_tflite(plan, tmp, first, report, limits)
        _finish(plan, tmp, report)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    plan.log(f"export written to {plan.out_dir}")
    return report


@dataclasses.dataclass
class _Plan:
    """What step 1 checked and resolved: everything the later steps need."""

    student: object
    encoder: object
    encoder_meta: dict
    encoder_path: str
    preprocessor: object
    preprocessor_folder: str
    label_names: list
    sample_texts: list
    calibration_texts: list
    calibration: dict
    seq_length: int
    variants: tuple
    metadata: bool
    vocab_file: str
    out_dir: str
    parent: str
    teacher: object = None
    teacher_preprocessor: object = None
    log: object = None


@dataclasses.dataclass
class _Limits:
    max_float32_diff: float
    min_label_agreement: float
    latency_runs: int
    latency_rounds: int


def _check_inputs(
    student,
    out_dir,
    preprocessor,
    label_names,
    sample_texts,
    seq_length,
    variants,
    calibration_texts,
    encoder_path,
    metadata,
    vocab_file,
    allow_untrained,
    teacher=None,
    teacher_preprocessor=None,
):
    """Step 1: refuse unsuitable input before anything is written."""
    import keras
    import tensorflow as tf

    from kd_tf.bert import HubPreprocessor

    trainer = None
    if isinstance(student, (str, os.PathLike)):
        student = load_student(student)
    elif isinstance(getattr(student, "student", None), keras.Model):
        trainer, student = student, student.student
    variants = tuple(variants)
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or len(set(variants)) != len(variants):
        raise ExportError(f"variants {list(variants)}: choose distinct names from {list(VARIANTS)}.")
    label_names = check_labels(label_names)
    sample_texts = check_texts(sample_texts, "sample_texts")
    calibration = {"source": "calibration_texts", "texts": 0}
    if "full_int8" in variants:
        if calibration_texts is None:
            calibration = {"source": "sample_texts (pass calibration_texts for real training texts)"}
            calibration_texts = sample_texts
        calibration_texts = check_texts(calibration_texts, "calibration_texts")
        calibration["texts"] = len(calibration_texts)
    seq_length = int(seq_length)
    encoder = check_student(student, trainer, len(label_names), seq_length, allow_untrained)
    encoder_meta = encoder_config(encoder, encoder_path)
    max_positions = encoder_meta["config"]["max_position_embeddings"] if encoder_meta else 512
    if not 3 <= seq_length <= max_positions:
        raise ExportError(
            f"seq_length={seq_length} must be in [3, {max_positions}] (the encoder's positions)."
        )
    handle = preprocessor.handle if isinstance(preprocessor, HubPreprocessor) else os.fspath(preprocessor)
    preprocessor = HubPreprocessor(handle, seq_length=seq_length)
    preprocessor_folder = local_folder(handle)
    if (
        encoder_meta
        and preprocessor.vocab_size
        and preprocessor.vocab_size > encoder_meta["config"]["vocab_size"]
    ):
        raise ExportError(
            f"preprocessor {handle} has {preprocessor.vocab_size} tokens but the "
            f"encoder only {encoder_meta['config']['vocab_size']} embeddings: "
            f"they do not belong together."
        )
    if metadata:
        mobile_metadata.metadata_writers()  # ImportError with the fix
        vocab_file = os.fspath(vocab_file or find_vocab(preprocessor_folder, handle))
        try:
            mobile_metadata.check_uncased_vocabulary(vocab_file)
        except ValueError as e:
            raise ExportError(str(e)) from e
        probe = ["HELLO World", "hello world"]
        upper, lower = (preprocessor.tokenize(tf.constant([t])).flat_values.numpy() for t in probe)
        if not np.array_equal(upper, lower):
            raise ExportError(
                f"preprocessor {handle} keeps case, but MediaPipe's BERT "
                f"tokenizer lower-cases every text, so the phone would feed "
                f"other token ids. Use an uncased preprocessor, or export with "
                f"metadata=False and tokenize in the app."
            )
    teacher, teacher_preprocessor = check_teacher(
        teacher, teacher_preprocessor, preprocessor, len(label_names), seq_length, variants
    )
    out_dir, parent = prepare_out_dir(out_dir)
    return _Plan(
        student=student,
        encoder=encoder,
        encoder_meta=encoder_meta,
        encoder_path=encoder_path,
        preprocessor=preprocessor,
        preprocessor_folder=preprocessor_folder,
        label_names=label_names,
        sample_texts=sample_texts,
        calibration_texts=calibration_texts,
        calibration=calibration,
        seq_length=seq_length,
        variants=variants,
        metadata=metadata,
        vocab_file=vocab_file,
        out_dir=out_dir,
        parent=parent,
        teacher=teacher,
        teacher_preprocessor=teacher_preprocessor,
    )


def _keras_reference(plan):
    """Step 2: the Keras student's probabilities on the sample texts (what every form must match)."""
    import tensorflow as tf

    inputs = tokenize(plan.preprocessor, plan.sample_texts)
    logits = plan.student.predict(inputs, batch_size=32, verbose=0)
    return inputs, tf.nn.softmax(tf.cast(logits, tf.float32)).numpy()


def _export_serving(plan, tmp, reference, report, limits):
    """Step 3: the serving SavedModel on raw strings, run and compared."""
    import tensorflow as tf

    plan.log("serving SavedModel ...")
    serving_dir = os.path.join(tmp, "serving")
    write_serving(plan.student, plan.preprocessor, plan.label_names, serving_dir)
    served = tf.saved_model.load(serving_dir).signatures["serving_default"]
    texts = plan.sample_texts
    probabilities = np.concatenate(
        [served(tf.constant(texts[i : i + 64]))["probabilities"].numpy() for i in range(0, len(texts), 64)]
    )
    del served
    report.serving = {"path": "serving", "signature": "serving_default", **compare(probabilities, reference)}
    report.check(
        report.serving["max_abs_diff"] <= limits.max_float32_diff,
        f"serving SavedModel differs from the Keras student by "
        f"{report.serving['max_abs_diff']:.2e} > {limits.max_float32_diff}",
    )


def _export_hub_format(plan, tmp, inputs, report, limits):
    """Step 4: the TF-Hub-format encoder and its preprocessor, reloaded and compared."""
    import tensorflow as tf

    from kd_tf.bert import load_module

    plan.log("TF Hub encoder ...")
    hub_dir = os.path.join(tmp, "hub_encoder")
    write_hub_encoder(plan.encoder, plan.encoder_meta, plan.encoder_path, hub_dir)
    shutil.copytree(plan.preprocessor_folder, os.path.join(tmp, "hub_preprocessor"))
    few = {k: tf.constant(v[:32]) for k, v in inputs.items()}
    written = load_module(hub_dir)(few, training=False)["sequence_output"]
    diff = float(np.max(np.abs(written.numpy() - plan.encoder(few)["sequence_output"].numpy())))
    report.hub_encoder = {
        "path": "hub_encoder",
        "preprocessor_path": "hub_preprocessor",
        "max_abs_diff": diff,
    }
    report.check(diff <= limits.max_float32_diff, f"TF Hub encoder differs from the student's by {diff:.2e}")


def _export_tflite(plan, tmp, inputs, reference, report, limits):
    """Step 5: every TFLite variant, with metadata, run on LiteRT and MediaPipe and compared."""
    calibration_inputs = None
    if "full_int8" in plan.variants:
        calibration_inputs = calibration_rows(plan.preprocessor, plan.calibration_texts, plan.seq_length)
        plan.calibration["rows"] = len(calibration_inputs["input_mask"])
        plan.calibration["method"] = "consecutive texts joined to fill seq_length (no padding)"
    os.makedirs(os.path.join(tmp, "tflite"))
    folded = [mobile_metadata.normalize_for_mobile(t) for t in plan.sample_texts]
    # MediaPipe lower-cases ASCII itself: count only the texts the fold changes beyond that.
    changed = sum(a != _ascii_lower(b) for a, b in zip(folded, plan.sample_texts))
    first = {k: v[:1] for k, v in inputs.items()}
    plan.log(f"TFLite {', '.join(plan.variants)} ...")
    sources = os.path.join(tmp, ".tflite_sources")
    converted = convert_variants(plan.student, plan.seq_length, plan.variants, sources, calibration_inputs)
    shutil.rmtree(sources)
    for variant, model in converted:
        model_bytes = len(model)
        relative = f"tflite/model_{variant}.tflite"
        path = os.path.join(tmp, relative)
        if plan.metadata:
            model = mobile_metadata.attach_bert_classifier_metadata(
                model, plan.vocab_file, plan.label_names, tflite_input_names(model)
            )
        with open(path, "wb") as f:
            f.write(model)
        result = {
            "path": relative,
            "size_bytes": len(model),
            "model_bytes": model_bytes,
            "word_embeddings": word_embeddings_storage(plan.student, variant),
            "operators": tflite_operators(model),
        }
        result.update(compare(LiteRTClassifier(path).predict(inputs), reference))
        checks = [("LiteRT", result)]
        if plan.metadata:
            classes = len(plan.label_names)
            mp = compare(mobile_metadata.mediapipe_classify(path, folded, classes), reference)
            raw = compare(mobile_metadata.mediapipe_classify(path, plan.sample_texts, classes), reference)
            result["mediapipe"] = {
                "max_abs_diff": mp["max_abs_diff"],
                "label_agreement": mp["label_agreement"],
                "raw_max_abs_diff": raw["max_abs_diff"],
                "raw_label_agreement": raw["label_agreement"],
                "texts_changed_by_folding": changed,
            }
            checks.append(("MediaPipe", result["mediapipe"]))
        report.tflite[variant] = result
        for runtime, numbers in checks:
            if variant == "float32":
                report.check(
                    numbers["max_abs_diff"] <= limits.max_float32_diff,
                    f"float32 on {runtime} differs from the Keras student "
                    f"by {numbers['max_abs_diff']:.2e} > {limits.max_float32_diff}",
                )
            elif variant in GATED_VARIANTS:
                report.check(
                    numbers["label_agreement"] >= limits.min_label_agreement,
                    f"{variant} on {runtime} agrees with the Keras student "
                    f"on {numbers['label_agreement']:.2%} of labels < {limits.min_label_agreement:.0%}",
                )
        plan.log(
            f"  {len(model) / 1e6:.2f} MB, max diff {result['max_abs_diff']:.2e}, agreement "
            f"{result['label_agreement']:.2%}"
        )
    return first


def _finish(plan, tmp, report):
    """Step 6: the verdict; the report and the folder are moved into place only if every check passed."""
    with open(os.path.join(tmp, "labels.txt"), "w") as f:
        f.write("\n".join(plan.label_names) + "\n")
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


def _ascii_lower(text):
    return text.translate(_ASCII_LOWER)


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
