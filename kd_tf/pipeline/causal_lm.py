"""The causal-LM distillation run (`task: causal_lm`): its steps, one method each.

1. `teacher`:  load the teacher (`causal_lm.teacher`), check that the student's blocks exist, record its
   size and weight fingerprint (the key of its cached targets).
2. `windows`:  the corpus, split into training and held-out documents (seeded, no text on both sides);
   the training windows (`kd_tf.lm.lm_windows`: the first `train_tokens` tokens, whole batches) ->
   `data/windows.npz`; the token streams scored by the evaluation (WikiText-2 test and the held-out
   documents packed as in training) -> `data/evaluation.npz`.
3. `cache`:    the teacher's sparse targets over the windows (`kd_tf.distill.SparseTeacherCache`), built
   once -> `teacher_cache/` (skipped with `train.targets: live`).
4. `distill`:  a student cut from the teacher's blocks (`kd_tf.lm.cut_student`), distilled
   (`kd_tf.lm.distill_causal_lm`), evaluated at evenly spaced steps -> `student/` (`model.keras`,
   `curve.json`, `history.json`).
5. `baseline`: the same cut student on the same windows in the same order with next-token cross-entropy
   alone, under the same time budget and never more steps than the distilled student -> `baseline/`.
6. `evaluate`: the three models on the same tokens: sliding-window perplexity on both texts, top-1
   agreement with the teacher, batch-1 generation speed with the KV cache (models taking turns), size,
   greedy continuations of fixed prompts -> `evaluation.json`.
7. `report`:   `report.json`, `report.md` and the perplexity-against-tokens plot (`kd_tf.lm.report`).

A student's training time is the wall time of `distill_causal_lm` (set-up, tracing and `fit`) less the
evaluations during training; the teacher cache's time is its own step's.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import time

import numpy as np

from kd_tf.json_files import strict_json, write_json
from kd_tf.pipeline.run_folder import PipelineError

WIKITEXT_FILE = os.path.join("text", "wikitext2_raw_test.txt")
WIKITEXT_SLICE = os.path.join("tests", "data", "lm_wikitext2_test_head.txt")
TEXTS = ("wikitext", "heldout")
"""The evaluation texts: WikiText-2 test and the held-out documents of the corpus."""
ROLES = ("teacher", "student", "baseline")
STUDENT_TARGETS = {"student": None, "baseline": "none"}
"""`distill_causal_lm` targets of each student (None: the config's)."""


def wikitext_path(path=None):
    """The WikiText-2 text a run scores: `path`, else the full test split, else the committed slice.

    Args:
        path: `causal_lm.evaluate.wikitext_path`, or None.

    Returns:
        `(path, which)`, where `which` says in words which text it is.

    Raises:
        PipelineError: if `path` does not exist, or neither default does.

    Example:
    ```python
    wikitext_path()  # ('../shared/data/text/wikitext2_raw_test.txt', 'WikiText-2 raw test split')
    ```
    """
    from kd_tf.paths import default_data_dir

    if path is not None:
        if not os.path.isfile(path):
            raise PipelineError(f"causal_lm.evaluate.wikitext_path: {path} is not a file; fix the path.")
        return path, f"WikiText-2 text at {path}"
    full = os.path.join(default_data_dir(), WIKITEXT_FILE)
    if os.path.isfile(full):
        return full, "WikiText-2 raw test split"
    here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    slice_path = os.path.join(here, WIKITEXT_SLICE)
    if os.path.isfile(slice_path):
        return slice_path, "WikiText-2 raw test split, its first 645 tokens (the committed slice)"
    raise PipelineError(
        f"No WikiText-2 text: neither {full} nor {slice_path} exists. Set causal_lm.evaluate.wikitext_path "
        "to the WikiText-2 raw test file (or KD_TF_DATA_DIR to the data folder)."
    )


def packed_ids(corpus, model):
    """The token ids of a corpus packed as training packs it: `sep d1 sep d2 ... sep dn sep`.

    The held-out documents are scored as one text in this form, so the students see the document
    boundaries they were trained with (`kd_tf.lm.windows`).

    Args:
        corpus: a `kd_tf.lm.TextCorpus` of plain documents.
        model: the `CausalLM` (or tokenizer) whose tokenizer and separator are used.

    Returns:
        An int32 numpy array of token ids.

    Example:
    ```python
    packed_ids(heldout, teacher)[:5]
    ```
    """
    from kd_tf.lm import separator_id, tokenize

    separator = np.asarray([separator_id(model)], np.int32)
    parts = [separator]
    for ids in tokenize(model, list(corpus.texts)):
        parts += [np.asarray(ids, np.int32), separator]
    return np.concatenate(parts)


def scoring_windows(ids, window, stride, tokens=None):
    """The windows of `kd_tf.lm.perplexity` that score the first `tokens` tokens of `ids` after the first.

    Args:
        ids: int array of token ids (a text tokenized without special tokens, or `packed_ids`).
        window: input tokens per window.
        stride: tokens between window starts, `1..window`.
        tokens: how many tokens to score (`ids[1 : tokens + 1]`), or None for all.

    Returns:
        The dict of arrays of `kd_tf.lm.cut_windows`, ready for `kd_tf.lm.token_metrics`.

    Raises:
        ValueError: if `stride` is outside `1..window`.

    Example:
    ```python
    token_metrics(models, scoring_windows(ids, 128, 64, tokens=2048), reference="teacher")
    ```
    """
    from kd_tf.lm import cut_windows

    ids = np.asarray(ids if tokens is None else ids[: tokens + 1], np.int32)
    return cut_windows(ids, np.ones(len(ids), np.float32), window, stride)


def _checkpoints(student, texts, marks, tokens_per_step, budget_s, max_steps, batch_size, start=None):
    """A Keras callback that evaluates `student` at `marks` (steps), counts its steps and training seconds
    (from `start`, a `time.perf_counter()` value, or else from the start of `fit`; evaluations excluded)
    and stops it at `budget_s` or `max_steps`."""
    import keras

    from kd_tf.lm import token_metrics

    class Checkpoints(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.points, self.steps, self.eval_seconds, self.stopped_by = [], 0, 0.0, "tokens"
            self.start = start

        def training_seconds(self):
            return time.perf_counter() - self.start - self.eval_seconds

        def evaluate(self):
            begin = time.perf_counter()
            perplexity = {
                name: token_metrics(student, arrays, batch_size=batch_size)["model"]["perplexity"]
                for name, arrays in texts.items()
            }
            self.points.append(
                dict(
                    steps=self.steps,
                    tokens=self.steps * tokens_per_step,
                    seconds=begin - self.start - self.eval_seconds,
                    perplexity=perplexity,
                )
            )
            self.eval_seconds += time.perf_counter() - begin

        def on_train_begin(self, logs=None):
            if self.start is None:
                self.start = time.perf_counter()
            self.evaluate()

        def on_train_batch_end(self, batch, logs=None):
            self.steps += 1
            if self.steps in marks:
                self.evaluate()
            if max_steps is not None and self.steps >= max_steps:
                self.model.stop_training, self.stopped_by = True, "steps"
            elif budget_s is not None and self.training_seconds() >= budget_s:
                self.model.stop_training, self.stopped_by = True, "time budget"

        def on_train_end(self, logs=None):
            if self.points[-1]["steps"] != self.steps:
                self.evaluate()
            self.seconds = self.training_seconds()

    return Checkpoints()


class CausalLMRun:
    """The steps of a causal-LM distillation run (see the module docstring), one method each.

    `kd_tf.pipeline.Pipeline` calls `check()`, then `step_<name>()` in order, and records each finished
    step; a step moves its previous outputs aside (`RunFolder.set_aside`) before it writes new ones.

    Args:
        config: a `kd_tf.config.RunConfig` with `task: causal_lm`.
        folder: the run's `kd_tf.pipeline.RunFolder`.
        verbose: Keras progress bars (1) or one line per epoch (2).

    Example:
    ```python
    config = load_config("configs/lm_demo.yaml")
    records = Pipeline(config, task=CausalLMRun).run()
    records["distill"]["tokens"]
    ```
    """

    steps = ("teacher", "windows", "cache", "distill", "baseline", "evaluate", "report")

    def __init__(self, config, folder, verbose=1):
        self.config = config
        self.lm = config.causal_lm
        self.folder = folder
        self.verbose = verbose
        self._teacher = None

    # -------------------------------------------------------------- what the runner asks
    def skips(self, step):
        """The cache step is skipped when the teacher runs live."""
        return step == "cache" and self.lm.train.targets != "sparse"

    def stale(self, step, record):
        """The evaluate and report steps run again when the evaluation settings changed."""
        return step in ("evaluate", "report") and record.get("settings") != self._evaluate_settings()

    def check(self):
        """Nothing to check before the teacher step, which checks the student's blocks against it."""

    def _evaluate_settings(self):
        return strict_json(dataclasses.asdict(self.lm.evaluate))

    # -------------------------------------------------------------- shared pieces
    def teacher_source(self):
        """The teacher's folder or file (`kd-tf:SmolLM2-135M-Instruct` is converted once into the cache)."""
        if self.lm.teacher == "kd-tf:SmolLM2-135M-Instruct":
            from kd_tf.lm import smollm2_preset_dir

            return smollm2_preset_dir()
        return self.lm.teacher

    @property
    def teacher(self):
        """The teacher `CausalLM`, loaded once."""
        if self._teacher is None:
            from kd_tf.lm import load_causal_lm

            self._teacher = load_causal_lm(self.teacher_source())
        return self._teacher

    def record(self, step):
        record = self.folder.record(step)
        if record is None:
            raise PipelineError(f"the {step} step has not finished in {self.folder.root}; run it first.")
        return record

    def windows(self):
        """The training windows (`data/windows.npz`) as unbatched `(x, labels, sample_weight)` elements."""
        import tensorflow as tf

        with np.load(self.folder.path("data", "windows.npz")) as f:
            arrays = {k: f[k] for k in f.files}
        x = {"token_ids": arrays["token_ids"], "padding_mask": arrays["padding_mask"]}
        return tf.data.Dataset.from_tensor_slices((x, arrays["labels"], arrays["sample_weight"]))

    def evaluation_ids(self):
        """`{text: token ids}` of the evaluation texts (`data/evaluation.npz`)."""
        with np.load(self.folder.path("data", "evaluation.npz")) as f:
            return {name: f[name] for name in TEXTS}

    def _cache_settings(self):
        t = self.lm.train
        return dict(
            k=t.k, mode=t.mode, samples=t.samples if t.mode == "top_k" else 0, temperature=t.temperature
        )

    def model_path(self, role):
        return self.folder.path(role, "model.keras")

    # -------------------------------------------------------------- steps
    def step_teacher(self):
        from kd_tf.distill.cache import model_fingerprint
        from kd_tf.lm import model_size

        teacher = self.teacher
        depth = len(teacher.backbone.transformer_layers)
        bad = [b for b in self.lm.student_blocks if b >= depth]
        if bad:
            raise PipelineError(
                f"causal_lm.student_blocks: the teacher {self.lm.teacher} has {depth} blocks "
                f"(0..{depth - 1}); block {bad[0]} does not exist. Choose blocks of the teacher."
            )
        return {
            "model": self.teacher_source(),
            "blocks": depth,
            "vocabulary_size": int(teacher.backbone.vocabulary_size),
            "fingerprint": model_fingerprint([teacher]),
            **model_size(teacher),
        }

    def step_windows(self):
        from kd_tf import lm

        d, e = self.lm.data, self.lm.evaluate
        if d.source == "imdb":
            corpus = lm.load_imdb_corpus(limit=d.documents)
        elif d.source == "text":
            corpus = lm.load_text_corpus(d.path)
        else:
            corpus = lm.load_jsonl_corpus(d.path, text_key=d.text_key)
        if d.documents is not None and d.source != "imdb":
            corpus = corpus.subset(range(min(d.documents, len(corpus))), f"first {d.documents}")
        try:
            train, heldout = corpus.split(d.heldout_fraction, seed=self.config.seed)
        except ValueError as error:
            raise PipelineError(f"causal_lm.data: {error}") from None
        teacher = self.teacher
        all_windows = lm.lm_windows(train, teacher, d.sequence_length)
        available = int(all_windows.cardinality())
        count = d.train_tokens // (d.sequence_length * d.batch_size) * d.batch_size
        if count < d.batch_size or count > available:
            raise PipelineError(
                f"causal_lm.data.train_tokens: {d.train_tokens:,} tokens make {count} windows of "
                f"{d.sequence_length} in whole batches of {d.batch_size}, and the {len(train):,} training "
                f"documents give {available} windows ({available * d.sequence_length:,} tokens). Choose "
                f"train_tokens between {d.sequence_length * d.batch_size:,} and "
                f"{available // d.batch_size * d.batch_size * d.sequence_length:,}, or read more documents "
                "(causal_lm.data.documents)."
            )
        x, labels, weights = next(iter(all_windows.take(count).batch(count)))
        arrays = {
            "token_ids": x["token_ids"].numpy(),
            "padding_mask": x["padding_mask"].numpy(),
            "labels": labels.numpy(),
            "sample_weight": weights.numpy(),
        }
        path, which = wikitext_path(e.wikitext_path)
        with open(path, encoding="utf-8") as f:
            wikitext = lm.tokenize(teacher, f.read())
        streams = {"wikitext": wikitext, "heldout": packed_ids(heldout, teacher)}
        limits = {"wikitext": e.wikitext_tokens, "heldout": e.heldout_tokens}
        for name, ids in streams.items():
            if len(ids) < 2:
                raise PipelineError(
                    f"the {name} evaluation text has {len(ids)} token(s); it needs 2 or more."
                )
        digest = hashlib.sha256()
        for key in sorted(arrays):
            digest.update(key.encode() + np.ascontiguousarray(arrays[key]).tobytes())
        self.folder.set_aside(["data"])
        os.makedirs(self.folder.path("data"))
        np.savez(self.folder.path("data", "windows.npz"), **arrays)
        np.savez(self.folder.path("data", "evaluation.npz"), **streams)
        texts = {
            "wikitext": {"path": path, "which": which},
            "heldout": {
                "which": f"{len(heldout):,} held-out documents of {corpus.source}, packed as in training"
            },
        }
        for name, ids in streams.items():
            scored = len(ids) - 1 if limits[name] is None else min(limits[name], len(ids) - 1)
            texts[name].update(tokens_available=len(ids) - 1, tokens_scored=scored)
        return {
            "source": corpus.source,
            "documents": {"train": len(train), "heldout": len(heldout)},
            "windows": count,
            "windows_available": available,
            "sequence_length": d.sequence_length,
            "tokens": count * d.sequence_length,
            "learnt_tokens": int(arrays["sample_weight"].sum()),
            "fingerprint": digest.hexdigest()[:32],
            "texts": texts,
        }

    def step_cache(self):
        from kd_tf.distill import SparseTeacherCache

        self.folder.set_aside(["teacher_cache"])
        cache = SparseTeacherCache(
            self.folder.path("teacher_cache"),
            self.teacher,
            seed=self.config.seed,
            teacher_id=self.record("teacher")["fingerprint"],
            progress=self.verbose == 1,
            **self._cache_settings(),
        )
        try:
            key = cache.build(self.windows(), dataset_id=self.record("windows")["fingerprint"])
        except ValueError as error:  # non-finite teacher outputs: nothing was stored
            raise PipelineError(
                f"the cache step of {self.folder.root}: {error} Check the teacher ({self.lm.teacher}): "
                "its outputs must be finite on the training windows."
            ) from None
        return {"key": key, "bytes_per_token": cache.bytes_per_token(key), **self._cache_settings()}

    def _train(self, role):
        """Trains the `role` student (`student`: distilled, `baseline`: cross-entropy alone) and saves it."""
        import keras

        from kd_tf.lm import cut_student, distill_causal_lm
        from kd_tf.pipeline.training import TrainingDiverged, save_model

        d, t, e = self.lm.data, self.lm.train, self.lm.evaluate
        targets = STUDENT_TARGETS[role] or t.targets
        windows = self.windows()
        steps_per_epoch = int(windows.cardinality()) // d.batch_size
        total = steps_per_epoch * t.epochs
        max_steps = None if role == "student" else self.record("distill")["steps"]
        ids = self.evaluation_ids()
        texts = {name: scoring_windows(ids[name], e.window, e.window, t.curve_tokens) for name in TEXTS}
        marks = {max(1, round(total * (i + 1) / t.checkpoints)) for i in range(t.checkpoints)}
        keras.utils.set_random_seed(self.config.seed)
        student = cut_student(self.teacher, self.lm.student_blocks, name=f"{role}_backbone")
        checkpoints = _checkpoints(  # the clock runs from here: set-up and tracing count as training
            student,
            texts,
            marks,
            d.batch_size * d.sequence_length,
            t.time_budget_s,
            max_steps,
            e.batch_size,
            start=time.perf_counter(),
        )
        history = distill_causal_lm(
            self.teacher,
            student,
            windows,
            batch_size=d.batch_size,
            epochs=t.epochs,
            targets=targets,
            cache_dir=self.folder.path("teacher_cache"),
            seed=self.config.seed,
            alpha=t.alpha,
            optimizer=keras.optimizers.Adam(t.learning_rate),
            callbacks=[keras.callbacks.TerminateOnNaN(), checkpoints],
            verbose=self.verbose,
            teacher_id=self.record("teacher")["fingerprint"],
            dataset_id=self.record("windows")["fingerprint"],
            **self._cache_settings(),
        )
        what = "the distilled student" if role == "student" else "the cross-entropy student"
        self.folder.set_aside([role])
        os.makedirs(self.folder.path(role))
        try:
            save_model(student, self.model_path(role), what)
        except TrainingDiverged as error:
            raise TrainingDiverged(
                f"{error} Lower causal_lm.train.learning_rate (now {t.learning_rate:g}) and run again."
            ) from None
        write_json(self.folder.path(role, "curve.json"), checkpoints.points)
        write_json(self.folder.path(role, "history.json"), history.history)
        return {
            "targets": targets,
            "steps": checkpoints.steps,
            "tokens": checkpoints.steps * d.batch_size * d.sequence_length,
            "training_seconds": checkpoints.seconds,
            "evaluation_seconds": checkpoints.eval_seconds,
            "stopped_by": checkpoints.stopped_by,
            "planned_steps": total if max_steps is None else min(total, max_steps),
            "perplexity": checkpoints.points[-1]["perplexity"],
        }

    def step_distill(self):
        return self._train("student")

    def step_baseline(self):
        return self._train("baseline")

    def load_models(self):
        """`{role: CausalLM}` of the teacher and both trained students."""
        from kd_tf.lm import load_causal_lm

        models = {"teacher": self.teacher}
        for role in ROLES[1:]:
            if not os.path.exists(self.model_path(role)):
                raise PipelineError(
                    f"{self.model_path(role)} does not exist: run the step that trains it first."
                )
            models[role] = load_causal_lm(self.model_path(role))
        return models

    def step_evaluate(self):
        from kd_tf.lm import generation_speed, model_size, side_by_side, token_metrics

        e = self.lm.evaluate
        models = self.load_models()
        ids = self.evaluation_ids()
        limits = {"wikitext": e.wikitext_tokens, "heldout": e.heldout_tokens}
        quality = {
            name: token_metrics(
                models, scoring_windows(ids[name], e.window, e.stride, limits[name]), "teacher", e.batch_size
            )
            for name in TEXTS
        }
        curve = {  # the teacher on the texts of the students' checkpoints: the plot's reference line
            name: token_metrics(
                models["teacher"], scoring_windows(ids[name], e.window, e.window, self.lm.train.curve_tokens)
            )["model"]["perplexity"]
            for name in TEXTS
        }
        for model in models.values():
            model.jit_compile = e.jit_compile
        rounds = {role: [] for role in models}
        for _ in range(e.speed_rounds):
            for role, model in models.items():
                rounds[role].append(
                    generation_speed(model, e.prompts[0], new_tokens=e.speed_new_tokens, runs=e.speed_runs)
                )
        results = {}
        for role, model in models.items():
            best = max(rounds[role], key=lambda speed: speed["tokens_per_s"])
            results[role] = {
                "blocks": len(model.backbone.transformer_layers),
                **model_size(model),
                "quality": {name: quality[name][role] for name in TEXTS},
                "generation": {**best, "rounds_tokens_per_s": [r["tokens_per_s"] for r in rounds[role]]},
            }
        generations = side_by_side(models, list(e.prompts), new_tokens=e.new_tokens)
        self.folder.set_aside(["evaluation.json"])
        write_json(
            self.folder.path("evaluation.json"),
            {
                "settings": self._evaluate_settings(),
                "models": results,
                "teacher_curve_perplexity": curve,
                "generations": generations,
            },
        )
        return {
            "settings": self._evaluate_settings(),
            "perplexity": {
                role: {n: r["quality"][n]["perplexity"] for n in TEXTS} for role, r in results.items()
            },
            "tokens_per_s": {role: r["generation"]["tokens_per_s"] for role, r in results.items()},
        }

    def step_report(self):
        from kd_tf.lm import report

        built = report.build_report(self.folder.root)
        self.folder.set_aside(list(report.REPORT_FILES))
        paths = report.write_report(built, self.folder.root)
        report.print_summary(built)
        return {"settings": self._evaluate_settings(), "files": paths}


__all__ = ["CausalLMRun", "packed_ids", "scoring_windows", "wikitext_path"]
