"""The text-classification run: the article's experiment as steps, one method each.

1. `teacher`:  fine-tune the teacher encoder + head on the labelled training
   split (AdamW, linear warmup then cosine decay, early stopping on
   validation accuracy, best weights kept) -> `teacher/`.
2. `cache`:    the teacher's logits over the training (and transfer) texts,
   computed once -> `teacher_cache/`.
3. `distill`:  the student (by default cut from the fine-tuned teacher's
   layers) trained by `kd_tf.Distiller` on labels + soft targets ->
   `student/`.
4. `baseline`: the same student, same initialisation and budget, on labels
   alone -> `baseline/` (what distillation bought).
5. `evaluate`: every model on the held-out test split, each tokenized by its
   own preprocessor: predictions, quality, size, Keras CPU latency, and the
   same float32 and dynamic-int8 `.tflite` files of every model timed in
   LiteRT in turns (`kd_tf.pipeline.measure`) -> `predictions/`, `tflite/`,
   `evaluation.json`.
6. `export`:   the distilled student as serving SavedModel, TF-Hub-format
   encoder and TFLite files with mobile metadata, beside the teacher's
   `.tflite` files like for like -> `export/`.
7. `seeds`:    with `distill.seeds` > 1, steps 3 and 4 again with more seeds,
   each pair scored on the test split -> `seeds/` (`kd_tf.pipeline.seeds`).
8. `report`:   `report.json`, `report.md` and plots, recomputed from the saved
   predictions.

The data and its splits come from `classification_data`; the students from `students` (the encoder they
start from, cut, sliced narrower or with a pruned vocabulary and its own preprocessor, from
`student_init`); fitting (stop on a non-finite loss, best finite epoch) from `training`. A compression
sweep runs the student steps once per student (`kd_tf.pipeline.sweep`); the teacher's steps are in
`teacher`. Training never saves non-finite weights, and no step loads them. A finished run is opened
again by `kd_tf.pipeline.finished_run` (predictions on new texts, scores on other labelled files).
"""

from __future__ import annotations

import os

from kd_tf.json_files import strict_json
from kd_tf.pipeline import distributed
from kd_tf.pipeline.classification_data import load_splits, pin_splits
from kd_tf.pipeline.run_folder import PipelineError
from kd_tf.pipeline.teacher import resolve_teacher_handles

MODEL_ROLES = ("teacher", "student", "baseline")
TRAINING_STEPS = {"teacher": "teacher", "student": "distill", "baseline": "baseline"}
"""The step that trains each model of a run."""
REPORT_FILES = ("report.json", "report.md")


class ClassificationRun:
    """The steps of a text-classification run (see the module docstring), one method each.

    `kd_tf.pipeline.Pipeline` calls `check()`, then `step_<name>()` in order, and records each finished
    step. A step moves its previous outputs aside (`RunFolder.set_aside`) before it writes new ones, so a
    step that fails leaves the last good ones in place.

    Args:
        config: a `kd_tf.config.RunConfig`.
        folder: the run's `kd_tf.pipeline.RunFolder`.
        verbose: Keras progress bars (1) or one line per epoch (2).
        student_dir: the folder of the students' outputs, relative to the run folder (None: the run's own
            folder; `sweep/<name>` for a student of a sweep, see `with_student`).

    Example:
    ```python
    run = ClassificationRun(load_config("configs/demo.yaml"), RunFolder(config))
    run.step_teacher()
    ```
    """

    steps = ("teacher", "cache", "distill", "baseline", "evaluate", "export", "seeds", "report")

    def __init__(self, config, folder, verbose=1, student_dir=None):
        self.config = config
        self.folder = folder
        self.verbose = verbose
        self.student_dir = student_dir
        self._splits = None
        self._handles = None
        self._preprocessors = {}
        self._teacher_logits = None

    def with_student(self, student, student_dir):
        """The same run with another student section, whose outputs go to `student_dir` (a sweep's).

        The splits, the teacher and its cached logits are shared, not reloaded.

        Args:
            student: a `kd_tf.config.StudentConfig`.
            student_dir: its folder, relative to the run folder.

        Returns:
            A `ClassificationRun`.

        Example:
        ```python
        one = run.with_student(dataclasses.replace(run.config.student, hidden_size=256), "sweep/h256")
        one.step_distill()
        ```
        """
        import dataclasses

        other = ClassificationRun(
            dataclasses.replace(self.config, student=student), self.folder, self.verbose, student_dir
        )
        other._splits, other._handles, other._teacher_logits = (
            self._splits,
            self._handles,
            self._teacher_logits,
        )
        other._preprocessors = {k: v for k, v in self._preprocessors.items() if k[0] == self.handles[1]}
        return other

    def student_path(self, *parts):
        """A path of the students' outputs (in `student_dir`)."""
        return self.folder.path(*([self.student_dir] if self.student_dir else []), *parts)

    def relative(self, *parts):
        """`student_path(*parts)` relative to the run folder (what `RunFolder.set_aside` takes)."""
        return os.path.join(*([self.student_dir] if self.student_dir else []), *parts)

    def set_aside(self, names):
        """`RunFolder.set_aside` of outputs of the running step, names relative to the run folder."""
        self.folder.set_aside(names)

    # -------------------------------------------------------------- checks before anything runs
    def skips(self, step):
        """Whether the config leaves `step` out: no label-only baseline; no teacher cache (not cached, or
        hidden-state distillation, which runs the teacher live); one seed; on a multi-worker worker other
        than the chief, the steps that train nothing (`distributed.CHIEF_ONLY_STEPS`)."""
        distill = self.config.distill
        return (
            (step == "baseline" and not distill.baseline)
            or (step == "cache" and (not distill.cache_teacher or distill.hidden_states))
            or (step == "seeds" and distill.seeds == 1)
            or (step in distributed.CHIEF_ONLY_STEPS and not distributed.is_chief(self))
        )

    def stale(self, step, record):
        """Whether a finished step's record no longer fits the config: the seeds step of another count."""
        return step == "seeds" and record.get("seeds") != self.config.distill.seeds

    def check(self):
        """Checks what can be checked before the teacher trains: can the replicas share the global batch,
        can the student be cut from the teacher?

        Raises:
            PipelineError: if `data.batch_size` is not a multiple of the strategy's replicas, or the student
                cannot be cut from the teacher (a published TF Hub teacher, blocks beyond a local teacher's
                depth, sizes larger than its own).
        """
        distributed.check_batch(self)
        s, teacher = self.config.student, self.config.teacher.encoder
        if s.encoder is not None:
            return
        from kd_tf.bert import HANDLES, LOCAL_PRESETS, hub_format

        if teacher in LOCAL_PRESETS:
            return  # its depth is checked with the config (kd_tf.config.TEACHER_LAYERS)
        depth = None
        if os.path.isdir(teacher):
            try:
                depth = hub_format.read_encoder_metadata(teacher)["config"]["num_layers"]
            except (ValueError, KeyError):
                depth = None
        if depth is None or teacher in HANDLES:
            raise PipelineError(
                f"student.init_layers: the student is cut from the teacher's blocks, which needs a "
                f"teacher encoder written by kd-tf; {teacher} is not one. Set student.encoder to a TF Hub "
                f"handle (e.g. a small BERT), or use a kd-tf teacher (kd-tf:all-MiniLM-L6-v2)."
            )
        self.check_shape(hub_format.read_encoder_metadata(teacher)["config"], teacher)

    def check_shape(self, teacher_config, teacher, student=None, key="student", num_layers=None):
        """Raises PipelineError if the student cannot be cut from a teacher of this shape.

        Args:
            teacher_config: the teacher encoder's config dict (`num_layers`, `hidden_size`, ...).
            teacher: its name or folder, for messages.
            student: the `StudentConfig` to check (default the run's).
            key: its config key, for messages.
            num_layers: a sweep student's depth instead of `init_layers`.
        """
        from kd_tf import config as config_lib

        try:
            config_lib.check_student_shape(
                student or self.config.student, teacher_config, teacher, key, num_layers=num_layers
            )
        except config_lib.ConfigError as e:
            raise PipelineError(f"{e} Choose a shape the teacher can give.") from None

    # -------------------------------------------------------------- shared pieces
    @property
    def splits(self):
        """The run's splits (`load_splits`), checked against those its finished steps used."""
        if self._splits is None:
            splits = load_splits(self.config)
            pinned = self.folder.has_finished_steps()
            pin_splits(splits, self.folder.path("data", "splits.json"), pinned=pinned)
            self._splits = splits
        return self._splits

    @property
    def handles(self):
        if self._handles is None:
            self._handles = resolve_teacher_handles(self.config)
        return self._handles

    @property
    def preprocessor(self):
        """The teacher's `HubPreprocessor` at `data.seq_length`."""
        return self.preprocessor_for("teacher")

    def preprocessor_handle(self, role):
        """The preprocessor of `role`: the teacher's, or the student's own (a pruned vocabulary)."""
        from kd_tf.pipeline.student_init import student_files

        return self.handles[1] if role == "teacher" else student_files(self).preprocessor

    def preprocessor_for(self, role, seq_length=None):
        """The `HubPreprocessor` of `role` at `seq_length` (default `data.seq_length`), loaded once."""
        from kd_tf.bert import HubPreprocessor

        key = (self.preprocessor_handle(role), seq_length or self.config.data.seq_length)
        if key not in self._preprocessors:
            self._preprocessors[key] = HubPreprocessor(key[0], seq_length=key[1])
        return self._preprocessors[key]

    def dataset(self, data, shuffle=False, seed=None, role="teacher", **kwargs):
        """`kd_tf.classify.make_dataset` with the tokenizer of `role`, the run's batch size, bucketing, seed.

        Args:
            data: a `TextDataset`.
            shuffle: reshuffle every epoch.
            seed: the shuffle seed (default the run's).
            role: whose preprocessor tokenizes: "teacher", or "student"/"baseline" (the student's own
                when its vocabulary is pruned).
            **kwargs: more `make_dataset` arguments (`bucketing`, `teacher_outputs`, ...).

        Example:
        ```python
        run.dataset(run.splits["test"], role="student", bucketing=False)
        ```
        """
        from kd_tf import classify as data_lib

        d = self.config.data
        kwargs.setdefault("bucketing", d.bucketing)
        seed = self.config.seed if seed is None else seed
        return data_lib.make_dataset(
            data, self.preprocessor_for(role), batch_size=d.batch_size, shuffle=shuffle, seed=seed, **kwargs
        )

    def _callbacks(self, name):
        import keras

        return [keras.callbacks.TensorBoard(self.student_path("logs", name))]

    def model_path(self, role):
        """The `.keras` file of `role`: the teacher's in the run folder, the students' in `student_dir`."""
        if role == "teacher":
            return self.folder.path("teacher", "model.keras")
        return self.student_path(role, "model.keras")

    def load_model(self, role):
        """The trained Keras model of `role` ("teacher", "student" or "baseline").

        Raises:
            PipelineError: if it does not exist, or holds non-finite weights.
        """
        import keras

        from kd_tf.pipeline import training

        path = self.model_path(role)
        if not os.path.exists(path):
            raise PipelineError(f"{path} does not exist: run the step that trains the {role} first.")
        model = keras.saving.load_model(path, compile=False)
        if not training.weights_finite(model):
            raise PipelineError(
                f"{path} holds non-finite (NaN or infinite) weights, so nothing computed from it can be "
                f"trusted; rerun the step that trains the {role} with --force (and a lower learning rate)."
            )
        return model

    def jit(self):
        """`distill.jit_compile` as the Distiller takes it ("auto", True or False)."""
        return {"auto": "auto", "on": True, "off": False}[self.config.distill.jit_compile]

    def jit_for_keras(self):
        """`distill.jit_compile` resolved for `keras.Model.compile` (True or False)."""
        from kd_tf.distill import resolve_jit_compile

        return resolve_jit_compile(self.jit())

    def fit(
        self, trainer, model, train_ds, patience, section, what, log_name, role="teacher", validation=None
    ):
        """Fits `trainer` (`model` itself or a Distiller) and leaves `model` with its best finite epoch.

        Args:
            trainer: what `fit()` is called on.
            model: the model whose weights are kept.
            train_ds: the training `tf.data.Dataset`.
            patience: epochs without validation gain before stopping.
            section: the config section of its settings (`"teacher"` or `"student"`).
            what: the model in words, for messages.
            log_name: its TensorBoard folder under `logs/`.
            role: whose preprocessor tokenizes the validation split.
            validation: the validation `tf.data.Dataset` when it is not the validation split's texts (e.g.
                cached lower-block outputs).

        Returns:
            A `kd_tf.pipeline.training.FitResult`.
        """
        from kd_tf.pipeline import training

        lr = getattr(self.config, section).learning_rate
        return training.fit_keep_best(
            trainer,
            model,
            train_ds,
            validation if validation is not None else self.dataset(self.splits["validation"], role=role),
            epochs=getattr(self.config, section).epochs,
            patience=patience,
            callbacks=self._callbacks(log_name) + distributed.backup_callbacks(self, log_name),
            verbose=self.verbose,
            what=what,
            hint=f"lower {section}.learning_rate (now {lr:g}) or raise {section}.warmup_fraction",
        )

    def _save(self, role, model, result):
        """Saves `model` with its history under `role/` (the previous one set aside first)."""
        from kd_tf.pipeline import training

        what = {"teacher": "the teacher", "student": "the distilled student"}.get(
            role, "the label-only student"
        )
        names = ["teacher", "student_init"] if role == "teacher" else [self.relative(role)]
        self.set_aside(names)
        path = self.model_path(role)
        os.makedirs(os.path.dirname(path))
        training.save_model(model, path, what)
        result.save(os.path.join(os.path.dirname(path), "history.json"))
        return {
            "training_seconds": result.seconds,
            "best_val_accuracy": result.best_val_accuracy,
            "best_epoch": result.best_epoch,
            "status": result.status,
        }

    # -------------------------------------------------------------- steps
    def step_teacher(self):
        from kd_tf.pipeline import teacher

        self._teacher_logits = None  # of the teacher being replaced
        return teacher.train_teacher(self)

    def train_set(self):
        """Labelled training texts plus the transfer set (labelled -1), in a fixed order."""
        splits = self.splits
        if splits["transfer"] is None:
            return splits["train"]
        return splits["train"].add_unlabeled(splits["transfer"])

    def teacher_logits(self):
        """The teacher's logits over `train_set()`, from its cache (computed if missing, then kept).

        Returns:
            `(cache key, logits [N, C] numpy array)` in the order of the texts.

        Raises:
            PipelineError: if a logit is not finite (nothing is distilled from it).
        """
        if self._teacher_logits is None:
            from kd_tf.pipeline import teacher

            self._teacher_logits = teacher.cached_logits(self)
        return self._teacher_logits

    def step_cache(self):
        key, logits = self.teacher_logits()
        return {"key": key, "examples": int(logits.shape[0])}

    def step_distill(self):
        from kd_tf.pipeline import students

        student, result = students.train_distilled(self, self.config.seed)
        return self._save("student", student, result)

    def step_baseline(self):
        from kd_tf.pipeline import students

        baseline, result = students.train_baseline(self, self.config.seed)
        return self._save("baseline", baseline, result)

    def roles(self):
        """The models this run trains and evaluates."""
        return [r for r in MODEL_ROLES if r != "baseline" or self.config.distill.baseline]

    def step_evaluate(self):
        from kd_tf.pipeline import measure

        results = measure.evaluate_models(self, self.roles())
        return {"models": list(results)}

    def teacher_tflite(self):
        """The teacher's like-for-like `.tflite` files of the evaluate step, `{variant: path}`."""
        from kd_tf.classify.evaluate import LIKE_FOR_LIKE_VARIANTS
        from kd_tf.pipeline.measure import tflite_path

        files = {v: self.folder.path(tflite_path("", "teacher", v)) for v in LIKE_FOR_LIKE_VARIANTS}
        return {v: p for v, p in files.items() if os.path.exists(p)}

    def step_export(self):
        from kd_tf import export

        if not self.config.export.enabled:
            return {"skipped": True}
        student = self.load_model("student")
        train = self.splits["train"]
        self.set_aside([self.relative("export")])
        result = export.export_student(
            student,
            self.student_path("export"),
            preprocessor=self.preprocessor_handle("student"),
            label_names=self.splits["label_names"],
            # 300 texts: the 99% label-agreement gate then tolerates 3 flips.
            sample_texts=[str(t) for t in self.splits["test"].texts[:300]],
            calibration_texts=[str(t) for t in train.texts[:200]],
            seq_length=self.config.export.seq_length,
            variants=tuple(self.config.export.variants),
            latency_runs=self.config.evaluate.latency_runs,
            latency_rounds=self.config.evaluate.latency_rounds,
            teacher=self.teacher_tflite() or None,
            teacher_preprocessor=self.handles[1],
        )
        return {"files": strict_json(result)}

    def step_seeds(self):
        from kd_tf.pipeline import seeds

        return seeds.train_seeds(self)

    def step_report(self):
        from kd_tf.classify import report

        built = report.build_report(self.folder.root)
        self.folder.set_aside(list(REPORT_FILES))
        paths = report.write_report(built, self.folder.root)
        report.print_summary(built)
        return {"files": paths}
