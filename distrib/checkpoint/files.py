"""Checkpoint files on disk: atomic writes, the manifest, and loads that verify before they trust.

Every file here reaches its final name only through ``os.replace`` of a fully written, fsynced
temporary in the same directory, so a crash (power loss, SIGKILL, OOM) at any point leaves the old
state or the new one, never a half-written file under the final name. Temporaries start with
``.tmp-``; loading never looks at them and `remove_stale_tmp` clears those a killed writer left.

Layout of a checkpoint directory::

    step-00000120.pt      torch.save of the state (names zero-padded so they sort)
    step-00000120.dcp/    or a sharded checkpoint's directory (`distrib.checkpoint.sharded`)
    manifest.json         {"version": 1, "checkpoints": {name: {size, sha256, step, epoch, ...}}}
    latest                the name of the newest checkpoint, one line

Loading uses ``torch.load(..., weights_only=True)`` only: a checkpoint is data, and a file that
would run code when unpickled is refused rather than executed.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import os
import re
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

import torch

MANIFEST = "manifest.json"
LATEST = "latest"
TMP_PREFIX = ".tmp-"
MANIFEST_VERSION = 1
_NAME = re.compile(r"^step-(\d+)\.(pt|dcp)$")
_CHUNK = 1 << 20


class CheckpointError(Exception):
    """A checkpoint file that cannot be trusted; the message is one line naming file and reason."""

    def __init__(self, path: Path, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: {reason}")


def checkpoint_name(step: int, sharded: bool = False) -> str:
    """``step-00000123.pt`` (``.dcp``: a sharded checkpoint's directory): zero-padded, so a
    plain sort of names is a sort by step."""
    return f"step-{step:08d}.{'dcp' if sharded else 'pt'}"


def step_of(name: str) -> int | None:
    """The step a checkpoint file name encodes, or None for any other file."""
    match = _NAME.match(name)
    return int(match.group(1)) if match else None


def _out_of_space(error: BaseException) -> bool:
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno == errno.ENOSPC:
            return True
        if "No space left on device" in str(seen) or "unexpected pos" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def fsync_dir(directory: Path) -> None:
    """Persist a rename: without this the new directory entry can be lost on power failure."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _replace_atomic(directory: Path, final: Path, write: Any, needed: int = 0) -> Any:
    """Call ``write(file)`` on a fresh temp in ``directory``, fsync it, rename it onto ``final``."""
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            result = write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        _raise_if_full(e, final, needed)
        raise
    fsync_dir(directory)
    return result


def save_atomic(obj: dict[str, Any], path: Path) -> tuple[int, str]:
    """``torch.save`` ``obj`` to ``path`` atomically and durably; return (size, sha256 hex).

    Example::

        size, sha = save_atomic({"model": model.state_dict()}, Path("ckpt/step-00000010.pt"))
    """
    return commit(serialize(obj, path), Path(path))


def serialize(obj: dict[str, Any], final: Path) -> Path:
    """First half of a two-phase save: ``torch.save`` ``obj`` into a fresh temporary beside
    ``final`` (bytes in the page cache, nothing durable yet); `commit` is the second half.

    Split so the training thread pays for the serialisation alone: fsync, the sha256 (read
    back from the page cache) and the rename happen in `commit`, on the checkpoint writer's
    thread. A checkpoint counts only once committed, so a crash in between leaves a
    ``.tmp-`` file and the previous checkpoint, as before.
    """
    final = Path(final)
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, dir=final.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)  # a real file: torch's own fast path, no Python-level writes
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        _raise_if_full(e, final, _tensor_bytes(obj))
        raise
    return Path(tmp)


def commit(tmp: Path, final: Path) -> tuple[int, str]:
    """Second half: fsync ``tmp`` while hashing it, rename it onto ``final``, fsync the
    directory; return (size, sha256). The hash reads the file back from the page cache on a
    second thread beside the fsync, so the two overlap where a core is free."""
    try:
        with open(tmp, "rb+") as f:
            syncing = threading.Thread(target=os.fsync, args=(f.fileno(),))
            syncing.start()
            with open(tmp, "rb") as g:
                digest = hashlib.file_digest(g, "sha256").hexdigest()
            syncing.join()
            size = os.fstat(f.fileno()).st_size
        os.replace(tmp, final)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        _raise_if_full(e, final, 0)
        raise
    fsync_dir(final.parent)
    return size, digest


def _raise_if_full(error: BaseException, final: Path, needed: int) -> None:
    if _out_of_space(error):  # torch buries ENOSPC under "enforce fail ... unexpected pos"
        free = shutil.disk_usage(final.parent).free
        need = f", ~{needed / 2**20:.1f} MiB needed" if needed else ""
        raise CheckpointError(
            final, f"disk full on {final.parent} ({free / 2**20:.1f} MiB free{need})"
        ) from error


def _tensor_bytes(obj: Any) -> int:
    """Roughly what ``torch.save`` of ``obj`` needs on disk: its tensors' bytes."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, list | tuple):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def write_text_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` atomically (the manifest and the ``latest`` pointer)."""
    path = Path(path)
    _replace_atomic(path.parent, path, lambda f: f.write(text.encode()))


def remove_stale_tmp(directory: Path) -> list[Path]:
    """Delete ``.tmp-*`` files (and sharded checkpoints' directories) a killed writer left
    behind; return what was removed.

    Only call this when no write into ``directory`` is in flight (the checkpointer calls it at
    the start of each write, and it has one write in flight at most).
    """
    removed = []
    for p in Path(directory).glob(f"{TMP_PREFIX}*"):
        with contextlib.suppress(FileNotFoundError):
            if p.is_dir():
                shutil.rmtree(p)
            else:
                p.unlink()
            removed.append(p)
    return removed


def read_manifest(directory: Path) -> dict[str, dict[str, Any]]:
    """The manifest's entries by file name; empty when there is none.

    A manifest that does not parse (it is always replaced atomically, so this means someone
    edited it) is raised as `CheckpointError` rather than silently treated as empty.
    """
    path = Path(directory) / MANIFEST
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise CheckpointError(path, f"unreadable manifest ({one_line(e)})") from e
    if not isinstance(data, dict) or data.get("version") != MANIFEST_VERSION:
        found = data.get("version") if isinstance(data, dict) else type(data).__name__
        raise CheckpointError(path, f"manifest version {found!r}, expected {MANIFEST_VERSION}")
    return dict(data.get("checkpoints", {}))


def write_manifest(directory: Path, entries: dict[str, dict[str, Any]]) -> None:
    """Replace the manifest with ``entries`` (sorted by name, so by step), atomically."""
    body = {"version": MANIFEST_VERSION, "checkpoints": _finite(dict(sorted(entries.items())))}
    text = json.dumps(body, indent=1, allow_nan=False)  # strict JSON: NaN/Inf become null
    write_text_atomic(Path(directory) / MANIFEST, text + "\n")


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def verify(path: Path, entry: dict[str, Any]) -> None:
    """Raise `CheckpointError` unless ``path`` has the size and sha256 the manifest recorded."""
    try:
        size = path.stat().st_size
    except FileNotFoundError as e:
        raise CheckpointError(path, "listed in the manifest but missing") from e
    if size != entry["size"]:
        raise CheckpointError(
            path, f"size mismatch (manifest says {entry['size']} bytes, file has {size})"
        )
    sha = sha256_of(path)
    if sha != entry["sha256"]:
        raise CheckpointError(
            path, f"sha256 mismatch (manifest says {entry['sha256'][:12]}.., file has {sha[:12]}..)"
        )


def load_checkpoint(path: Path, entry: dict[str, Any] | None) -> dict[str, Any]:
    """Load ``path`` onto the CPU, checked against its manifest ``entry`` when there is one.

    Raises `CheckpointError` (one line: file and reason) for a size or sha256 mismatch, a file
    that does not unpickle, or one that ``weights_only=True`` refuses because it would import
    or call arbitrary code. Never deletes anything: a bad file stays for a human to look at.
    """
    path = Path(path)
    if entry is not None:
        verify(path, entry)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as e:
        raise CheckpointError(path, "missing") from e
    except Exception as e:  # torch raises RuntimeError, UnpicklingError, EOFError, ...
        raise CheckpointError(path, f"does not load ({one_line(e)})") from e
    if not isinstance(state, dict):
        raise CheckpointError(path, f"holds a {type(state).__name__}, expected a dict")
    return state


def one_line(error: BaseException) -> str:
    """A one-line summary of ``error``; torch's load errors span paragraphs of advice.

    For a ``weights_only`` refusal, the useful line is the one naming the blocked global, which
    follows torch's opening paragraph about the ``weights_only`` default.
    """
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    if lines[0].startswith("Weights only load failed") and len(lines) > 1:
        return f"refused by weights_only=True: {lines[1]}"
    first = lines[0]
    cut = first.find(". ")
    return first[: cut + 1] if cut > 0 else first
