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
5. `evaluate`: every model on the held-out test split: predictions, quality,
   size, CPU latency and throughput -> `predictions/`, `evaluation.json`.
6. `export`:   the distilled student as serving SavedModel, TF-Hub-format
   encoder and TFLite files with mobile metadata -> `export/`.
7. `seeds`:    with `distill.seeds` > 1, steps 3 and 4 again with more seeds,
   each pair scored on the test split -> `seeds/` (`kd_tf.pipeline.seeds`).
8. `report`:   `report.json`, `report.md` and plots, recomputed from the saved
   predictions.

The data and its splits come from `classification_data`; the students from `students`; fitting (stop on
a non-finite loss, best finite epoch) from `training`. Training never saves non-finite weights, and no
step loads them. A finished run is opened again by `kd_tf.pipeline.finished_run` (predictions on new
texts, scores on other labelled files).
"""

from __future__ import annotations

import os

import numpy as np

from kd_tf.json_files import strict_json, write_json
from kd_tf.pipeline.classification_data import data_fingerprint, load_splits, pin_splits
from kd_tf.pipeline.run_folder import PipelineError

MODEL_ROLES = ("teacher", "student", "baseline")
TRAINING_STEPS = {"teacher": "teacher", "student": "distill", "baseline": "baseline"}
"""The step that trains each model of a run."""
REPORT_FILES = ("report.json", "report.md")


def _log(message):
    print(message, flush=True)


def resolve_teacher_handles(config):
    """`(encoder, preprocessor)` handles of the teacher of a run config.

    A local preset (`kd-tf:all-MiniLM-L6-v2`) is converted once into `kd_tf.paths.model_cache_dir()`
    and brings its own preprocessor.

    Args:
        config: a `kd_tf.config.RunConfig`.

    Returns:
        `(encoder handle, preprocessor handle)`.

    Raises:
        PipelineError: if no preprocessor is given for a teacher that brings none.

    Example:
    ```python
    encoder, preprocessor = resolve_teacher_handles(load_config("configs/demo.yaml"))
    ```
    """
    from kd_tf.bert.presets import LOCAL_PRESETS, preset_folders

    encoder, preprocessor = config.teacher.encoder, config.teacher.preprocessor
    if encoder in LOCAL_PRESETS:
        folders = preset_folders(encoder, log=_log)
        encoder, preprocessor = folders["encoder"], preprocessor or folders["preprocessor"]
    if preprocessor is None:
        raise PipelineError(
            "teacher.preprocessor: give a TF Hub preprocessor handle "
            "(only kd-tf:all-MiniLM-L6-v2 brings its own)."
        )
    return encoder, preprocessor


class ClassificationRun:
    """The steps of a text-classification run (see the module docstring), one method each.

    `kd_tf.pipeline.Pipeline` calls `check()`, then `step_<name>()` in order, and records each finished
    step. A step moves its previous outputs aside (`RunFolder.set_aside`) before it writes new ones, so a
    step that fails leaves the last good ones in place.

    Args:
        config: a `kd_tf.config.RunConfig`.
        folder: the run's `kd_tf.pipeline.RunFolder`.
        verbose: Keras progress bars (1) or one line per epoch (2).

    Example:
    ```python
    run = ClassificationRun(load_config("configs/demo.yaml"), RunFolder(config))
    run.step_teacher()
    ```
    """

    steps = ("teacher", "cache", "distill", "baseline", "evaluate", "export", "seeds", "report")

    def __init__(self, config, folder, verbose=1):
        self.config = config
        self.folder = folder
        self.verbose = verbose
        self._splits = None
        self._handles = None
        self._preprocessor = None
        self._teacher_logits = None

    # -------------------------------------------------------------- checks before anything runs
    def skips(self, step):
        """Whether the config leaves `step` out (no label-only baseline, no teacher cache, one seed)."""
        distill = self.config.distill
        return (
            (step == "baseline" and not distill.baseline)
            or (step == "cache" and not distill.cache_teacher)
            or (step == "seeds" and distill.seeds == 1)
        )

    def stale(self, step, record):
        """Whether a finished step's record no longer fits the config: the seeds step of another count."""
        return step == "seeds" and record.get("seeds") != self.config.distill.seeds

    def check(self):
        """Checks what can be checked before the teacher trains: can the student be cut from it?

        Raises:
            PipelineError: if `student.init_layers` cannot be cut from the teacher (a published TF Hub
                teacher, or blocks beyond a local teacher's depth).
        """
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
        self.check_layers(depth, teacher)

    def check_layers(self, depth, teacher):
        """Raises PipelineError if `student.init_layers` names a block beyond the teacher's `depth`."""
        layers = self.config.student.init_layers
        if max(layers) >= depth:
            raise PipelineError(
                f"student.init_layers: {layers} names block {max(layers)}, but the teacher {teacher} has "
                f"{depth} blocks (0..{depth - 1}). Choose blocks that exist."
            )

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
        if self._preprocessor is None:
            from kd_tf.bert import HubPreprocessor

            self._preprocessor = HubPreprocessor(self.handles[1], seq_length=self.config.data.seq_length)
        return self._preprocessor

    def dataset(self, data, shuffle=False, seed=None, **kwargs):
        """`kd_tf.classify.make_dataset` with the run's tokenizer, batch size, bucketing and seed."""
        from kd_tf import classify as data_lib

        d = self.config.data
        kwargs.setdefault("bucketing", d.bucketing)
        seed = self.config.seed if seed is None else seed
        return data_lib.make_dataset(
            data, self.preprocessor, batch_size=d.batch_size, shuffle=shuffle, seed=seed, **kwargs
        )

    def _callbacks(self, name):
        import keras

        return [keras.callbacks.TensorBoard(self.folder.path("logs", name))]

    def load_model(self, role):
        """The trained Keras model of `role` ("teacher", "student" or "baseline").

        Raises:
            PipelineError: if it does not exist, or holds non-finite weights.
        """
        import keras

        from kd_tf.pipeline import training

        path = self.folder.path(role, "model.keras")
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

    def fit(self, trainer, model, train_ds, patience, section, what, log_name):
        """Fits `trainer` (`model` itself or a Distiller) and leaves `model` with its best finite epoch.

        Args:
            trainer: what `fit()` is called on.
            model: the model whose weights are kept.
            train_ds: the training `tf.data.Dataset`.
            patience: epochs without validation gain before stopping.
            section: the config section of its settings (`"teacher"` or `"student"`).
            what: the model in words, for messages.
            log_name: its TensorBoard folder under `logs/`.

        Returns:
            A `kd_tf.pipeline.training.FitResult`.
        """
        from kd_tf.pipeline import training

        lr = getattr(self.config, section).learning_rate
        return training.fit_keep_best(
            trainer,
            model,
            train_ds,
            self.dataset(self.splits["validation"]),
            epochs=getattr(self.config, section).epochs,
            patience=patience,
            callbacks=self._callbacks(log_name),
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
        self.folder.set_aside([role] + (["student_init"] if role == "teacher" else []))
        os.makedirs(self.folder.path(role))
        training.save_model(model, self.folder.path(role, "model.keras"), what)
        result.save(self.folder.path(role, "history.json"))
        return {
            "training_seconds": result.seconds,
            "best_val_accuracy": result.best_val_accuracy,
            "best_epoch": result.best_epoch,
            "status": result.status,
        }

    # -------------------------------------------------------------- steps
    def step_teacher(self):
        import keras

        from kd_tf.bert import hub_format
        from kd_tf.classify import models
        from kd_tf.pipeline import training

        t, d = self.config.teacher, self.config.data
        self._teacher_logits = None  # of the teacher being replaced
        keras.utils.set_random_seed(self.config.seed)
        splits = self.splits
        model = models.build_classifier(
            self.handles[0],
            len(splits["label_names"]),
            pooling=t.pooling,
            dropout=t.dropout,
            freeze_word_embeddings=t.freeze_word_embeddings,
            name="teacher",
        )
        total = training.steps_per_epoch(len(splits["train"]), d.batch_size) * t.epochs
        model.compile(
            optimizer=training.optimizer(t.learning_rate, t.weight_decay, t.warmup_fraction, total),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
            jit_compile=self.jit_for_keras(),
        )
        train_ds = self.dataset(splits["train"], shuffle=True)
        result = self.fit(
            model, model, train_ds, t.early_stopping_patience, "teacher", "the teacher", "teacher"
        )
        details = self._save("teacher", model, result)
        encoder = models.find_encoder(model)
        hub_dir = self.folder.path("teacher", "hub_encoder")
        if os.path.exists(os.path.join(encoder.handle, hub_format.METADATA_FILE)):
            # The fine-tuned encoder in TF Hub format: students are cut from it.
            keras_encoder = hub_format.load_bert_encoder(encoder.handle, variables=encoder.saved_variables)
            hub_format.save_bert_encoder(keras_encoder, hub_dir)
        else:  # a published TF Hub encoder: kd-tf cannot rebuild its architecture
            hub_dir = None
        return {**details, "hub_encoder": hub_dir}

    def train_set(self):
        """Labelled training texts plus the transfer set (labelled -1), in a fixed order."""
        splits = self.splits
        if splits["transfer"] is None:
            return splits["train"]
        return splits["train"].add_unlabeled(splits["transfer"])

    def teacher_logits(self):
        """The teacher's logits over `train_set()`, from its cache (computed if missing).

        Returns:
            `(cache key, logits [N, C] numpy array)` in the order of the texts.

        Raises:
            PipelineError: if a logit is not finite (nothing is distilled from it).
        """
        from kd_tf.distill import TeacherCache

        if self._teacher_logits is not None:
            return self._teacher_logits
        data = self.train_set()
        cache = TeacherCache(
            self.folder.path("teacher_cache"),
            self.load_model("teacher"),
            batch_size=self.config.data.batch_size,
            progress=self.verbose == 1,
        )
        dataset = self.dataset(data, bucketing=False, include_labels=False).unbatch()
        key = cache.build(dataset, dataset_id=f"{data_fingerprint(data)}/{self.config.data.seq_length}")
        logits = np.asarray(cache.load(key)["logits"])
        bad = int(np.sum(~np.isfinite(logits).all(axis=-1)))
        if bad:
            raise PipelineError(
                f"the teacher's cached logits ({cache.path(key)}) are not finite for {bad} of "
                f"{len(logits)} texts; delete that folder and rerun the teacher step with --force."
            )
        self._teacher_logits = key, logits
        return key, logits

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
        import tensorflow as tf

        from kd_tf import export
        from kd_tf.classify import evaluate, models

        e = self.config.evaluate
        test = self.splits["test"]
        test_ds = self.dataset(test, bucketing=False)
        texts = [str(t) for t in test.texts[: e.throughput_examples]]
        speed_inputs = self.preprocessor(tf.constant(texts))
        trained = {role: self.load_model(role) for role in self.roles()}
        self.folder.set_aside(["predictions", "savedmodel", "evaluation.json"])
        results = {}
        for role, model in trained.items():
            logits, labels = evaluate.predict_logits(model, test_ds)
            evaluate.save_predictions(
                self.folder.path("predictions", f"{role}.npz"), logits, labels, ids=test.ids
            )
            speed = evaluate.measure_speed(
                model, speed_inputs, runs=e.latency_runs, throughput_batch=self.config.data.batch_size
            )
            saved = self.folder.path("savedmodel", role)
            model.export(saved, verbose=False)
            encoder = models.find_encoder(model)
            config = _encoder_config(encoder.handle)
            tflite = export.convert_to_tflite(model, self.config.export.seq_length)
            results[role] = {
                "parameters": models.parameter_count(model),
                "savedmodel_bytes": evaluate.directory_bytes(saved),
                "tflite_bytes": len(tflite),
                "layers": config.get("num_layers"),
                "hidden_size": config.get("hidden_size"),
                "encoder": encoder.handle,
                **speed,
            }
            _log(
                f"  {role}: accuracy {np.mean(logits.argmax(1) == labels):.4f}, "
                f"{results[role]['parameters']:,} parameters, "
                f"{speed['latency_ms']:.1f} ms at batch 1"
            )
        write_json(self.folder.path("evaluation.json"), results)
        return {"models": list(results)}

    def step_export(self):
        from kd_tf import export

        if not self.config.export.enabled:
            return {"skipped": True}
        student = self.load_model("student")
        train = self.splits["train"]
        self.folder.set_aside(["export"])
        result = export.export_student(
            student,
            self.folder.path("export"),
            preprocessor=self.handles[1],
            label_names=self.splits["label_names"],
            # 300 texts: the 99% label-agreement gate then tolerates 3 flips.
            sample_texts=[str(t) for t in self.splits["test"].texts[:300]],
            calibration_texts=[str(t) for t in train.texts[:200]],
            seq_length=self.config.export.seq_length,
            variants=tuple(self.config.export.variants),
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


def _encoder_config(handle):
    from kd_tf.bert import hub_format

    try:
        return hub_format.read_encoder_metadata(handle)["config"]
    except (ValueError, OSError):
        return {}
