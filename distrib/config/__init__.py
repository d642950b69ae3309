"""The run's configuration: the schema (dataclasses), hydra's side of it, and ``_target_``s.

- `distrib.config.schema`: ``Config``, ``TrainerConfig``, ``CheckpointConfig``.
- `distrib.config.launcher`: ``launcher.*`` (how workers are started).
- `distrib.config.compose`: registering with hydra, composed values -> `Config`, errors -> one line.
- `distrib.config.targets`: what a ``_target_`` may point at (checked before anything is built),
  and `build`.
"""

from distrib.config.compose import describe, register, run_id, to_config
from distrib.config.schema import CheckpointConfig, Config, TrainerConfig
from distrib.config.targets import build, check_targets
from distrib.errors import ConfigError

__all__ = [
    "CheckpointConfig",
    "Config",
    "ConfigError",
    "TrainerConfig",
    "build",
    "check_targets",
    "describe",
    "register",
    "run_id",
    "to_config",
]
