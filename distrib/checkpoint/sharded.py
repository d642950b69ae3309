"""Sharded checkpoints (``trainer.strategy=fsdp``): each rank writes its own shards through
``torch.distributed.checkpoint`` (DCP); no rank gathers the whole model.

Layout: a directory per checkpoint, written under a temporary name and renamed when complete::

    step-00000120.dcp/
      __0_0.distcp, __1_0.distcp, ...   each rank's shards of {"model", "optim"} (DCP)
      .metadata                         DCP's index: which shard holds which piece
      extra.pt                          the rest (step, data position, every rank's RNG,
                                        scheduler, config, history), torch.load-able

A checkpoint counts only once committed: every rank has written its shards (DCP's own
collective says so on rank 0), rank 0 has written ``extra.pt``, fsynced every file and renamed
``.tmp-step-00000120.dcp`` to its name; then the manifest records each file's size and sha256
and ``latest`` names it (`distrib.checkpoint.checkpointer`). A kill at any point before the
rename leaves a ``.tmp-`` directory, never a checkpoint. DCP reshards on load, so a checkpoint
written by 2 ranks loads into 1 or 3 (and into an unsharded model).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from distrib.checkpoint import files

EXTRA = "extra.pt"


def tmp_dir(directory: Path, name: str) -> Path:
    """Where ``name`` is written before it is committed."""
    return Path(directory) / f"{files.TMP_PREFIX}{name}"


def write(app_state: dict[str, Any], path: Path, *, process_group: Any = None) -> Any:
    """Every rank: write its shards of ``app_state`` into ``path``. With ``process_group``
    (a group of its own, so a background write never interleaves with training's
    collectives) the write is asynchronous: the state is staged now and a future returned."""
    import torch.distributed.checkpoint as dcp

    if process_group is None:
        dcp.save(app_state, checkpoint_id=str(path))
        return None
    return dcp.async_save(app_state, checkpoint_id=str(path), process_group=process_group)


def commit(tmp: Path, final: Path, extra: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Rank 0, once every rank's shards are in ``tmp``: add ``extra.pt``, fsync, rename to
    ``final``; return each file's size and sha256 (for the manifest)."""
    files.save_atomic(extra, tmp / EXTRA)
    listing: dict[str, dict[str, Any]] = {}
    for p in sorted(tmp.iterdir()):
        if p.is_file() and not p.name.startswith(files.TMP_PREFIX):
            with open(p, "rb") as f:
                os.fsync(f.fileno())
            listing[p.name] = {"size": p.stat().st_size, "sha256": files.sha256_of(p)}
    files.fsync_dir(tmp)
    os.replace(tmp, final)
    files.fsync_dir(final.parent)
    return listing


def verify(path: Path, entry: dict[str, Any]) -> None:
    """Raise `files.CheckpointError` naming the first file of ``path`` that is missing or
    whose size or sha256 differs from the manifest's."""
    if not path.is_dir():
        raise files.CheckpointError(path, "listed in the manifest but missing")
    for name, meta in sorted(entry["files"].items()):
        files.verify(path / name, meta)


def load_extra(path: Path) -> dict[str, Any]:
    """The non-tensor part of a sharded checkpoint (``weights_only=True``)."""
    return files.load_checkpoint(path / EXTRA, None)


def load_into(path: Path, app_state: dict[str, Any]) -> None:
    """Every rank: fill ``app_state`` (tensors shaped for this world) from ``path``'s shards."""
    import torch.distributed.checkpoint as dcp

    try:
        dcp.load(app_state, checkpoint_id=str(path))
    except Exception as e:  # DCP wraps each rank's error in a multi-line report
        raise files.CheckpointError(path, f"does not load ({files.one_line(e)})") from e


def full_model_state(path: Path) -> dict[str, Any]:
    """The whole model's state dict of a sharded checkpoint, in one process without a process
    group (for export and convert: the one place the whole model is gathered)."""
    import tempfile

    import torch
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    with tempfile.TemporaryDirectory(prefix="distrib-convert-") as tmp:
        out = Path(tmp) / "full.pt"
        try:
            dcp_to_torch_save(path, out)
            return torch.load(out, map_location="cpu", weights_only=True)["model"]
        except Exception as e:
            raise files.CheckpointError(path, f"does not load ({files.one_line(e)})") from e


def remove(path: Path) -> None:
    """Delete a checkpoint of either kind (retention; never the newest good one)."""
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
