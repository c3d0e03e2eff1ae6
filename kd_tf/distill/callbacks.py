"""Callbacks for `kd_tf.Distiller`: schedules, stop at a target, best-student checkpoints.

Resuming after an interruption needs nothing of ours: `keras.callbacks.BackupAndRestore` works on a
`Distiller` as on any model (its backup holds the student, the projections, the optimizer state and the
scheduled alpha/temperature), and so does `keras.callbacks.TensorBoard`, which logs every loss part.
"""

import math
import os

import keras
import numpy as np


class Constant:
    """A value that never changes.

    Args:
        value: The value.

    Example:
    ```python
    Constant(4.0)(10)  # 4.0
    ```
    """

    def __init__(self, value):
        self.value = float(value)

    def __call__(self, step):
        return self.value

    def get_config(self):
        return {"value": self.value}


class Linear:
    """A value moving linearly from `start` to `end` over `steps` steps, then staying at `end`.

    Args:
        start: Value at step 0.
        end: Value from step `steps` on.
        steps: Number of steps (epochs or batches, see `DistillationSchedule(per=...)`) of the ramp.

    Raises:
        ValueError: If `steps` is not positive.

    Example:
    ```python
    Linear(4.0, 1.0, steps=3)(1)  # 3.0
    ```
    """

    def __init__(self, start, end, steps):
        if int(steps) <= 0:
            raise ValueError(f"steps must be positive, got {steps}.")
        self.start, self.end, self.steps = float(start), float(end), int(steps)

    def __call__(self, step):
        fraction = min(max(float(step), 0.0), self.steps) / self.steps
        return self.start + (self.end - self.start) * fraction

    def get_config(self):
        return {"start": self.start, "end": self.end, "steps": self.steps}


def _as_schedule(value):
    if value is None or callable(value):
        return value
    return Constant(value)


class DistillationSchedule(keras.callbacks.Callback):
    """Changes the distiller's `temperature` and/or `alpha` during training.

    The values are written into the distiller's variables, so a compiled (even XLA-compiled) train step
    sees them without retracing, and they are logged as `temperature` and `alpha` every epoch.

    Args:
        temperature: A number (constant), a schedule (`Constant`, `Linear`, any `step -> value`
            callable), or None to leave it alone.
        alpha: Same, for the hard-label weight.
        per: `"epoch"` (step = epoch index, set at each epoch's start) or `"batch"` (step = the
            optimizer's iteration count, set before each batch).

    Raises:
        ValueError: For an unknown `per`.

    Example:
    ```python
    schedule = DistillationSchedule(temperature=Linear(8.0, 2.0, steps=5), alpha=0.5)
    distiller.fit(ds, epochs=5, callbacks=[schedule])
    ```
    """

    def __init__(self, temperature=None, alpha=None, per="epoch"):
        super().__init__()
        if per not in ("epoch", "batch"):
            raise ValueError(f"per must be 'epoch' or 'batch', got {per!r}.")
        self.temperature = _as_schedule(temperature)
        self.alpha = _as_schedule(alpha)
        self.per = per

    def _apply(self, step):
        if self.temperature is not None:
            self.model.temperature = self.temperature(step)
        if self.alpha is not None:
            self.model.alpha = self.alpha(step)

    def on_epoch_begin(self, epoch, logs=None):
        if self.per == "epoch":
            self._apply(epoch)

    def on_train_batch_begin(self, batch, logs=None):
        if self.per == "batch":
            self._apply(int(self.model.optimizer.iterations.numpy()))

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["temperature"] = self.model.temperature
            logs["alpha"] = self.model.alpha


def _improved(mode, value, best):
    return value > best if mode == "max" else value < best


def _resolve_mode(mode, monitor):
    if mode in ("min", "max"):
        return mode
    if mode != "auto":
        raise ValueError(f"mode must be 'auto', 'min' or 'max', got {mode!r}.")
    name = monitor.removeprefix("val_")
    return "min" if "loss" in name or "error" in name else "max"


class StopAtTarget(keras.callbacks.Callback):
    """Stops training once a monitored metric reaches a target ("until the student reaches the expected
    performance", the article's section 2.2).

    Args:
        monitor: Log key, e.g. `"val_sparse_categorical_accuracy"` or `"val_loss"`.
        target: The value to reach.
        mode: `"max"` (stop when `value >= target`), `"min"` (`value <= target`) or `"auto"` (min for
            losses and errors, else max).

    Attributes:
        stopped_epoch: The epoch (0-based) at which the target was reached, or None.

    Raises:
        ValueError: For an unknown `mode`.

    Example:
    ```python
    distiller.fit(train, validation_data=val, epochs=50,
                  callbacks=[StopAtTarget("val_sparse_categorical_accuracy", 0.88)])
    ```
    """

    def __init__(self, monitor, target, mode="auto"):
        super().__init__()
        self.monitor = monitor
        self.target = float(target)
        self.mode = _resolve_mode(mode, monitor)
        self.stopped_epoch = None

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if self.monitor not in logs:
            raise KeyError(
                f"StopAtTarget monitors {self.monitor!r}, which is not in the logs {sorted(logs)}; "
                "check the metric name (validation metrics need validation_data)."
            )
        value = float(logs[self.monitor])
        reached = value >= self.target if self.mode == "max" else value <= self.target
        if reached:
            self.stopped_epoch = epoch
            self.model.stop_training = True


class StudentCheckpoint(keras.callbacks.Callback):
    """Saves the distiller's student (never the teacher) after each epoch, or only the best one.

    Args:
        filepath: Target path; may contain `{epoch}` and log keys (`"student-{epoch:02d}.keras"`). A
            `.keras` path saves the whole student, a `.weights.h5` path its weights, any other path
            exports a SavedModel folder (`student.export`).
        monitor: Log key to compare when `save_best_only`.
        mode: `"auto"`, `"min"` or `"max"`.
        save_best_only: Save only when `monitor` improves.

    Attributes:
        best: The best monitored value so far.

    Example:
    ```python
    StudentCheckpoint("best_student.keras", monitor="val_loss", save_best_only=True)
    ```
    """

    def __init__(self, filepath, monitor="val_loss", mode="auto", save_best_only=True):
        super().__init__()
        self.filepath = os.fspath(filepath)
        self.monitor = monitor
        self.mode = _resolve_mode(mode, monitor)
        self.save_best_only = save_best_only
        self.best = -math.inf if self.mode == "max" else math.inf

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if self.save_best_only:
            if self.monitor not in logs:
                raise KeyError(
                    f"StudentCheckpoint monitors {self.monitor!r}, not in the logs {sorted(logs)}."
                )
            value = float(logs[self.monitor])
            if not _improved(self.mode, value, self.best) or np.isnan(value):
                return
            self.best = value
        path = self.filepath.format(epoch=epoch + 1, **logs)
        student = self.model.student
        if path.endswith(".keras"):
            student.save(path)
        elif path.endswith(".weights.h5"):
            student.save_weights(path)
        else:
            student.export(path, verbose=False)


__all__ = ["Constant", "DistillationSchedule", "Linear", "StopAtTarget", "StudentCheckpoint"]
