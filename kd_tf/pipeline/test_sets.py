"""Other test sets: every model of a finished run scored on any labelled file.

`kd-tf evaluate RUN_DIR --test-file FILE` (`evaluate_test_file`) reads a CSV, TSV or JSON Lines file with
`kd_tf.classify.load_table` (its checks name the file and line of bad input), maps its labels by name
onto the run's labels (`kd_tf.classify.relabel.map_labels`), tokenizes it as the run tokenized its own
data, and scores every trained model on it. The results lie beside the run's own:

```
test_sets/<name>/test_set.json          the file, its columns, the label mapping, the models' step tokens
test_sets/<name>/predictions/<role>.npz logits, labels and ids, like predictions/<role>.npz
```

and the run's `report.json` / `report.md` gain the set (accuracy and F1 with intervals, McNemar tests,
the student's cross-domain retention of the teacher's accuracy). A set scored before a model was trained
again is reported as stale. Scoring the same name again replaces it.
"""

from __future__ import annotations

import datetime
import os
import re
import shutil

from kd_tf.json_files import write_json
from kd_tf.pipeline.classification import TRAINING_STEPS
from kd_tf.pipeline.classification_data import data_fingerprint
from kd_tf.pipeline.finished_run import label_names, open_run, trained_roles
from kd_tf.pipeline.run_folder import PipelineError

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
RESERVED_NAMES = ("test",)
"""`test` is the run's own test split (the `models` of `report.json`)."""


def _log(message):
    print(message, flush=True)


def default_name(path):
    """A test set's name from its file: `<folder>-<file stem>` (`sst2-dev` for `data/sst2/dev.tsv`).

    Example:
    ```python
    default_name("../shared/data/sst2/dev.tsv")  # 'sst2-dev'
    ```
    """
    path = os.path.abspath(os.fspath(path))
    stem = os.path.splitext(os.path.basename(path))[0]
    parent = os.path.basename(os.path.dirname(path))
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{parent}-{stem}" if parent else stem).strip("._-")
    return name[:64] or "test_file"


def check_name(name):
    """Returns `name` if it can name a test set (a plain folder name, not `test`), else raises.

    Raises:
        PipelineError: naming the rule.

    Example:
    ```python
    check_name("imdb-test-2")  # 'imdb-test-2'
    ```
    """
    if not isinstance(name, str) or not _NAME.match(name) or name in RESERVED_NAMES:
        raise PipelineError(
            f"test set name {name!r}: use 1 to 64 letters, digits, '.', '_' or '-', starting with a letter "
            f"or digit, and not {', '.join(RESERVED_NAMES)} (the run's own test split); it names the "
            f"folder test_sets/<name>."
        )
    return name


def load_test_file(
    path,
    run_label_names,
    *,
    text_column,
    label_column,
    text_pair_column=None,
    label_map=None,
    clean=False,
):
    """A labelled file as a `TextDataset` labelled with a run's label ids, and the label mapping.

    Args:
        path: a `.csv`, `.tsv` or `.jsonl` file with a header (or JSON keys).
        run_label_names: the run's labels, in id order.
        text_column: the text column (or key).
        label_column: the label column (or key).
        text_pair_column: the second text column of a sentence-pair run, or None.
        label_map: `{label of the file: label of the run}` for names that differ.
        clean: apply `kd_tf.classify.clean_text` (as the IMDB loaders do).

    Returns:
        `(TextDataset, mapping)` (see `kd_tf.classify.relabel.map_labels`).

    Raises:
        kd_tf.classify.DataError: for a bad file or an unmapped label (naming the file, line and fix).

    Example:
    ```python
    data, mapping = load_test_file("tests/data/sst2/dev.tsv", ["neg", "pos"],
                                   text_column="sentence", label_column="label")
    ```
    """
    from kd_tf.classify import load_table
    from kd_tf.classify.relabel import map_labels

    data = load_table(path, text_column, label_column, text_pair_column=text_pair_column, clean=clean)
    return map_labels(data, run_label_names, label_map)


def _replace(tmp, final):
    """Moves the folder `tmp` onto `final`, replacing an earlier one."""
    old = None
    if os.path.lexists(final):
        old = f"{os.path.dirname(final)}/.{os.path.basename(final)}.old-{os.getpid()}"
        os.replace(final, old)
    os.replace(tmp, final)
    if old:
        shutil.rmtree(old, ignore_errors=True)


def evaluate_test_file(
    run_dir,
    path,
    *,
    name=None,
    text_column=None,
    label_column=None,
    text_pair_column=None,
    label_map=None,
    clean=None,
    write_report=True,
):
    """Scores every trained model of a run on a labelled file, beside the run's own results.

    Args:
        run_dir: a run folder.
        path: a labelled `.csv`, `.tsv` or `.jsonl` file.
        name: the test set's name (default `default_name(path)`); the same name again replaces it.
        text_column: the text column; default the run's `data.text_column`.
        label_column: the label column; default the run's `data.label_column`.
        text_pair_column: the second text column; default the run's `data.text_pair_column`.
        label_map: `{label of the file: label of the run}` for names that differ (`{"positive": "pos"}`).
        clean: apply `kd_tf.classify.clean_text`; default as the run's data was read (the IMDB sources
            clean, a table source does not).
        write_report: re-render the run's `report.json`, `report.md` and plots (when it was evaluated).

    Returns:
        The test set's entry of `report.json`: `{file, format, examples, label_mapping, models {role:
        {accuracy, accuracy_interval, f1, f1_interval, ...}}, comparison {student_accuracy_ratio (the
        cross-domain retention), ..., tests}}`.

    Raises:
        PipelineError: if the folder holds no run or no trained model, another process runs it, or the
            name is not a plain name.
        kd_tf.classify.DataError: for a bad file or an unmapped label (naming the file, line and fix).

    Example:
    ```python
    sst2 = evaluate_test_file("saved_models/demo", "tests/data/sst2/dev.tsv", text_column="sentence")
    sst2["comparison"]["student_accuracy_ratio_interval"]  # [0.93, 1.01]
    ```
    """
    from kd_tf.classify import report
    from kd_tf.classify.tables import TABLE_FORMATS

    run = open_run(run_dir)
    d = run.config.data
    name = check_name(name if name is not None else default_name(path))
    columns = {
        "text_column": text_column or d.text_column,
        "label_column": label_column or d.label_column,
        "text_pair_column": text_pair_column if text_pair_column is not None else d.text_pair_column,
    }
    clean = d.source != "table" if clean is None else bool(clean)
    folder = run.folder
    with folder.lock():
        folder.recover()
        names, roles = label_names(run), trained_roles(run)
        data, mapping = load_test_file(path, names, label_map=label_map, clean=clean, **columns)
        _log(
            f"{path}: {len(data)} examples; labels "
            + ", ".join(f"{k} -> {v['label']} ({v['examples']}, by {v['by']})" for k, v in mapping.items())
        )
        root = folder.path(report.TEST_SETS_DIR)
        os.makedirs(root, exist_ok=True)
        for leftover in [n for n in os.listdir(root) if n.startswith(".")]:  # of a killed process
            shutil.rmtree(os.path.join(root, leftover), ignore_errors=True)
        tmp = os.path.join(root, f".{name}.partial-{os.getpid()}")
        try:
            stamps = _score(run, roles, data, tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        write_json(
            os.path.join(tmp, report.TEST_SET_RECORD),
            {
                "name": name,
                "file": os.path.abspath(os.fspath(path)),
                "format": TABLE_FORMATS.get(os.path.splitext(os.fspath(path))[1].lower()),
                "examples": len(data),
                "columns": columns,
                "clean": clean,
                "label_map": dict(label_map or {}),
                "label_mapping": mapping,
                "label_names": names,
                "fingerprint": data_fingerprint(data),
                "load_report": data.report,
                "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "models": stamps,
            },
        )
        _replace(tmp, os.path.join(root, name))
        settings = report.statistics_settings(_config_dict(run))
        entry = report.read_test_set(folder.root, name, settings)
        if write_report and os.path.exists(folder.path("evaluation.json")):
            report.write_report(report.build_report(folder.root), folder.root)
            _log(f"report: {folder.path('report.md')}")
    return entry


def _score(run, roles, data, out):
    """Saves every model's predictions on `data` under `out/predictions/`; returns the models' stamps."""
    from kd_tf.classify import evaluate

    stamps = {}
    for role in roles:
        step = TRAINING_STEPS[role]
        stamps[role] = {"step": step, "token": run.folder.record(step).get("token")}
        dataset = run.dataset(data, bucketing=False, role=role)  # its own tokens
        logits, labels = evaluate.predict_logits(run.load_model(role), dataset)
        evaluate.save_predictions(os.path.join(out, "predictions", f"{role}.npz"), logits, labels, data.ids)
        _log(f"  {role}: accuracy {float((logits.argmax(1) == labels).mean()):.4f}")
    return stamps


def _config_dict(run):
    from kd_tf import config as config_lib

    return config_lib.config_to_dict(run.config)


__all__ = ["check_name", "default_name", "evaluate_test_file", "load_test_file"]
