"""Arguments shared by the `kd-tf` commands, and the process set-up of the command line (`kd_tf.cli`)."""

from __future__ import annotations

import os
import sys


def quiet_tensorflow():
    """Silences TensorFlow's C++ and Python start-up noise (`quiet_tensorflow()` before any import).

    TensorFlow's native libraries print to file descriptor 2 while they load,
    before any log level applies, so stderr is pointed at /dev/null for the
    imports only.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import tensorflow  # noqa: F401
        import tensorflow_text  # noqa: F401
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
    import logging
    import warnings

    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    # Keras's notes on tf.data input (already shuffled, unknown length) are noise here.
    warnings.filterwarnings("ignore", category=UserWarning, module=r"keras\.")
    try:
        import absl.logging

        absl.logging.set_verbosity(absl.logging.ERROR)
    except ImportError:
        pass


def repo_config(name):
    """A ready config shipped in the checkout's `configs/` folder.

    Raises:
        FileNotFoundError: outside a kd-tf checkout (pass --config then).

    Example:
    ```python
    repo_config("demo.yaml")  # '/work/kd-tf/configs/demo.yaml'
    ```
    """
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = os.path.join(here, "configs", name)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: run kd-tf from a kd-tf checkout, or pass --config.")
    return path


def add_run_options(p, config_required=True):
    """Adds the options of every run command: --config, --set, --force, --fresh.

    Example:
    ```python
    add_run_options(sub.add_parser("sweep"))
    ```
    """
    p.add_argument("--config", required=config_required, help="YAML run config (see configs/)")
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set teacher.epochs=1 (repeatable)",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="rerun the steps even if they finished before (their last outputs stay until a rerun succeeds)",
    )
    p.add_argument(
        "--fresh",
        action="store_true",
        help="delete the run folder first and start from nothing (only a kd-tf run folder in output_dir)",
    )


__all__ = ["add_run_options", "quiet_tensorflow", "repo_config"]
