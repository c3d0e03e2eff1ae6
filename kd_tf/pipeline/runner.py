"""`Pipeline`: runs the steps of one configured run in order, recording each finished step.

The steps of a task live in their own module (`kd_tf.pipeline.classification` for text
classification); this module only drives them: it checks the run folder against the config, skips
finished steps (unless forced), forgets the records of later steps when a step reruns, and records a step
once it finished.
"""

from __future__ import annotations

import time

from kd_tf.pipeline.classification import ClassificationRun
from kd_tf.pipeline.run_folder import PipelineError, RunFolder

STEPS = ClassificationRun.steps


def _log(message):
    print(message, flush=True)


class Pipeline:
    """Runs the steps of one configured run (see `kd_tf.pipeline.classification` for what each does).

    Args:
        config: a `kd_tf.config.RunConfig`.
        verbose: Keras progress bars (1) or one line per epoch (2).

    Attributes:
        folder: the run's `RunFolder` (`config.run_dir` is its path).
        task: the object whose `step_<name>()` methods do the work.

    Example:
    ```python
    records = Pipeline(load_config("configs/demo.yaml")).run()
    records["distill"]["seconds"]
    ```
    """

    def __init__(self, config, verbose=1):
        self.config = config
        self.folder = RunFolder(config)
        self.task = ClassificationRun(config, self.folder, verbose=verbose)

    @property
    def steps(self):
        """The names of this run's steps, in order."""
        return self.task.steps

    def _skipped(self, step):
        distill = self.config.distill
        return (step == "baseline" and not distill.baseline) or (
            step == "cache" and not distill.cache_teacher
        )

    def run(self, steps=STEPS, force=()):
        """Runs `steps` in order, reusing finished ones unless forced.

        Args:
            steps: names from `STEPS`.
            force: True to rerun every step in `steps`, or the names of the
                steps to rerun even if they finished before.

        Returns:
            The step records (dict by step name), with `seconds` each.

        Raises:
            PipelineError: for a step that cannot run (the message says why).
        """
        unknown = [s for s in steps if s not in self.steps]
        if unknown:
            raise PipelineError(f"unknown step(s) {unknown}; steps are {', '.join(self.steps)}.")
        self.folder.check_config()
        force = set(steps) if force is True else set(force or ())
        records = {}
        for step in self.steps:
            if step not in steps or self._skipped(step):
                continue
            previous = self.folder.record(step)
            if previous is not None and step not in force:
                _log(f"[{step}] done before ({previous['seconds']:.1f} s), reusing")
                records[step] = previous
                continue
            _log(f"[{step}] ...")
            self.folder.forget(step)
            for later in self.steps[self.steps.index(step) + 1 :]:
                self.folder.forget(later)  # later steps depend on this one
            start = time.perf_counter()
            details = getattr(self.task, f"step_{step}")()
            records[step] = self.folder.finish(step, time.perf_counter() - start, **details)
            _log(f"[{step}] done in {records[step]['seconds']:.1f} s")
        return records


__all__ = ["STEPS", "Pipeline", "PipelineError"]
