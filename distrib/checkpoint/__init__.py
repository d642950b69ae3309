"""Checkpoints that survive a crash mid-write and refuse to execute code on load.

`Checkpointer` is the object a training loop holds; `distrib.checkpoint.files` is the layer
underneath (atomic write, manifest, verified load) for tools that inspect a checkpoint directory.
"""

from distrib.checkpoint.checkpointer import Checkpointer
from distrib.checkpoint.files import (
    CheckpointError,
    checkpoint_name,
    load_checkpoint,
    read_manifest,
    save_atomic,
)

__all__ = [
    "CheckpointError",
    "Checkpointer",
    "checkpoint_name",
    "load_checkpoint",
    "read_manifest",
    "save_atomic",
]
