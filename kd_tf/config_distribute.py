"""The `distribute` section of a run config: where training runs (`kd_tf.distribute`, docs/scale.md).

`kd_tf.config` reads it like every section (unknown keys, wrong types and values outside the choices are
refused with the dotted key); `check_distribute` adds what one key says about another. Nothing here starts
TensorFlow: the strategy itself is built by `kd_tf.distribute.strategy_from_config`.

Example YAML:

```yaml
distribute:
  strategy: multi_worker      # each worker started with its own TF_CONFIG
  communication: nccl
```
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Optional

from kd_tf.config_parse import ConfigError
from kd_tf.config_parse import field as _field

STRATEGIES = ("none", "mirrored", "multi_worker", "tpu")
"""The values of `distribute.strategy`."""
COMMUNICATIONS = ("auto", "ring", "nccl")
"""The values of `distribute.communication`."""


@dataclasses.dataclass
class DistributeConfig:
    """Where training runs: one device, every GPU of this host, several hosts, or a TPU (docs/scale.md)."""

    strategy: str = _field(
        "none",
        "none (one device), mirrored (every GPU of this host), multi_worker (one kd-tf process per host, "
        "each started with its own TF_CONFIG environment variable; the run's output_dir on a filesystem "
        "all hosts share) or tpu; data.batch_size is then the global batch of all replicas together",
        choices=STRATEGIES,
    )
    devices: Optional[typing.List[str]] = _field(
        None, 'mirrored: the devices to train on, e.g. ["/gpu:0", "/gpu:1"]; null = every GPU (or the CPU)'
    )
    tpu: str = _field("local", "tpu: local on a TPU VM, else the TPU's name or grpc:// address")
    communication: str = _field(
        "auto",
        "multi_worker: how gradients are summed across hosts: auto, ring (gRPC, works everywhere) or nccl "
        "(GPUs)",
        choices=COMMUNICATIONS,
    )
    backup: bool = _field(
        True,
        "with a strategy other than none: back each training up at the end of every epoch (backup/ in the "
        "run folder), so that workers started again after one died resume from the last finished epoch",
    )
    shard_timeout: float = _field(
        3600.0,
        "multi_worker: seconds a worker waits for the other workers' shards of the teacher cache",
        check=(lambda v: v > 0, "must be > 0"),
    )


def check_distribute(section, key="distribute"):
    """Raises ConfigError for settings of `section` that contradict each other.

    Args:
        section: a `DistributeConfig`.
        key: its config key, for messages.

    Example:
    ```python
    check_distribute(DistributeConfig(strategy="mirrored", devices=["/gpu:0", "/gpu:1"]))
    ```
    """
    if section.devices is not None and section.strategy != "mirrored":
        raise ConfigError(
            f"{key}.devices: only the mirrored strategy trains on listed devices (this run's strategy is "
            f"{section.strategy}); set {key}.strategy: mirrored, or drop {key}.devices."
        )
    if section.devices is not None and not section.devices:
        raise ConfigError(f"{key}.devices: give at least one device, or null for every GPU.")


__all__ = ["COMMUNICATIONS", "STRATEGIES", "DistributeConfig", "check_distribute"]
