"""The two students of a classification run, trained for one seed: distilled, and on labels alone.

Both start from the same encoder (`student_init`: given, or cut from the fine-tuned teacher, maybe narrower
and with a pruned vocabulary: `kd_tf.pipeline.student_init`) with a new head, read the same tokens (the
student's own preprocessor), and get the same budget. A seed sets what differs from one repetition to the
next: the head's initialisation, dropout and the order of the training examples (`seed_values`). The run's
own students (`student/`, `baseline/`) use the run's seed; `distill.seeds` > 1 repeats both with more
seeds (`kd_tf.pipeline.seeds`). The encoder's initialisation is the same for every seed.
"""

from __future__ import annotations

from kd_tf.pipeline import distributed
from kd_tf.pipeline.classification_data import derived_seed


def seed_values(config):
    """The seeds of a run's students: the run's seed first, then one more per `distill.seeds`.

    Args:
        config: a `kd_tf.config.RunConfig`.

    Returns:
        `distill.seeds` distinct seeds; the first is `config.seed` (the run's `student/` and `baseline/`).

    Example:
    ```python
    seed_values(load_config("configs/demo.yaml", ["distill.seeds=3"]))  # [42, 1042, 2042]
    ```
    """
    return [
        config.seed if k == 0 else derived_seed(config.seed, 1000 * k) for k in range(config.distill.seeds)
    ]


def student_init(run):
    """The student encoder handle of `run`: given, or cut from its fine-tuned teacher (once).

    See `kd_tf.pipeline.student_init` for narrow students and pruned vocabularies.

    Raises:
        PipelineError: if the student must be cut from a teacher kd-tf did not write.

    Example:
    ```python
    student_init(run)  # 'saved_models/demo/student_init'
    ```
    """
    from kd_tf.pipeline.student_init import build_student_init

    return build_student_init(run).encoder


def new_student(run, name, seed):
    """The student encoder with a new head initialised from `seed` (the same for both students).

    Example:
    ```python
    student = new_student(run, "student", seed_values(run.config)[0])
    ```
    """
    import keras

    from kd_tf.classify import models

    s = run.config.student
    init = student_init(run)
    keras.utils.set_random_seed(derived_seed(seed, 7))
    # Every hub.load restores new variables: the two students share nothing.
    with distributed.scope(run):
        return models.build_classifier(
            init,
            len(run.splits["label_names"]),
            pooling=s.pooling,
            dropout=s.dropout,
            freeze_word_embeddings=s.freeze_word_embeddings,
            name=name,
        )


def _optimizer(run, examples):
    from kd_tf.pipeline import training

    s, d = run.config.student, run.config.data
    total = training.steps_per_epoch(examples, d.batch_size) * s.epochs
    return training.optimizer(s.learning_rate, s.weight_decay, s.warmup_fraction, total)


def _log_name(role, seed, run):
    return role if seed == run.config.seed else f"{role}_seed{seed}"


def train_distilled(run, seed):
    """Distils a new student of `run` from its teacher (cached logits, or the live teacher).

    With `distill.hidden_states` the live teacher also gives its hidden states, matched layer by layer
    (`kd_tf.pipeline.hidden_states`).

    Args:
        run: a `kd_tf.pipeline.ClassificationRun`.
        seed: the seed of the head, dropout and data order (`seed_values`).

    Returns:
        `(student Keras model with its best finite epoch's weights, training.FitResult)`.

    Raises:
        kd_tf.pipeline.training.TrainingDiverged: if no epoch ended finite.

    Example:
    ```python
    student, result = train_distilled(run, seed_values(run.config)[1])
    ```
    """
    import keras

    from kd_tf.distill import Distiller

    k = run.config.distill
    student = new_student(run, "student", seed)
    data = run.train_set()
    teacher, features, outputs = None, None, {}
    if k.hidden_states:  # the live teacher: cached logits carry no hidden states
        from kd_tf.pipeline import hidden_states
        from kd_tf.pipeline.student_init import student_files

        files = student_files(run)
        with distributed.scope(run):
            teacher = hidden_states.teacher_view(run.load_model("teacher"), files.vocabulary)
        features = hidden_states.layer_matches(
            run.config.student.init_layers, k.hidden_state_loss, k.hidden_state_weight
        )
    elif k.cache_teacher:
        outputs = {"teacher_outputs": {"logits": run.teacher_logits()[1]}}
    else:
        with distributed.scope(run):
            teacher = run.load_model("teacher")
    train_ds = run.dataset(data, shuffle=True, seed=seed, role="student", **outputs)
    with distributed.scope(run):
        distiller = Distiller(student=student, teacher=teacher, features=features)
        distiller.compile(
            optimizer=_optimizer(run, len(data)),
            metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
            distillation_loss_fn=k.loss,
            alpha=k.alpha,
            temperature=k.temperature,
            jit_compile=run.jit(),
        )
    if features:
        hidden_states.start_projections(distiller.feature_matches, files.encoder)
    # Students never stop early (patience = epochs); the best epoch's weights are kept.
    epochs = run.config.student.epochs
    what, log = "the distilled student", _log_name("student", seed, run)
    result = run.fit(distiller, student, train_ds, epochs, "student", what, log, role="student")
    return student, result


def train_baseline(run, seed):
    """Trains a new student of `run` on the labels alone, with the distilled student's budget.

    Args:
        run: a `kd_tf.pipeline.ClassificationRun`.
        seed: the seed of the head, dropout and data order (`seed_values`).

    Returns:
        `(Keras model with its best finite epoch's weights, training.FitResult)`.

    Raises:
        kd_tf.pipeline.training.TrainingDiverged: if no epoch ended finite.

    Example:
    ```python
    baseline, result = train_baseline(run, run.config.seed)
    ```
    """
    train = run.splits["train"]
    student = new_student(run, "baseline", seed)
    with distributed.scope(run):
        optimizer = _optimizer(run, len(train))
    trainer = distributed.compile_on_labels(run, student, optimizer)
    train_ds = run.dataset(train, shuffle=True, seed=seed, role="baseline")
    epochs = run.config.student.epochs
    what, log = "the label-only student", _log_name("baseline", seed, run)
    result = run.fit(trainer, student, train_ds, epochs, "student", what, log, role="baseline")
    return student, result


__all__ = ["new_student", "seed_values", "student_init", "train_baseline", "train_distilled"]
