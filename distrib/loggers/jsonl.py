"""Metrics as JSON lines: ``<run_dir>/metrics.jsonl``, one object per log call.

The file is opened for appending, so a resumed job continues the same file. A job resumed from
step S first moves the rows past S -- logged by the attempt that was abandoned after its last
checkpoint, and about to be logged again -- to ``metrics.abandoned.jsonl`` beside it, so the
file's steps only grow and every reader (a plot, the sweep table) reads one clean history.
Each line is flushed when written, so ``tail -f`` and a crash both see every row that was
logged. Non-finite numbers are written as ``null``: strict JSON readers
(``jq``, browsers) reject ``NaN``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

ABANDONED = "metrics.abandoned.jsonl"


class JsonlLogger:
    """Appends ``{"step": step, **metrics}`` to ``path`` (created with its parent folders);
    ``start_step``: where this job starts (a resume's step, 0 for a fresh start): rows past it
    are moved aside first (None: append to what is there)."""

    def __init__(self, path: Path, start_step: int | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if start_step is not None and self.path.exists():
            set_aside_after(self.path, start_step)
        self._file = self.path.open("a", encoding="utf-8")
        if self._file.tell() > 0 and not _ends_with_newline(self.path):
            self._file.write("\n")  # a killed job may have left half a line: start a fresh one

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        row = {"step": step, **{k: _jsonable(v) for k, v in metrics.items() if k != "step"}}
        self._file.write(json.dumps(row, allow_nan=False) + "\n")
        self._file.flush()

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()


def set_aside_after(path: Path, step: int) -> int:
    """Move the rows of ``path`` past ``step`` to `ABANDONED` beside it (appended there, so
    nothing is lost), atomically; return how many moved."""
    rows = read_jsonl(path)
    later = [r for r in rows if isinstance(r.get("step"), int) and r["step"] > step]
    if not later:
        return 0
    kept = [r for r in rows if r not in later]
    with (path.parent / ABANDONED).open("a", encoding="utf-8") as f:
        f.writelines(json.dumps(r, allow_nan=False) + "\n" for r in later)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(json.dumps(r, allow_nan=False) + "\n" for r in kept), encoding="utf-8")
    tmp.replace(path)
    return len(later)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Every row of a metrics file, in order (torn or blank lines skipped)."""
    rows = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def _ends_with_newline(path: Path) -> bool:
    with path.open("rb") as f:
        f.seek(-1, 2)
        return f.read(1) == b"\n"


def _jsonable(value: Any) -> Any:
    if isinstance(value, bool | int | str) or value is None:
        return value
    try:
        number = float(value)  # floats, numpy scalars, one-element tensors
    except (TypeError, ValueError):
        return str(value)
    return number if math.isfinite(number) else None
