"""The encoder a run's student starts from: cut from the teacher, sliced narrower, its vocabulary pruned.

`build_student_init(run)` writes it once, from the fine-tuned teacher (`teacher/hub_encoder`):

* the teacher blocks `student.init_layers` are copied whole (`kd_tf.bert.write_student_from_teacher`), or,
  with `student.hidden_size`, `num_heads` or `intermediate_size`, sliced narrower by the importance of each
  unit measured on `student.calibration_texts` training texts (`kd_tf.bert.write_narrow_student`);
* with `student.vocabulary` the word embeddings keep only the wordpieces the run's training texts need
  (counted by the teacher's preprocessor at `data.seq_length`, `kd_tf.bert.prune_vocabulary`), and the
  student gets its own preprocessor (`kd_tf.bert.write_pruned_bert`).

```
student_init/                  the encoder, on the teacher's vocabulary (and with its preprocessor), or:
student_init/encoder/          the encoder, on the pruned vocabulary
student_init/preprocessor/     its TF Hub preprocessor (vocab.txt inside, for MediaPipe's metadata)
student_init/vocab.txt
student_init/vocabulary.json   the pruning: setting, kept tokens, coverage of the training text, kept ids
```

`student_files(run)` says where they are (or will be) without writing anything: training, evaluation,
prediction and export read the student's preprocessor from there. The teacher's cached logits need no
change: they are per text, whatever the student's tokenizer.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile

from kd_tf.json_files import write_json
from kd_tf.pipeline.run_folder import PipelineError

INIT_DIR = "student_init"
VOCABULARY_RECORD = "vocabulary.json"


@dataclasses.dataclass(frozen=True)
class StudentFiles:
    """Where a run's student encoder and preprocessor are.

    Attributes:
        encoder: the student's initial encoder folder (its `.keras` file names it as its handle).
        preprocessor: the student's preprocessor handle: the teacher's, or the pruned one.
        vocabulary: the pruning record (`vocabulary.json`), or None with the teacher's vocabulary.

    Example:
    ```python
    student_files(run).preprocessor  # 'saved_models/demo/student_init/preprocessor'
    ```
    """

    encoder: str
    preprocessor: str
    vocabulary: str = None

    @property
    def ready(self):
        """Whether the folder was written whole (its last file is in place)."""
        last = self.vocabulary or os.path.join(self.encoder, "saved_model.pb")
        return os.path.exists(last)


def student_files(run):
    """The student's encoder and preprocessor of `run` (given, or in its `student_init/`).

    Args:
        run: a `kd_tf.pipeline.ClassificationRun` (its config and student folder).

    Returns:
        A `StudentFiles`.

    Example:
    ```python
    student_files(run).encoder  # 'saved_models/demo/student_init'
    ```
    """
    s = run.config.student
    if s.encoder is not None:
        return StudentFiles(s.encoder, run.handles[1])
    root = run.student_path(INIT_DIR)
    if s.vocabulary is None:
        return StudentFiles(root, run.handles[1])
    return StudentFiles(
        os.path.join(root, "encoder"),
        os.path.join(root, "preprocessor"),
        os.path.join(root, VOCABULARY_RECORD),
    )


def is_narrow(student):
    """Whether a `StudentConfig` slices the teacher's blocks narrower (any of its width keys is set)."""
    return any(getattr(student, k) is not None for k in ("hidden_size", "num_heads", "intermediate_size"))


def _calibration_inputs(run):
    """The teacher's inputs for `student.calibration_texts` training texts spread over the split."""
    import tensorflow as tf

    texts = run.splits["train"].texts
    count = min(run.config.student.calibration_texts, len(texts))
    step = max(1, len(texts) // count)
    chosen = [str(t) for t in texts[::step][:count]]
    return {k: v.numpy() for k, v in run.preprocessor(tf.constant(chosen)).items()}


def _write_encoder(run, teacher_hub, path):
    from kd_tf.bert import hub_format, narrow

    s = run.config.student
    layers = s.init_layers
    if not is_narrow(s):
        return hub_format.write_student_from_teacher(teacher_hub, path, layers=layers)
    hidden = s.hidden_size or hub_format.read_encoder_metadata(teacher_hub)["config"]["hidden_size"]
    try:
        return narrow.write_narrow_student(
            teacher_hub,
            path,
            layers=layers,
            hidden_size=hidden,
            calibration_inputs=_calibration_inputs(run),
            num_heads=s.num_heads,
            intermediate_size=s.intermediate_size,
        )
    except ValueError as e:  # sizes the teacher cannot give, named by kd_tf.bert.narrow
        raise PipelineError(f"student: the narrow student cannot be sliced from {teacher_hub}: {e}") from None


def _prune(run, encoder, path):
    """Writes `path/{encoder, preprocessor, vocab.txt}` on the vocabulary of the run's training texts."""
    from kd_tf.bert import count_wordpieces, prune_vocabulary, write_pruned_bert

    v = run.config.student.vocabulary
    texts = [str(t) for t in run.train_set().texts]
    counts = count_wordpieces(texts, run.preprocessor, seq_length=run.config.data.seq_length)
    pruned = prune_vocabulary(counts, top_k=v.top_k, coverage=v.coverage)
    write_pruned_bert(encoder, pruned, path)
    return {
        "top_k": v.top_k,
        "coverage": v.coverage,
        "texts": len(texts),
        "source_tokens": pruned.source_size,
        "kept_tokens": len(pruned.tokens),
        "added": pruned.added,
        "coverage_of_training_wordpieces": counts.coverage(pruned.kept_ids),
        "kept_ids": pruned.kept_ids.tolist(),
    }


def build_student_init(run, teacher_hub=None):
    """The student's encoder and preprocessor of `run`: given, or written once from its teacher.

    Args:
        run: a `kd_tf.pipeline.ClassificationRun` whose teacher step finished.
        teacher_hub: the teacher encoder folder to cut from; by default the fine-tuned teacher's
            (`teacher/hub_encoder`). `kd_tf.pipeline.shapes` cuts from the pretrained one, to measure
            shapes before any training.

    Returns:
        `student_files(run)`, written.

    Raises:
        PipelineError: if the student must be cut from a teacher kd-tf did not write, names blocks the
            teacher lacks, or has sizes the teacher cannot give.

    Example:
    ```python
    files = build_student_init(run)
    build_classifier(files.encoder, 2)
    ```
    """
    from kd_tf.bert import hub_format

    files = student_files(run)
    if run.config.student.encoder is not None or files.ready:
        return files
    teacher_hub = teacher_hub or (run.folder.record("teacher") or {}).get("hub_encoder")
    if not teacher_hub:
        raise PipelineError(
            "student.init_layers needs a teacher encoder written by kd-tf; with a published "
            "TF Hub teacher set student.encoder to a TF Hub handle (e.g. a small BERT)."
        )
    root = run.student_path(INIT_DIR)
    shutil.rmtree(root, ignore_errors=True)  # a partial one, of a process that was killed
    run.check_shape(hub_format.read_encoder_metadata(teacher_hub)["config"], teacher_hub)
    os.makedirs(os.path.dirname(root), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{INIT_DIR}.tmp-", dir=os.path.dirname(root))
    try:
        if run.config.student.vocabulary is None:
            _write_encoder(run, teacher_hub, os.path.join(tmp, "encoder"))
            os.replace(os.path.join(tmp, "encoder"), root)
        else:
            _write_encoder(run, teacher_hub, os.path.join(tmp, "full"))
            record = _prune(run, os.path.join(tmp, "full"), os.path.join(tmp, "pruned"))
            write_json(os.path.join(tmp, "pruned", VOCABULARY_RECORD), record)
            os.replace(os.path.join(tmp, "pruned"), root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return files


__all__ = ["INIT_DIR", "StudentFiles", "build_student_init", "is_narrow", "student_files"]
