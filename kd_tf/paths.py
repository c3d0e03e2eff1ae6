"""Where kd-tf finds real data and keeps converted models."""

import os

DATA_DIR_ENV = "KD_TF_DATA_DIR"
CACHE_DIR_ENV = "KD_TF_CACHE"


def default_data_dir():
    """The folder of the project's real data sets (benchmarks and `-m slow` tests).

    Returns:
        The environment variable `KD_TF_DATA_DIR` if it is set, else `../shared/data` next to the kd-tf
        checkout. The folder may not exist: a user's clone has none, and code that needs it says so.

    Example:
    ```python
    sst2_dev = os.path.join(default_data_dir(), "sst2", "dev.tsv")
    ```
    """
    return os.environ.get(DATA_DIR_ENV) or os.path.normpath(
        os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, os.pardir, "shared", "data")
    )


def model_cache_dir():
    """Where converted pretrained models are kept: `$KD_TF_CACHE`, else `~/.cache/kd_tf`.

    Example:
    ```python
    os.path.join(model_cache_dir(), "all-MiniLM-L6-v2")
    ```
    """
    return os.environ.get(CACHE_DIR_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "kd_tf")


__all__ = ["default_data_dir", "model_cache_dir"]
