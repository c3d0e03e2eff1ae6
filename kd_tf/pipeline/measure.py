"""Every model of a run measured alike: its test predictions, its Keras speed, the same TFLite files.

`evaluate_models(run, roles, out)` is the body of the evaluate step (and of each student of a sweep). For
each model (teacher, distilled student, label-only student):

* its logits on the test split, tokenized by its own preprocessor -> `out/predictions/<role>.npz`;
* its parameters, SavedModel bytes, Keras CPU latency and throughput (`kd_tf.classify.evaluate`);
* the same TFLite files for every model: float32 and dynamic int8 (`LIKE_FOR_LIKE_VARIANTS`) at
  `export.seq_length`, builtin ops, no metadata -> `out/tflite/<role>_<variant>.tflite`.

Then every `.tflite` is timed at batch 1 in LiteRT at 1 and 2 threads, the models taking turns
(`kd_tf.export.litert.interleaved_latency_ms`), each on its own tokens of the same test text: the report's
teacher / student ratios then compare two files of the same format measured under the same conditions.
The files of a model measured earlier (a sweep's teacher) join the turns through `also_timed`.
"""

from __future__ import annotations

import os

import numpy as np

from kd_tf.json_files import write_json

EVALUATION_FILE = "evaluation.json"


def _log(message):
    print(message, flush=True)


def tflite_path(out, role, variant):
    """`<out>/tflite/<role>_<variant>.tflite`, relative to the run folder.

    Example:
    ```python
    tflite_path("", "teacher", "dynamic_int8")  # 'tflite/teacher_dynamic_int8.tflite'
    ```
    """
    return os.path.join(out, "tflite", f"{role}_{variant}.tflite")


def timing_inputs(run, role):
    """The one-example LiteRT input of `role`: its own tokens of the first test text at `export.seq_length`.

    Example:
    ```python
    timing_inputs(run, "student")["input_word_ids"].shape  # (1, 128)
    ```
    """
    from kd_tf.export.litert import tokenize

    pre = run.preprocessor_for(role, run.config.export.seq_length)
    return tokenize(pre, [str(run.splits["test"].texts[0])])


def _encoder_config(handle):
    from kd_tf.bert import hub_format

    try:
        return hub_format.read_encoder_metadata(handle)["config"]
    except (ValueError, OSError):
        return {}


def convert_like_for_like(run, model, role, out):
    """Writes a model's like-for-like `.tflite` files (`LIKE_FOR_LIKE_VARIANTS`, no metadata).

    Args:
        run: the `ClassificationRun` (its folder and `export.seq_length`).
        model: a classifier from `kd_tf.classify.build_classifier`.
        role: the model's name in the file names.
        out: the folder, relative to the run folder.

    Returns:
        `{variant: {"path": relative path, "size_bytes": ...}}`.

    Example:
    ```python
    convert_like_for_like(run, student, "student", "")["dynamic_int8"]["size_bytes"]
    ```
    """
    import tempfile

    from kd_tf.classify.evaluate import LIKE_FOR_LIKE_VARIANTS
    from kd_tf.export.litert import convert_variants, word_embeddings_storage

    files = {}
    os.makedirs(run.folder.path(out, "tflite"), exist_ok=True)
    with tempfile.TemporaryDirectory(dir=run.folder.path(out, "tflite")) as tmp:
        converted = convert_variants(model, run.config.export.seq_length, LIKE_FOR_LIKE_VARIANTS, tmp)
    for variant, data in converted:
        relative = tflite_path(out, role, variant)
        with open(run.folder.path(relative), "wb") as f:
            f.write(data)
        files[variant] = {
            "path": relative,
            "size_bytes": len(data),
            "word_embeddings": word_embeddings_storage(model, variant),
        }
    return files


def evaluate_models(run, roles, out="", also_timed=None, savedmodel=True):
    """Measures the models `roles` of `run` alike and writes `out/evaluation.json` (see the module docstring).

    Args:
        run: a `kd_tf.pipeline.ClassificationRun` whose models are trained.
        roles: some of "teacher", "student", "baseline".
        out: the folder of the outputs, relative to the run folder ("" for the run's own).
        also_timed: `{name: {variant: {"path": relative .tflite path, "size_bytes": ...}}}` of models
            measured before, whose files take turns with these (e.g. `{"teacher": ...}` in a sweep);
            their latencies are written under `evaluation.json`'s `timed_with`, with the inputs of `name`
            (a role) from `timing_inputs`.
        savedmodel: export each model as a SavedModel to measure its bytes (`savedmodel_bytes`; a sweep
            leaves it out to save disk: its `.tflite` files are the sizes it compares).

    Returns:
        `{role: entry}`: `parameters`, `savedmodel_bytes`, `layers`, `hidden_size`, `vocab_size`, `encoder`,
        `preprocessor`, Keras `latency_ms`, `latency_ms_p90`, `examples_per_s`, and `tflite` `{variant:
        {path, size_bytes, latency_ms {threads: ms}, cpu_ms {"1": ms}}}` at `tflite_seq_length`.

    Raises:
        PipelineError: if a model is missing or holds non-finite weights.
        kd_tf.export.ExportError: if a model cannot be converted with builtin ops.

    Example:
    ```python
    evaluate_models(run, ["teacher", "student", "baseline"])["student"]["tflite"]["dynamic_int8"]
    ```
    """
    import tensorflow as tf

    from kd_tf.classify import evaluate, models
    from kd_tf.export.litert import interleaved_latency_ms

    e = run.config.evaluate
    test = run.splits["test"]
    texts = [str(t) for t in test.texts[: e.throughput_examples]]
    trained = {role: run.load_model(role) for role in roles}
    outputs = ("predictions", "savedmodel", "tflite", EVALUATION_FILE)
    run.set_aside([os.path.join(out, name) for name in outputs])
    results, timed = {}, {}
    for role, model in trained.items():
        logits, labels = evaluate.predict_logits(model, run.dataset(test, role=role, bucketing=False))
        evaluate.save_predictions(
            run.folder.path(out, "predictions", f"{role}.npz"), logits, labels, ids=test.ids
        )
        speed = evaluate.measure_speed(
            model,
            run.preprocessor_for(role)(tf.constant(texts)),
            runs=e.latency_runs,
            throughput_batch=run.config.data.batch_size,
        )
        saved = run.folder.path(out, "savedmodel", role)
        if savedmodel:
            model.export(saved, verbose=False)
        encoder = models.find_encoder(model)
        config = _encoder_config(encoder.handle)
        results[role] = {
            "parameters": models.parameter_count(model),
            "savedmodel_bytes": evaluate.directory_bytes(saved) if savedmodel else None,
            "layers": config.get("num_layers"),
            "hidden_size": config.get("hidden_size"),
            "vocab_size": config.get("vocab_size"),
            "encoder": encoder.handle,
            "preprocessor": run.preprocessor_handle(role),
            **speed,
            "tflite_seq_length": run.config.export.seq_length,
            "tflite": convert_like_for_like(run, model, role, out),
        }
        timed[role] = results[role]["tflite"]
        _log(
            f"  {role}: accuracy {np.mean(logits.argmax(1) == labels):.4f}, "
            f"{results[role]['parameters']:,} parameters, {speed['latency_ms']:.1f} ms at batch 1 (Keras), "
            f"int8 .tflite {results[role]['tflite']['dynamic_int8']['size_bytes'] / 1e6:.2f} MB"
        )
    timed.update(also_timed or {})
    times = interleaved_latency_ms(
        {
            f"{name}/{variant}": (run.folder.path(file["path"]), timing_inputs(run, name))
            for name, files in timed.items()
            for variant, file in files.items()
        },
        rounds=e.latency_rounds,
        runs=e.latency_runs,
    )
    for name, files in timed.items():
        for variant, file in files.items():
            file.update(times[f"{name}/{variant}"])
    written = dict(results)
    if also_timed:
        written["timed_with"] = also_timed
    for role, entry in results.items():
        int8 = entry["tflite"]["dynamic_int8"]
        _log(f"  {role}: int8 LiteRT {int8['latency_ms']['1']:.2f} ms at 1 thread (in turns)")
    write_json(run.folder.path(out, EVALUATION_FILE), written)
    return results


__all__ = ["EVALUATION_FILE", "convert_like_for_like", "evaluate_models", "timing_inputs", "tflite_path"]
