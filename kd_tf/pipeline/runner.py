"""`Pipeline`: runs the steps of one configured run in order, recording each finished step.

The steps of a task live in their own class (`ClassificationRun` for text classification); this module
only drives them, knowing no task: it holds the run's lock, repairs what a killed run left, checks the
run folder against the config, lets the task check what it can before anything trains, skips finished
steps (unless forced), refuses a step whose earlier steps have not finished, and records a step once it
finished. A task class has `steps` (names in order), `skips(step)`, `check()` and one
`step_<name>()` method per step that returns the details of its record (or `run_step(name)`, for steps
named by the config, such as a sweep's students); it may have `stale(step, record)`, true when a finished
step's record no longer fits the config (the step then runs again), and `dependents(step)`, the steps
whose records a new result of `step` makes stale (by default every later step).
"""

from __future__ import annotations

import dataclasses
import os
import time

from kd_tf.json_files import strict_json
from kd_tf.pipeline.causal_lm import CausalLMRun
from kd_tf.pipeline.classification import ClassificationRun
from kd_tf.pipeline.run_folder import PipelineError, RunFolder

STEPS = ClassificationRun.steps
TASK_RUNS = {"classification": ClassificationRun, "causal_lm": CausalLMRun}
"""The class of each `task:`'s steps."""


def _log(message):
    print(message, flush=True)


def _own_config(config):
    """The config of this process's run folder: `config`, or on a multi-worker worker other than the chief
    one whose `run_name` is that of the worker's own folder. Sets up the run's strategy (`make_strategy`
    must run before TensorFlow does)."""
    section = getattr(config, "distribute", None)
    if section is None or section.strategy == "none":
        return config
    from kd_tf import distribute

    folder = distribute.worker_folder(config.run_dir, distribute.strategy_from_config(section))
    if folder == config.run_dir:
        return config
    return dataclasses.replace(config, run_name=os.path.basename(folder))


def _same_result(a, b):
    """Whether two records of a step hold the same result (timings aside)."""
    ignore = {"seconds", "token"}
    a, b = strict_json(a), strict_json(b)
    return {k: v for k, v in a.items() if k not in ignore} == {k: v for k, v in b.items() if k not in ignore}


class Pipeline:
    """Runs the steps of one configured run (see `kd_tf.pipeline.classification` for what each does).

    Args:
        config: a `kd_tf.config.RunConfig`.
        verbose: Keras progress bars (1) or one line per epoch (2).
        task: the class of the task's steps (default: that of `config.task`, `ClassificationRun` or
            `CausalLMRun`); it is built as `task(config, folder, verbose=verbose)`.

    With `distribute.strategy` set, the strategy is set up first (before TensorFlow runs anything), and a
    multi-worker worker other than the chief gets a run folder of its own (`kd_tf.distribute.worker_folder`).

    Attributes:
        folder: the run's `RunFolder` (`config.run_dir` is its path; another worker's own folder).
        task: the object whose `step_<name>()` methods do the work.

    Example:
    ```python
    records = Pipeline(load_config("configs/demo.yaml")).run()
    records["distill"]["seconds"]
    ```
    """

    def __init__(self, config, verbose=1, task=None):
        self.config = config
        self.folder = RunFolder(_own_config(config))
        task = task or TASK_RUNS[getattr(config, "task", "classification")]
        self.task = task(config, self.folder, verbose=verbose)

    @property
    def steps(self):
        """The names of this run's steps, in order."""
        return self.task.steps

    def run(self, steps=None, force=(), fresh=False):
        """Runs `steps` in order, reusing finished ones unless forced.

        A step runs only once every earlier step of the run (but those the config skips) has finished:
        it is run here, or finished before. A forced step keeps its previous outputs and record until it
        succeeds; the records of later steps are dropped only if its result changed.

        Args:
            steps: names from `self.steps` (default: all).
            force: True to rerun every step in `steps`, or the names of the
                steps to rerun even if they finished before.
            fresh: delete the run folder first (only a kd-tf run folder inside `config.output_dir`).

        Returns:
            The step records (dict by step name), with `seconds` each.

        Raises:
            PipelineError: for a step that cannot run (the message says why), another process running
                the same folder, or a `fresh` folder that is not a kd-tf run.

        Example:
        ```python
        Pipeline(config).run(["teacher"], force=True)
        ```
        """
        steps = tuple(self.steps if steps is None else steps)
        unknown = [s for s in steps if s not in self.steps]
        if unknown:
            raise PipelineError(f"unknown step(s) {unknown}; steps are {', '.join(self.steps)}.")
        force = set(steps) if force is True else set(force or ())
        with self.folder.lock():
            if fresh and self.folder.delete():
                _log(f"deleted {self.folder.root} (--fresh)")
            self.folder.recover()
            self.folder.check_config()
            self.task.check()
            return self._run(steps, force)

    def _stale(self, step, record):
        stale = getattr(self.task, "stale", None)
        return bool(stale and stale(step, record))

    def _dependents(self, step):
        dependents = getattr(self.task, "dependents", None)
        if dependents is not None:
            return tuple(dependents(step))
        return self.steps[self.steps.index(step) + 1 :]

    def _call(self, step):
        run_step = getattr(self.task, "run_step", None)
        return run_step(step) if run_step is not None else getattr(self.task, f"step_{step}")()

    def _run(self, steps, force):
        active = [s for s in self.steps if not self.task.skips(s)]
        records, missing = {}, None
        for step in active:
            previous = self.folder.record(step)
            if step not in steps:
                missing = missing or (step if previous is None else None)
                continue
            if missing is not None:
                raise PipelineError(
                    f"the {step} step needs the {missing} step, which has not finished in "
                    f"{self.folder.root}. Run it first (`kd-tf run` runs every step that has not finished)."
                )
            if previous is not None and step not in force and not self._stale(step, previous):
                _log(f"[{step}] done before ({previous['seconds']:.1f} s), reusing")
                records[step] = previous
                continue
            _log(f"[{step}] ...")
            self.folder.begin(step)
            start = time.perf_counter()
            try:
                details = self._call(step)
                changed = previous is None or not _same_result(previous, {"step": step, **details})
                later = self._dependents(step) if changed else ()
                records[step] = self.folder.finish(step, time.perf_counter() - start, forget=later, **details)
            except BaseException:
                self.folder.abandon(step)
                raise
            _log(f"[{step}] done in {records[step]['seconds']:.1f} s")
        return records


__all__ = ["STEPS", "Pipeline", "PipelineError"]
