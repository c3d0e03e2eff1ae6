"""A finished run, opened again from its folder: its models, its labels, predictions on new texts.

A run folder holds its resolved `config.yaml`, every trained model and its label names
(`data/splits.json`), so it can be used without its original config file or command line: `open_run`
rebuilds its `ClassificationRun` (the same tokenizer and batching as training), and `predict_texts`
gives every model's probabilities on any texts (`kd-tf predict RUN_DIR "some text"`).
`kd_tf.pipeline.test_sets` scores the models on other labelled files.
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np

from kd_tf.pipeline.classification import MODEL_ROLES, TRAINING_STEPS, ClassificationRun
from kd_tf.pipeline.run_folder import PipelineError, RunFolder


def open_run(run_dir, verbose=2):
    """The `ClassificationRun` of a run folder, from the `config.yaml` it holds.

    The folder may have moved: its own location replaces the config's `output_dir` and `run_name`.

    Args:
        run_dir: a run folder (e.g. `saved_models/demo`).
        verbose: Keras verbosity of anything it trains (1 or 2).

    Returns:
        A `ClassificationRun` whose folder is `run_dir`.

    Raises:
        PipelineError: if `run_dir` holds no kd-tf run.
        kd_tf.config.ConfigError: if its `config.yaml` is not a valid config.

    Example:
    ```python
    run = open_run("saved_models/demo")
    student = run.load_model("student")
    ```
    """
    from kd_tf import config as config_lib

    root = os.path.abspath(os.fspath(run_dir))
    path = os.path.join(root, "config.yaml")
    if not os.path.isfile(path):
        what = "no such folder" if not os.path.isdir(root) else "no config.yaml in it"
        raise PipelineError(
            f"{run_dir}: not a kd-tf run folder ({what}). Give the folder a run wrote, e.g. "
            f"saved_models/demo after kd-tf demo."
        )
    config = config_lib.load_config(path)
    config = dataclasses.replace(config, output_dir=os.path.dirname(root), run_name=os.path.basename(root))
    return ClassificationRun(config, RunFolder(config), verbose=verbose)


def label_names(run):
    """The label names of a run's models, in output order (from `data/splits.json`).

    Raises:
        PipelineError: if the run has not read its data yet.

    Example:
    ```python
    label_names(open_run("saved_models/demo"))  # ['neg', 'pos']
    ```
    """
    path = run.folder.path("data", "splits.json")
    try:
        with open(path) as f:
            return list(json.load(f)["label_names"])
    except (OSError, ValueError, KeyError) as e:
        raise PipelineError(
            f"{path} is missing or unreadable ({type(e).__name__}), so the run's label names are unknown: "
            f"the run has not trained a model yet. Run kd-tf run (or finetune-teacher) first."
        ) from None


def trained_roles(run):
    """The models of a run whose training step finished: some of "teacher", "student", "baseline".

    Raises:
        PipelineError: if no model of the run has finished training.

    Example:
    ```python
    trained_roles(open_run("saved_models/demo"))  # ['teacher', 'student', 'baseline']
    ```
    """
    roles = [
        role
        for role in MODEL_ROLES
        if run.folder.record(TRAINING_STEPS[role]) is not None
        and os.path.exists(run.folder.path(role, "model.keras"))
    ]
    if not roles:
        raise PipelineError(
            f"{run.folder.root} holds no trained model yet (no finished teacher, distill or baseline step). "
            f"Run kd-tf run first."
        )
    return roles


def _check_roles(roles, available, run):
    unknown = [r for r in roles if r not in available]
    if unknown:
        raise PipelineError(
            f"{run.folder.root} has no trained {', '.join(unknown)}; its models are {', '.join(available)}."
        )


def read_texts(path, text_column=None, limit=None):
    """Texts to classify from a file: a column of a CSV/TSV/JSONL table, or one text a line.

    Args:
        path: a `.csv`, `.tsv` or `.jsonl` table (read with `kd_tf.classify.load_table`), or any other
            text file (one text a line, blank lines skipped).
        text_column: the column (or JSON key) of a table's texts.
        limit: read at most this many texts.

    Returns:
        A list of strings.

    Raises:
        PipelineError: for a table without `text_column`.
        kd_tf.classify.DataError: for a bad table (naming the file and line).

    Example:
    ```python
    read_texts("tests/data/sst2/dev.tsv", "sentence", limit=2)
    ```
    """
    from kd_tf.classify import load_table
    from kd_tf.classify.tables import TABLE_FORMATS
    from kd_tf.export import read_texts as read_lines

    if os.path.splitext(os.fspath(path))[1].lower() in TABLE_FORMATS:
        if text_column is None:
            raise PipelineError(f"{path}: a table; say which column holds the texts (--text-column).")
        return [str(t) for t in load_table(path, text_column, None, limit=limit).texts]
    return read_lines(path, limit)


def predict_texts(run_dir, texts, roles=None):
    """Every model of a run on `texts`: label probabilities, as the run's tokenizer prepares them.

    Args:
        run_dir: a run folder.
        texts: strings to classify.
        roles: models to run, from "teacher", "student", "baseline" (default: every trained one).

    Returns:
        `{"label_names": [...], "texts": [...], "probabilities": {role: float array [N, C]}}`.

    Raises:
        PipelineError: if the folder holds no run or no trained model, a model is unknown, or no text
            is given.
        ValueError: if a text is not a string or is empty.

    Example:
    ```python
    out = predict_texts("saved_models/demo", ["A wonderful film.", "Two hours I will never get back."])
    out["probabilities"]["student"].argmax(1)  # array([1, 0])
    ```
    """
    from kd_tf.classify import TextDataset

    texts = list(texts)
    if not texts:
        raise PipelineError("no text to classify: give one or more texts (or a file of texts).")
    for i, text in enumerate(texts):
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"text {i + 1} ({text!r}) is empty or not a string; give real text.")
    run = open_run(run_dir)
    names = label_names(run)
    available = trained_roles(run)
    roles = list(roles or available)
    _check_roles(roles, available, run)
    probabilities = {}
    for role in roles:  # each model reads its own tokens (a student may have its own vocabulary)
        dataset = run.dataset(TextDataset(texts=texts), bucketing=False, include_labels=False, role=role)
        logits = np.asarray(run.load_model(role).predict(dataset, verbose=0), np.float64)
        shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
        probabilities[role] = shifted / shifted.sum(axis=1, keepdims=True)
    return {"label_names": names, "texts": texts, "probabilities": probabilities}


__all__ = ["label_names", "open_run", "predict_texts", "read_texts", "trained_roles"]
