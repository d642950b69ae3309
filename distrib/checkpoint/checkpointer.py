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

A sync `save` serialises the state into a temporary file (what a bare ``torch.save`` costs);
the writer thread then fsyncs it, hashes it, renames it and updates the manifest (the
checkpoint counts from then on), and `save` returns when that is done (or at once with
``wait=False``). With
``async_save=True``, `save` blocks only while it copies the state to CPU memory and the writer
thread serialises too. One write is in flight
at most: the next `save` (or `wait`, `close`, a `load`) waits for it and re-raises its error.

A sharded model (FSDP) passes ``sharded=`` its DCP state to `save`, on EVERY rank: each rank
writes its own shards (`distrib.checkpoint.sharded`), rank 0 commits the directory and keeps
the manifest; everything above (verification, ``latest``, retention, the lineage) is the same
for both kinds, and a ``.pt`` and a ``.dcp`` checkpoint can follow each other in one run.
"""

from __future__ import annotations

import atexit
import contextlib
import copy
import logging
import math
import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from distrib.checkpoint import files, sharded
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
        keep: bool = True,
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
        self.enabled = enabled and keep
        self.keep = keep
        """False: the run keeps no checkpoints; every save is a no-op on every rank."""
        self.head: str | None = None
        """The checkpoint this run continues from: the last one saved, or resumed from."""
        self._pending: Future[None] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._async_group: Any = None  # sharded async saves: a process group of their own
        self._pruning: Future[None] | None = None
        if enabled:
            self.directory.mkdir(parents=True, exist_ok=True)

    def save(
        self,
        state: dict[str, Any],
        *,
        step: int,
        epoch: int,
        metrics: dict[str, float] | None = None,
        sharded: dict[str, Any] | None = None,
        wait: bool = True,
    ) -> None:
        """Write ``state`` as ``step-<step>.pt``; a no-op unless this checkpointer is enabled.

        ``state`` must load with ``weights_only=True``: tensors, python scalars, strings and
        dicts/lists/tuples of them (what ``state_dict()`` methods return). With ``sharded``
        (DCP state: ``{"model": ..., "optim": ...}`` of a sharded model) every rank must call
        this: the checkpoint is the directory ``step-<step>.dcp``, ``state`` its extra.pt.

        A sync save returns once the checkpoint is committed (durable: what the trainer
        does); with ``wait=False`` once it is serialised -- fsync, sha256, rename and manifest
        follow on the writer thread, and the next save, `wait`, `close` or a load waits.
        """
        if sharded is not None and self.keep:
            self._save_sharded(state, sharded, step=step, epoch=epoch, metrics=metrics, wait=wait)
            return
        if not self.enabled:
            return
        meta = self._meta(step, epoch, metrics)
        self.head = files.checkpoint_name(step)
        self.wait()  # one write in flight
        if self.async_save:
            snapshot = _copy_to_cpu(state)  # training may modify the originals from now on
            self._pending = self._writer().submit(self._write, snapshot, meta)
            return
        files.remove_stale_tmp(self.directory)  # sync: serialise here, the rest on the writer
        name = files.checkpoint_name(meta["step"])
        tmp = files.serialize(state, self.directory / name)
        self._pending = self._writer().submit(self._finish, tmp, name, meta)
        if wait:
            self.wait()

    def _writer(self) -> ThreadPoolExecutor:
        """The writer thread, started at the first save. Executor threads are joined (after
        their queued work) before atexit handlers run, so a pending write completes at exit;
        `close` via atexit then reports its error."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="distrib-ckpt")
            atexit.register(self.close)
        return self._executor

    def _meta(self, step: int, epoch: int, metrics: dict[str, float] | None) -> dict[str, Any]:
        return {
            "step": int(step),
            "epoch": int(epoch),
            "parent": self.head,  # the lineage: what this run continued from
            "metrics": {  # NaN/Inf: null, neither best nor invalid JSON
                k: float(v) if math.isfinite(float(v)) else None for k, v in (metrics or {}).items()
            },
        }

    def _save_sharded(
        self,
        extra: dict[str, Any],
        app_state: dict[str, Any],
        *,
        step: int,
        epoch: int,
        metrics: dict[str, float] | None,
        wait: bool,
    ) -> None:
        """Every rank writes its shards; rank 0 (``enabled``) commits, as `sharded` says."""
        import torch.distributed as dist

        self.wait()  # one write in flight, on every rank
        name = files.checkpoint_name(step, sharded=True)
        tmp = sharded.tmp_dir(self.directory, name)
        if self.enabled:
            files.remove_stale_tmp(self.directory)  # a killed save's leftovers; nothing in flight
        group = None
        if self.async_save:
            if self._async_group is None:
                self._async_group = dist.new_group(backend="gloo")  # every rank, here, once
            group = self._async_group
        dist.barrier()  # nobody writes into tmp before rank 0 has cleared it
        future = sharded.write(app_state, tmp, process_group=group)
        if not self.enabled:
            self._pending = future
            return
        meta = self._meta(step, epoch, metrics)
        self.head = name
        self._pending = self._writer().submit(
            self._commit, tmp, name, _copy_to_cpu(extra), meta, future
        )
        if wait and future is None:
            self.wait()

    def _commit(
        self, tmp: Path, name: str, extra: dict[str, Any], meta: dict[str, Any], future: Any
    ) -> None:
        if future is not None:
            future.result()  # every rank's shards are on disk (DCP's finish step on rank 0)
        self._keep_aside(name)
        listing = sharded.commit(tmp, self.directory / name, extra)
        entry = {
            "size": sum(f["size"] for f in listing.values()),
            "files": listing,
            **meta,
            "time": time.time(),
        }
        self._record(name, entry)

    def wait(self) -> None:
        """Block until the write in flight (if any) is committed and the checkpoints it
        retired are deleted; re-raise its error once."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()
        pruning, self._pruning = self._pruning, None
        if pruning is not None:
            pruning.result()

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

        **The one rule** (retention uses the same order): newest means last *written* -- the
        manifest's write time, or the file's mtime for a ``step-*.pt`` the manifest misses (a
        crash between the rename and the manifest update; it loads with ``weights_only=True``
        but without a checksum) -- with the step breaking ties. So after a resume from an
        earlier step, the checkpoints of the resumed run come before the higher-step leftovers
        of the abandoned one. A file that fails costs one warning line, is marked bad in the
        manifest (skipped from then on, never counted as kept) and stays on disk.
        """
        self.wait()
        if not self.directory.is_dir():
            return None
        entries = self._entries()
        for name in self._lineage_first(entries):
            path = self.directory / name
            if entries.get(name, {}).get("bad"):
                continue
            try:
                state = load_any(path, entries.get(name))
                self.head = name
                return state, path
            except CheckpointError as e:
                log.warning("%s - skipped", e)
                if name in entries and self.enabled:  # out of the good set; the file stays
                    entries[name]["bad"] = str(e)
                    files.write_manifest(self.directory, entries)
        return None

    def _lineage_first(self, entries: dict[str, dict[str, Any]]) -> list[str]:
        """Candidates in resume order: the current lineage -- from its head (``latest``: the
        last checkpoint saved, or explicitly resumed from) back through each checkpoint's
        parent -- then any other checkpoint, newest written first."""
        order = self._newest_first(entries)
        try:
            head = (self.directory / files.LATEST).read_text().strip()
        except OSError:
            head = ""
        chain: list[str] = []
        name = head if head in entries or head in order else (order[0] if order else "")
        while name and name not in chain and (name in entries or name in order):
            chain.append(name)
            name = entries.get(name, {}).get("parent") or ""
        # A file the manifest misses, written after the head: the save a crash interrupted
        # between its rename and the manifest update -- the lineage's newest.
        since = entries.get(chain[0], {}).get("time", 0.0) if chain else 0.0
        unlisted = [n for n in order if n not in entries and self._mtime(n) > since]
        chain = unlisted + [n for n in chain if n not in unlisted]
        return chain + [n for n in order if n not in chain]

    def _mtime(self, name: str) -> float:
        try:
            return (self.directory / name).stat().st_mtime
        except OSError:
            return 0.0

    def _newest_first(self, entries: dict[str, dict[str, Any]]) -> list[str]:
        on_disk = {p.name: p for p in self.directory.glob("step-*") if files.step_of(p.name)}
        when: dict[str, tuple[float, int]] = {
            name: (float(e["time"]), int(e["step"])) for name, e in entries.items()
        }
        for name in on_disk.keys() - entries.keys():
            step = files.step_of(name)
            if step is not None:
                with contextlib.suppress(OSError):
                    when[name] = (on_disk[name].stat().st_mtime, step)
        return sorted(when, key=lambda n: when[n], reverse=True)

    def load(self, path: Path) -> dict[str, Any]:
        """Load ``path``, verified against its directory's manifest when it is listed there.

        A checkpoint of this directory becomes the head of the run's lineage, recorded in
        ``latest`` at once: a crash before the next save still resumes from there.
        """
        path = Path(path)
        self.wait()
        same = path.parent.resolve() == self.directory.resolve()
        entry = (self._entries() if same else files.read_manifest(path.parent)).get(path.name)
        state = load_any(path, entry)
        if path.parent.resolve() == self.directory.resolve() and self.head != path.name:
            self.head = path.name
            if self.enabled:
                files.write_text_atomic(self.directory / files.LATEST, path.name + "\n")
        return state

    def _entries(self) -> dict[str, dict[str, Any]]:
        """The manifest; an unreadable one is rebuilt from the checkpoints on disk.

        A broken manifest must not brick the run directory: the writer (rank 0) keeps it aside
        as ``manifest.json.bad``, and lists every checkpoint that loads (``weights_only``) with
        its size and sha256 taken now; a reader that may not write does without checksums.
        """
        try:
            return files.read_manifest(self.directory)
        except CheckpointError as e:
            if not self.enabled:
                log.warning("%s - ignored; checkpoint files on disk load without checksums", e)
                return {}
            return self._rebuild_manifest(e)

    def _rebuild_manifest(self, error: CheckpointError) -> dict[str, dict[str, Any]]:
        bad = self.directory / f"{files.MANIFEST}.bad"
        os.replace(self.directory / files.MANIFEST, bad)
        entries: dict[str, dict[str, Any]] = {}
        for path in sorted(self.directory.glob("step-*")):
            step = files.step_of(path.name)
            if step is None:
                continue
            try:
                state = load_any(path, None)
            except CheckpointError:
                continue  # unreadable: left on disk, out of the good set
            entries[path.name] = {
                **_listing(path),
                "step": step,
                "epoch": int(state.get("epoch", 0)),
                "parent": None,
                "metrics": {},
                "time": path.stat().st_mtime,
            }
        files.write_manifest(self.directory, entries)
        log.warning(
            "%s - rebuilt from the %d checkpoint(s) that load; the bad one is kept as %s",
            error,
            len(entries),
            bad.name,
        )
        return entries

    def _write(self, state: dict[str, Any], meta: dict[str, Any]) -> None:
        """Write one checkpoint, then the manifest and ``latest``, then prune: in that order,
        so an old checkpoint is deleted only once the new one is complete on disk."""
        files.remove_stale_tmp(self.directory)
        name = files.checkpoint_name(meta["step"])
        self._finish(files.serialize(state, self.directory / name), name, meta)

    def _keep_aside(self, name: str) -> None:
        """A file of that name that did not verify (a fresh start beside bad checkpoints) is
        renamed, never overwritten: it may be all that is left of a run."""
        final = self.directory / name
        entry = self._entries().get(name)
        if final.exists() and (entry is None or entry.get("bad")):
            aside = final.with_name(f"{name}.unread-{int(time.time())}")
            os.replace(final, aside)
            log.warning("%s did not verify: kept as %s, not overwritten", final, aside.name)

    def _finish(self, tmp: Path, name: str, meta: dict[str, Any]) -> None:
        self._keep_aside(name)
        size, sha256 = files.commit(tmp, self.directory / name)
        self._record(name, {"size": size, "sha256": sha256, **meta, "time": time.time()})

    def _record(self, name: str, entry: dict[str, Any]) -> None:
        """A committed checkpoint into the manifest and ``latest``, then prune."""
        entries = self._entries()
        entries[name] = entry
        keep = self._retained(entries)
        files.write_manifest(self.directory, {n: e for n, e in entries.items() if n in keep})
        files.write_text_atomic(self.directory / files.LATEST, name + "\n")
        doomed = [self.directory / old for old in entries.keys() - keep]
        if doomed:  # out of the manifest already: `wait` (and a waiting save) waits for this too
            self._pruning = self._writer().submit(self._prune, doomed)

    def _prune(self, paths: list[Path]) -> None:
        for path in paths:
            sharded.remove(path)
            log.debug("removed %s (outside keep_last=%d / best)", path.name, self.keep_last)

    def _retained(self, entries: dict[str, dict[str, Any]]) -> set[str]:
        """The last ``keep_last`` good ones written, the best by ``best_metric`` when set, and
        every file marked bad (kept on disk for a look, never counted as one of the kept).

        "Last" is by write time, the order `latest_good` resumes from: a run restarted from an
        earlier step never prunes the checkpoint it just wrote (or the one it resumed from,
        before a newer good one exists) in favour of higher-step leftovers of the old run.
        """
        bad = {n for n, e in entries.items() if e.get("bad")}
        order = sorted(entries.keys() - bad, key=lambda n: (entries[n]["time"], entries[n]["step"]))
        keep = set(order[-self.keep_last :]) | bad
        metric = self.best_metric
        if metric is None:
            return keep
        scored = [n for n in order if entries[n].get("metrics", {}).get(metric) is not None]
        if scored:
            pick = max if self.best_mode == "max" else min
            keep.add(pick(scored, key=lambda n: entries[n]["metrics"][metric]))
        return keep


def _listing(path: Path) -> dict[str, Any]:
    """A manifest entry's size and checksum(s), taken from the files as they are now."""
    if path.is_dir():
        listing = {
            p.name: {"size": p.stat().st_size, "sha256": files.sha256_of(p)}
            for p in sorted(path.iterdir())
            if p.is_file()
        }
        return {"size": sum(f["size"] for f in listing.values()), "files": listing}
    return {"size": path.stat().st_size, "sha256": files.sha256_of(path)}


def load_any(path: Path, entry: dict[str, Any] | None) -> dict[str, Any]:
    """A checkpoint of either kind, verified against its manifest entry when there is one: a
    ``.pt`` file's state, or a sharded directory's extra.pt (its shards load through
    `distrib.checkpoint.sharded.load_into`, on every rank, once every file verified)."""
    if path.suffix == ".dcp":
        if entry is not None:
            sharded.verify(path, entry)
        return sharded.load_extra(path)
    return files.load_checkpoint(path, entry)


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
