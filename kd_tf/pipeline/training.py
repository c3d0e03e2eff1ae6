"""Fitting a model of a run: its optimizer; stop on a non-finite loss, keep the best finite epoch.

`fit_keep_best` runs `fit()` with Keras's `TerminateOnNaN` (training stops at the first batch whose loss
is NaN or infinite) and `KeepBestFinite`, an `EarlyStopping(restore_best_weights=True)` that ignores
epochs whose loss or weights are not finite. A run that diverged in its first epoch has nothing good to
keep: `TrainingDiverged` says so and nothing is saved, so the last good model of the run stays in place.
Histories are strict JSON: a non-finite loss is written as null next to a `status` that says what
happened.
"""

from __future__ import annotations

import dataclasses
import math
import time

import keras

from kd_tf.json_files import write_json
from kd_tf.pipeline.run_folder import PipelineError


def optimizer(learning_rate, weight_decay, warmup_fraction, total_steps):
    """AdamW with linear warmup to `learning_rate`, then cosine decay to 0 (Keras schedules).

    Args:
        learning_rate: the peak learning rate.
        weight_decay: AdamW's weight decay.
        warmup_fraction: share of `total_steps` spent warming up.
        total_steps: optimizer steps of the whole training.

    Returns:
        A `keras.optimizers.AdamW`.

    Example:
    ```python
    optimizer(3e-5, 0.01, 0.1, total_steps=steps_per_epoch(2000, 32) * 2)
    ```
    """
    warmup = int(round(total_steps * warmup_fraction))
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0 if warmup else learning_rate,
        decay_steps=max(1, total_steps - warmup),
        alpha=0.0,
        warmup_target=learning_rate if warmup else None,
        warmup_steps=warmup,
    )
    return keras.optimizers.AdamW(learning_rate=schedule, weight_decay=weight_decay)


def steps_per_epoch(examples, batch_size):
    """Batches in one pass over `examples` (the last one may be short)."""
    return max(1, -(-examples // batch_size))


class TrainingDiverged(PipelineError):
    """Training produced a non-finite loss or weights before any epoch ended finite."""


def weights_finite(model):
    """Whether every floating-point weight of `model` is finite.

    Args:
        model: a Keras model or layer.

    Returns:
        True if no weight holds NaN or an infinity.

    Example:
    ```python
    weights_finite(keras.Sequential([keras.layers.Dense(2)]))  # True
    ```
    """
    for variable in model.weights:
        if "float" in str(variable.dtype) and not bool(keras.ops.all(keras.ops.isfinite(variable))):
            return False
    return True


class KeepBestFinite(keras.callbacks.EarlyStopping):
    """`EarlyStopping` on `val_accuracy` with best weights, blind to epochs that diverged.

    An epoch whose training loss is not finite, or after which `checked`'s weights are not finite, is
    never the best one (its validation accuracy means nothing) and stops training; the divergence is
    kept in `diverged` (`{"epoch": 1-based, "loss": value}`).

    Args:
        checked: the model whose weights must stay finite (the student inside a `Distiller`).
        patience: epochs without a gain in validation accuracy before stopping.

    Example:
    ```python
    best = KeepBestFinite(student, patience=2)
    model.fit(train, validation_data=val, epochs=5, callbacks=[keras.callbacks.TerminateOnNaN(), best])
    best.diverged  # None, or {"epoch": 3, "loss": nan}
    ```
    """

    def __init__(self, checked, patience):
        super().__init__(monitor="val_accuracy", mode="max", patience=patience, restore_best_weights=True)
        self.checked = checked
        self.diverged = None

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        self.diverged = None

    def on_epoch_end(self, epoch, logs=None):
        loss = (logs or {}).get("loss")
        finite = loss is not None and math.isfinite(float(loss)) and weights_finite(self.checked)
        if not finite:
            self.diverged = {"epoch": epoch + 1, "loss": None if loss is None else float(loss)}
            self.model.stop_training = True
            return
        super().on_epoch_end(epoch, logs)


@dataclasses.dataclass
class FitResult:
    """What `fit_keep_best` kept: the history, the best finite epoch and what happened."""

    history: dict
    best_val_accuracy: float
    best_epoch: int
    status: str
    seconds: float

    def save(self, path):
        """Writes the history as strict JSON (`history`, `seconds`, `best_epoch`, `status`)."""
        return write_json(path, dataclasses.asdict(self))


def fit_keep_best(
    trainer, model, train_ds, validation_ds, *, epochs, patience, callbacks, verbose, what, hint
):
    """Fits `trainer`, stops on a non-finite loss and leaves `model` with its best finite epoch's weights.

    Args:
        trainer: what `fit()` is called on (the model itself, or a `Distiller` around it).
        model: the model that is saved afterwards; its weights must be finite.
        train_ds: the training `tf.data.Dataset`.
        validation_ds: the validation `tf.data.Dataset` (`val_accuracy` picks the best epoch).
        epochs: maximum epochs.
        patience: epochs without validation gain before stopping early.
        callbacks: more Keras callbacks (e.g. TensorBoard).
        verbose: Keras verbosity.
        what: the model in words, for messages (e.g. `"the teacher"`).
        hint: what to change when it diverges (e.g. `"lower teacher.learning_rate (now 3e-05)"`).

    Returns:
        A `FitResult`.

    Raises:
        TrainingDiverged: if no epoch ended with a finite loss and finite weights (nothing to keep).

    Example:
    ```python
    result = fit_keep_best(model, model, train, val, epochs=3, patience=1, callbacks=[], verbose=2,
                           what="the teacher", hint="lower teacher.learning_rate")
    result.save("teacher/history.json")
    ```
    """
    best = KeepBestFinite(model, patience)
    start = time.perf_counter()
    history = trainer.fit(
        train_ds,
        epochs=epochs,
        validation_data=validation_ds,
        callbacks=list(callbacks) + [keras.callbacks.TerminateOnNaN(), best],
        verbose=verbose,
    )
    seconds = time.perf_counter() - start
    if best.best_weights is None or not weights_finite(model):
        where = f"in epoch {best.diverged['epoch']}" if best.diverged else "before its first epoch ended"
        loss = best.diverged["loss"] if best.diverged else None
        raise TrainingDiverged(
            f"{what} diverged {where} (training loss {loss}): no epoch ended with a finite loss and "
            f"finite weights, so nothing was saved and the run's previous {what} (if any) is kept. "
            f"To fix: {hint}."
        )
    status = "completed"
    if best.diverged:
        status = (
            f"diverged in epoch {best.diverged['epoch']} (training loss {best.diverged['loss']}); "
            f"kept epoch {best.best_epoch + 1}, the best epoch with finite weights"
        )
        print(f"warning: {what} {status}. To avoid it: {hint}.", flush=True)
    values = {k: [float(v) for v in vs] for k, vs in history.history.items()}
    return FitResult(values, float(best.best), best.best_epoch + 1, status, seconds)


def save_model(model, path, what):
    """Saves `model` as a `.keras` file, refusing non-finite weights.

    Args:
        model: the Keras model.
        path: the `.keras` file to write.
        what: the model in words, for the message (e.g. `"the teacher"`).

    Returns:
        `path`.

    Raises:
        TrainingDiverged: if a weight is NaN or infinite (nothing is written).

    Example:
    ```python
    save_model(student, "saved_models/demo/student/model.keras", "the student")
    ```
    """
    if not weights_finite(model):
        raise TrainingDiverged(f"{what} has non-finite weights; it was not saved to {path}.")
    model.save(path)
    return path


__all__ = [
    "FitResult",
    "KeepBestFinite",
    "TrainingDiverged",
    "fit_keep_best",
    "optimizer",
    "save_model",
    "steps_per_epoch",
    "weights_finite",
]
