"""The students of a sweep measured before any training: bytes and LiteRT latency, like for like.

Size and speed need no training: they depend on the shape (blocks, width, heads, vocabulary), not on the
weights. `measure_shapes(config)` (`kd-tf sweep --config C.yaml --shapes`) cuts every student of
`sweep.students` from the *pretrained* teacher as the sweep would from the fine-tuned one (the same
calibration texts and pruned vocabulary: `kd_tf.pipeline.student_init`), puts an untrained head on each
and on the teacher, converts all of them to the same float32 and dynamic-int8 `.tflite` files and times
them at batch 1 in LiteRT, taking turns (`kd_tf.pipeline.measure`). The ratios compare files of the same
format only. It writes `sweep_shapes/shapes.json` and `shapes.md` in the run folder (the models are
deleted once measured) and records no step: a later `kd-tf sweep` trains them.

Of a pretrained teacher, only the untrained heads' zero biases are folded away by the converter (one add
of zero each); a randomly initialised teacher (zero biases, unit LayerNorm gains everywhere) loses an add or
a product per vector, so its untrained files are up to a tenth smaller than trained ones: measure shapes
on a pretrained teacher.
"""

from __future__ import annotations

import os
import shutil

from kd_tf.json_files import write_json
from kd_tf.pipeline import measure
from kd_tf.pipeline.run_folder import RunFolder
from kd_tf.pipeline.student_init import build_student_init

SHAPES_DIR = "sweep_shapes"


def _log(message):
    print(message, flush=True)


def _row(name, model, encoder, student, tflite):
    from kd_tf.bert import hub_format
    from kd_tf.classify.models import parameter_count

    config = hub_format.read_encoder_metadata(encoder)["config"]
    return {
        "name": name,
        "init_layers": None if student is None else student.init_layers,
        "layers": config["num_layers"],
        "hidden_size": config["hidden_size"],
        "num_heads": config["num_heads"],
        "intermediate_size": config["intermediate_size"],
        "vocab_size": config["vocab_size"],
        "parameters": parameter_count(model),
        "tflite": tflite,
    }


def measure_shapes(config, verbose=2):
    """Measures the int8 and float32 `.tflite` bytes and LiteRT latency of a sweep's students, untrained.

    Args:
        config: a `kd_tf.config.RunConfig` with `sweep.students`.
        verbose: Keras verbosity.

    Returns:
        `{"teacher": row, "students": [row, ...], "seq_length": ...}`: each row has the shape (`layers`,
        `hidden_size`, `num_heads`, `intermediate_size`, `vocab_size`, `init_layers`), `parameters` and
        `tflite` `{variant: {size_bytes, latency_ms, cpu_ms}}`; each student also `like_for_like` (its
        ratios with the teacher, `kd_tf.classify.evaluate.like_for_like`).

    Raises:
        PipelineError: for a sweep without students or a shape the teacher cannot give, or another process
            running the same folder.

    Example:
    ```python
    shapes = measure_shapes(load_config("configs/sweep_demo.yaml"))
    shapes["students"][2]["like_for_like"]["dynamic_int8"]["size_ratio"]  # 0.189 (2L_H256_8k)
    ```
    """
    from kd_tf.classify import report_sweep
    from kd_tf.classify.evaluate import like_for_like
    from kd_tf.classify.models import build_classifier
    from kd_tf.export.litert import interleaved_latency_ms
    from kd_tf.pipeline.sweep import SweepRun

    folder = RunFolder(config)
    sweep = SweepRun(config, folder, verbose)
    with folder.lock():
        sweep.check()
        shutil.rmtree(folder.path(SHAPES_DIR), ignore_errors=True)
        work = os.path.join(SHAPES_DIR, "models")
        os.makedirs(folder.path(work))
        classes = len(sweep.splits["label_names"])
        encoder = sweep.handles[0]
        teacher = build_classifier(encoder, classes, pooling=config.teacher.pooling, dropout=0.0)
        rows = {"teacher": _row("teacher", teacher, encoder, None, None)}
        rows["teacher"]["tflite"] = measure.convert_like_for_like(sweep, teacher, "teacher", work)
        timed = {"teacher": (sweep, rows["teacher"]["tflite"])}
        for spec in config.sweep.students:
            run = sweep.with_student(sweep.student_config(spec), os.path.join(work, spec.name))
            files = build_student_init(run, teacher_hub=encoder)
            model = build_classifier(files.encoder, classes, pooling=run.config.student.pooling, dropout=0.0)
            rows[spec.name] = _row(spec.name, model, files.encoder, run.config.student, None)
            rows[spec.name]["tflite"] = measure.convert_like_for_like(run, model, "student", run.student_dir)
            timed[spec.name] = (run, rows[spec.name]["tflite"])
            _log(f"  {spec.name}: {rows[spec.name]['parameters']:,} parameters")
        e = config.evaluate
        role = {"teacher": "teacher"}
        times = interleaved_latency_ms(
            {
                f"{name}/{variant}": (
                    folder.path(f["path"]),
                    measure.timing_inputs(run, role.get(name, "student")),
                )
                for name, (run, files) in timed.items()
                for variant, f in files.items()
            },
            rounds=e.latency_rounds,
            runs=e.latency_runs,
        )
        for name, row in rows.items():
            for variant, f in row["tflite"].items():
                f.update(times[f"{name}/{variant}"])
                f.pop("path")
        students = [rows[s.name] for s in config.sweep.students]
        for row in students:
            row["like_for_like"] = like_for_like(rows["teacher"]["tflite"], row["tflite"])
        shutil.rmtree(folder.path(work))
        result = {"seq_length": config.export.seq_length, "teacher": rows["teacher"], "students": students}
        write_json(folder.path(SHAPES_DIR, "shapes.json"), result)
        with open(folder.path(SHAPES_DIR, "shapes.md"), "w") as f:
            f.write(report_sweep.render_shapes(result))
    return result


__all__ = ["SHAPES_DIR", "measure_shapes"]
