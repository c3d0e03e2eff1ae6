"""A compression sweep: several students of one teacher, each distilled, trained on labels and measured alike.

`kd-tf sweep --config configs/sweep_demo.yaml` runs `SweepRun`'s steps with the same record, lock and resume
machinery as a run (`kd_tf.pipeline.Pipeline`):

1. `teacher`, `cache`: the teacher is fine-tuned and its logits cached once (the records and folders a
   `kd-tf run` of the same config would write, so a sweep next to a run reuses them);
2. `sweep_teacher`: the teacher measured like a student (test predictions, the same float32 and dynamic
   int8 `.tflite` files) -> `sweep/teacher/`;
3. `student-<name>`, one step per entry of `sweep.students`: the student's encoder (cut, sliced narrower,
   vocabulary pruned: `kd_tf.pipeline.student_init`), distilled from the cached logits, the same student on
   labels alone, both measured with the teacher's `.tflite` files taking turns with theirs in LiteRT
   (`kd_tf.pipeline.measure`) -> `sweep/<name>/`;
4. `sweep_report`: `sweep/report.json`, `sweep/report.md` and the Pareto plot of accuracy against int8 size
   and latency (`kd_tf.classify.report_sweep`).

A killed sweep resumes at the first student that did not finish. A student whose shape changed in the
config, or whose teacher was trained again since, runs again; adding a student to a finished sweep trains
only the new one.

```
sweep/teacher/              evaluation.json, predictions/teacher.npz, tflite/teacher_<variant>.tflite
sweep/<name>/               student.json (its shape), student_init/, student/, baseline/, predictions/,
                            tflite/, evaluation.json (with the teacher's latencies of the same turns)
sweep/report.json, report.md, pareto.png
```
"""

from __future__ import annotations

import dataclasses
import json
import os

from kd_tf.json_files import write_json
from kd_tf.pipeline import measure
from kd_tf.pipeline.classification import ClassificationRun
from kd_tf.pipeline.run_folder import PipelineError

SWEEP_DIR = "sweep"
TEACHER_DIR = os.path.join(SWEEP_DIR, "teacher")
STUDENT_PREFIX = "student-"
STUDENT_RECORD = "student.json"


def _log(message):
    print(message, flush=True)


def student_step(name):
    """The step of a sweep student (`student-<name>`).

    Example:
    ```python
    student_step("h256_8k")  # 'student-h256_8k'
    ```
    """
    return f"{STUDENT_PREFIX}{name}"


class SweepRun(ClassificationRun):
    """The steps of a compression sweep (see the module docstring).

    Args:
        config: a `kd_tf.config.RunConfig` with `sweep.students`.
        folder: the run's `kd_tf.pipeline.RunFolder`.
        verbose: Keras progress bars (1) or one line per epoch (2).

    Example:
    ```python
    records = Pipeline(load_config("configs/sweep_demo.yaml"), task=SweepRun).run()
    records["sweep_report"]["students"]  # ['2L_H256_8k', ...]
    ```
    """

    def __init__(self, config, folder, verbose=1):
        super().__init__(config, folder, verbose)
        self._specs = {spec.name: spec for spec in config.sweep.students}
        self._shape = None

    @property
    def steps(self):
        """`teacher`, `cache`, `sweep_teacher`, one `student-<name>` per student, `sweep_report`."""
        return ("teacher", "cache", "sweep_teacher", *map(student_step, self._specs), "sweep_report")

    def skips(self, step):
        """The cache step is left out as in a run (no cache, or hidden states from the live teacher)."""
        return step == "cache" and super().skips(step)

    def _teacher_token(self):
        return (self.folder.record("teacher") or {}).get("token")

    def stale(self, step, record):
        """A finished step whose record no longer fits: a student whose shape changed, a step of another
        teacher, or a report of another list of students."""
        if step == "sweep_report":
            return record.get("students") != list(self._specs)
        if step == "sweep_teacher" or step.startswith(STUDENT_PREFIX):
            if record.get("teacher_token") != self._teacher_token():
                return True
        if step.startswith(STUDENT_PREFIX):
            spec = self._specs[step[len(STUDENT_PREFIX) :]]
            return record.get("spec") != dataclasses.asdict(spec)
        return False

    def dependents(self, step):
        """A new teacher or cache makes every later step stale; a student or the teacher's measurement,
        only the report."""
        later = self.steps[self.steps.index(step) + 1 :]
        return later if step in ("teacher", "cache") else tuple(s for s in later if s == "sweep_report")

    # -------------------------------------------------------------- checks
    def teacher_shape(self):
        """The teacher encoder's config (`num_layers`, `hidden_size`, ...): known, or read from its folder.

        Raises:
            PipelineError: if the teacher is not a kd-tf encoder (students cannot be cut from it).
        """
        if self._shape is None:
            from kd_tf import config as config_lib
            from kd_tf.bert import hub_format

            teacher = self.config.teacher.encoder
            shape = config_lib.TEACHER_SHAPES.get(teacher)
            if shape is None and os.path.isdir(teacher):
                try:
                    shape = hub_format.read_encoder_metadata(teacher)["config"]
                except (ValueError, KeyError):
                    shape = None
            if shape is None:
                raise PipelineError(
                    f"sweep.students are cut from the teacher's blocks, which needs a teacher encoder "
                    f"written by kd-tf; {teacher} is not one. Use a kd-tf teacher (kd-tf:all-MiniLM-L6-v2)."
                )
            self._shape = shape
        return self._shape

    def check(self):
        """Checks every student's shape against the teacher before anything trains.

        Raises:
            PipelineError: for no students, more than one seed, or a shape the teacher cannot give.
        """
        if not self._specs:
            raise PipelineError(
                "sweep.students: list the students to compare, e.g. [{name: h256, num_layers: 3, "
                "hidden_size: 256, vocabulary: {top_k: 8000}}] (see configs/sweep_demo.yaml)."
            )
        if self.config.distill.seeds != 1:
            raise PipelineError("distill.seeds: a sweep trains each student with one seed; set it to 1.")
        shape, teacher = self.teacher_shape(), self.config.teacher.encoder
        for i, spec in enumerate(self.config.sweep.students):
            self.check_shape(
                shape, teacher, self.student_config(spec), f"sweep.students[{i}]", spec.num_layers
            )

    def student_config(self, spec):
        """The `StudentConfig` of a sweep student, its `num_layers` spread over the teacher's blocks.

        Example:
        ```python
        run.student_config(spec).init_layers  # [1, 3, 5] for num_layers: 3 of a 6-block teacher
        ```
        """
        from kd_tf.config_students import sweep_student
        from kd_tf.distill import feature_path, layer_map

        student = sweep_student(self.config, spec)
        if spec.num_layers is not None:
            depth = self.teacher_shape()["num_layers"]
            matches = layer_map(depth, min(spec.num_layers, depth))
            layers = [int(feature_path(m.teacher_feature)[-1]) for m in matches]
            student = dataclasses.replace(student, init_layers=layers)
        return student

    # -------------------------------------------------------------- steps
    def run_step(self, step):
        """Runs `step` (a student's step, or a named one)."""
        if step.startswith(STUDENT_PREFIX):
            return self.step_student(step[len(STUDENT_PREFIX) :])
        return getattr(self, f"step_{step}")()

    def step_sweep_teacher(self):
        measure.evaluate_models(self, ["teacher"], TEACHER_DIR, savedmodel=False)
        return {"teacher_token": self._teacher_token()}

    def teacher_files(self):
        """The teacher's `.tflite` files measured by `sweep_teacher`: `{variant: {path, size_bytes}}`."""
        path = self.folder.path(TEACHER_DIR, measure.EVALUATION_FILE)
        with open(path) as f:
            tflite = json.load(f)["teacher"]["tflite"]
        return {v: {"path": t["path"], "size_bytes": t["size_bytes"]} for v, t in tflite.items()}

    def step_student(self, name):
        """Cuts, distils, trains on labels and measures one student of the sweep (`sweep/<name>/`)."""
        spec = self._specs[name]
        out = os.path.join(SWEEP_DIR, name)
        self.set_aside([out])
        run = self.with_student(self.student_config(spec), out)
        os.makedirs(run.student_path())
        write_json(
            run.student_path(STUDENT_RECORD),
            {
                "name": name,
                "spec": dataclasses.asdict(spec),
                "student": dataclasses.asdict(run.config.student),
            },
        )
        _log(f"  {name}: teacher blocks {run.config.student.init_layers}")
        details = {"distill": run.step_distill()}
        if self.config.distill.baseline:
            details["baseline"] = run.step_baseline()
        results = measure.evaluate_models(
            run,
            [r for r in run.roles() if r != "teacher"],
            out,
            also_timed={"teacher": self.teacher_files()},
            savedmodel=False,
        )
        return {
            "spec": dataclasses.asdict(spec),
            "init_layers": run.config.student.init_layers,
            "teacher_token": self._teacher_token(),
            **details,
            "int8_bytes": {role: r["tflite"]["dynamic_int8"]["size_bytes"] for role, r in results.items()},
        }

    def step_sweep_report(self):
        from kd_tf.classify import report_sweep

        built = report_sweep.build_sweep_report(self.folder.root)
        self.set_aside([os.path.join(SWEEP_DIR, n) for n in report_sweep.REPORT_FILES])
        paths = report_sweep.write_sweep_report(built, self.folder.root)
        report_sweep.print_sweep_summary(built)
        return {"students": list(self._specs), "files": paths}


__all__ = ["SWEEP_DIR", "SweepRun", "student_step"]
