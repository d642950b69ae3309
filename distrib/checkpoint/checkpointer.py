"""`Checkpointer`: when and where checkpoints are written, how many are kept, which one resumes.

One object per run, made on every rank with ``enabled=ctx.is_main``: only the main rank writes,
every rank can read (`latest_good`, `load`) for a resume. Example::

    ckpt = Checkpointer(Path("outputs/run/checkpoints"), keep_last=3, best_metric="val_acc",
                        async_save=True, enabled=ctx.is_main)
    found = ckpt.latest_good()
    if found is not None:
        state, path = found
        model.load_state_dict(state["model"])
    ...
    ckpt.save({"model": model.state_dict(), "optimizer": opt.state_dict()},
              step=step, epoch=epoch, metrics={"val_acc": acc})
    ...
    ckpt.close()  # waits for the last async write; also runs at interpreter exit

With ``async_save=True``, `save` blocks only while it copies the state to CPU memory; a writer
thread serialises, fsyncs and updates the manifest while training goes on. One write is in
flight at most: the next `save` (or `wait`) waits for it and re-raises its error.
"""

from __future__ import annotations

import atexit
import contextlib
import copy
import logging
import math
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from distrib.checkpoint import files
from distrib.checkpoint.files import CheckpointError
from distrib.errors import ConfigError

log = logging.getLogger("distrib.checkpoint")

BEST_MODES = ("max", "min")


class Checkpointer:
    """Saves, prunes and finds checkpoints in one directory (see the module docstring)."""

    def __init__(
        self,
        directory: Path,
        *,
        keep_last: int = 3,
        best_metric: str | None = None,
        best_mode: str = "max",
        async_save: bool = False,
        enabled: bool = True,
    ) -> None:
        if keep_last < 1:
            raise ConfigError("trainer.checkpoint.keep_last", keep_last, "an integer >= 1")
        if best_mode not in BEST_MODES:
            raise ConfigError("trainer.checkpoint.best_mode", best_mode, " or ".join(BEST_MODES))
        self.directory = Path(directory)
        self.keep_last = keep_last
        self.best_metric = best_metric
        self.best_mode = best_mode
        self.async_save = async_save
        self.enabled = enabled
        self._pending: Future[None] | None = None
        self._executor: ThreadPoolExecutor | None = None
        if enabled:
            self.directory.mkdir(parents=True, exist_ok=True)
        if enabled and async_save:
            # Executor threads are joined (after finishing queued work) before atexit handlers
            # run, so a pending write completes at exit; close() via atexit then reports errors.
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="distrib-ckpt")
            atexit.register(self.close)

    def save(
        self,
        state: dict[str, Any],
        *,
        step: int,
        epoch: int,
        metrics: dict[str, float] | None = None,
    ) -> None:
        """Write ``state`` as ``step-<step>.pt``; a no-op unless this checkpointer is enabled.

        ``state`` must load with ``weights_only=True``: tensors, python scalars, strings and
        dicts/lists/tuples of them (what ``state_dict()`` methods return).
        """
        if not self.enabled:
            return
        meta = {
            "step": int(step),
            "epoch": int(epoch),
            "metrics": {  # NaN/Inf: null, neither best nor invalid JSON
                k: float(v) if math.isfinite(float(v)) else None for k, v in (metrics or {}).items()
            },
        }
        if self._executor is None:
            self._write(state, meta)
            return
        self.wait()
        snapshot = _copy_to_cpu(state)  # training may modify the originals in place from now on
        self._pending = self._executor.submit(self._write, snapshot, meta)

    def wait(self) -> None:
        """Block until the in-flight async write (if any) is done; re-raise its error once."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def close(self) -> None:
        """Wait for the last write, then stop the writer thread; safe to call twice.

        A `save` after `close` still works, synchronously on the calling thread.
        """
        try:
            self.wait()
        finally:
            if self._executor is not None:
                self._executor.shutdown(wait=True)
                self._executor = None
                atexit.unregister(self.close)

    def latest_good(self) -> tuple[dict[str, Any], Path] | None:
        """The newest checkpoint that loads and verifies, with its path; None when there is none.

        Newest means highest step, over the manifest and any ``step-*.pt`` on disk that the
        manifest misses (a crash between the rename and the manifest update); those load with
        ``weights_only=True`` but without a checksum. Each bad file costs one warning line and
        is left where it is.
        """
        self.wait()
        if not self.directory.is_dir():
            return None
        entries = self._entries()
        on_disk = {p.name for p in self.directory.glob("step-*.pt")}
        candidates = [(int(e["step"]), name) for name, e in entries.items()]
        candidates += [
            (step, name)
            for name in on_disk - entries.keys()
            if (step := files.step_of(name)) is not None
        ]
        for _, name in sorted(candidates, reverse=True):
            path = self.directory / name
            try:
                return files.load_checkpoint(path, entries.get(name)), path
            except CheckpointError as e:
                log.warning("%s - skipped", e)
        return None

    def load(self, path: Path) -> dict[str, Any]:
        """Load ``path``, verified against its directory's manifest when it is listed there."""
        path = Path(path)
        self.wait()
        entry = files.read_manifest(path.parent).get(path.name)
        return files.load_checkpoint(path, entry)

    def _entries(self) -> dict[str, dict[str, Any]]:
        """The manifest, or empty (with a warning) when it is unreadable.

        A broken manifest must not stop a preempted job from resuming or saving: files on disk
        are still found (without checksums), and the next save writes a fresh manifest.
        """
        try:
            return files.read_manifest(self.directory)
        except CheckpointError as e:
            log.warning("%s - ignored; checkpoint files on disk load without checksums", e)
            return {}

    def _write(self, state: dict[str, Any], meta: dict[str, Any]) -> None:
        """Write one checkpoint, then the manifest and ``latest``, then prune: in that order,
        so an old checkpoint is deleted only once the new one is complete on disk."""
        files.remove_stale_tmp(self.directory)
        name = files.checkpoint_name(meta["step"])
        size, sha256 = files.save_atomic(state, self.directory / name)
        entries = self._entries()
        entries[name] = {"size": size, "sha256": sha256, **meta, "time": time.time()}
        keep = self._retained(entries)
        files.write_manifest(self.directory, {n: e for n, e in entries.items() if n in keep})
        files.write_text_atomic(self.directory / files.LATEST, name + "\n")
        for old in entries.keys() - keep:
            with contextlib.suppress(FileNotFoundError):
                (self.directory / old).unlink()
            log.debug("removed %s (outside keep_last=%d / best)", old, self.keep_last)

    def _retained(self, entries: dict[str, dict[str, Any]]) -> set[str]:
        """The last ``keep_last`` written, plus the best by ``best_metric`` when set.

        "Last" is by write time, not step, so a run restarted from an earlier step never prunes
        the checkpoint it just wrote in favour of higher-step leftovers of the old run.
        """
        order = sorted(entries, key=lambda n: (entries[n]["time"], entries[n]["step"]))
        keep = set(order[-self.keep_last :])
        metric = self.best_metric
        if metric is None:
            return keep
        scored = [n for n in order if entries[n].get("metrics", {}).get(metric) is not None]
        if scored:
            pick = max if self.best_mode == "max" else min
            keep.add(pick(scored, key=lambda n: entries[n]["metrics"][metric]))
        return keep


def _copy_to_cpu(obj: Any) -> Any:
    """A deep copy with every tensor copied into fresh CPU memory (a real copy even on CPU)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        out = copy.copy(obj)  # keeps the class and attributes, e.g. a state_dict's _metadata
        if hasattr(out, "__dict__"):
            out.__dict__ = copy.deepcopy(obj.__dict__)
        for k, v in obj.items():
            out[k] = _copy_to_cpu(v)
        return out
    if isinstance(obj, list):
        return [_copy_to_cpu(v) for v in obj]
    if isinstance(obj, tuple) and not hasattr(obj, "_fields"):
        return type(obj)(_copy_to_cpu(v) for v in obj)
    return copy.deepcopy(obj)
