"""Strict, atomic JSON files: read back whole or not at all, and never holding NaN.

Python's `json` writes a non-finite float as `NaN` or `Infinity`, which is not JSON: other readers (a
browser, `jq`, most JSON libraries) refuse the file, and a NaN that reaches a report reads as a number.
`strict_json` turns every non-finite number into `null` (the writer says why next to it, e.g. a
`status` field), and `write_json` writes to a temporary sibling renamed into place, so a reader never
sees a half-written file.
"""

from __future__ import annotations

import json
import math
import os
import tempfile

import numpy as np


def strict_json(value):
    """`value` as plain JSON data: numpy scalars and arrays unpacked, non-finite floats as None.

    Args:
        value: nested dicts, lists, tuples, numbers, strings, None, numpy scalars or arrays; anything
            else with a `to_dict()` method is unpacked, and other objects become their `str()`.

    Returns:
        The same structure made of dict, list, str, int, float (finite), bool and None.

    Example:
    ```python
    strict_json({"loss": [0.5, float("nan")], "steps": np.int64(3)})  # {'loss': [0.5, None], 'steps': 3}
    ```
    """
    if isinstance(value, dict):
        return {str(k): strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    if isinstance(value, np.ndarray):
        return strict_json(value.tolist())
    if isinstance(value, np.generic):
        return strict_json(value.item())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    if hasattr(value, "to_dict"):
        return strict_json(value.to_dict())
    return str(value)


def write_json(path, value, indent=1):
    """Writes `strict_json(value)` to `path` atomically (a temporary sibling renamed into place).

    Args:
        path: the file to write; its folder is created if needed.
        value: what to write (see `strict_json`).
        indent: JSON indentation.

    Returns:
        `path`.

    Raises:
        OSError: if the folder cannot be written; `path` is then left as it was.

    Example:
    ```python
    write_json("run/steps/teacher.json", {"step": "teacher", "best_val_accuracy": 0.81})
    ```
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(strict_json(value), f, indent=indent, allow_nan=False)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


__all__ = ["strict_json", "write_json"]
