"""A hydra multirun ends with one table: each job's overrides and final eval metrics.

    python -m distrib.train -m optim.lr=0.1,0.05 launcher.nproc=2   # prints the table at the end
    python -m distrib.sweep multirun/2024-05-01/12-00-00            # the same table, any time later

Registered in ``conf/config.yaml`` under ``hydra.callbacks``. The summary is built from files
only (``<job dir>/.hydra/overrides.yaml`` and ``<job dir>/metrics.jsonl``), never from job
return values: with hydra-submitit-launcher the jobs run on SLURM nodes and
``on_multirun_end`` runs in the submitting process, which only sees the shared file system.
Writes ``summary.csv`` and ``summary.md`` into the sweep directory.
"""

from __future__ import annotations

import csv
import io
import os
import sys
from pathlib import Path
from typing import Any

import yaml
from hydra.experimental.callback import Callback

from distrib.loggers.jsonl import read_jsonl

NO_METRICS = "no metrics"
_FIXED = ("job", "overrides", "step")

__all__ = ["SweepSummary", "summarize", "write_summary"]


def summarize(sweep_dir: Path) -> list[dict[str, Any]]:
    """One row per job dir: ``job``, ``overrides``, ``step`` and its last ``eval_*`` metrics.

    A job with no eval row (it failed, or has not evaluated yet) has ``step`` None and no
    metric keys, so one broken job never hides the others.
    """
    jobs = [p.parent for p in Path(sweep_dir).glob("*/.hydra")]
    return [_job_row(job) for job in sorted(jobs, key=_job_order)]


def _job_order(job: Path) -> tuple[int, str]:
    # Numeric job dirs (hydra.sweep.subdir=${hydra.job.num}) sort as numbers: 2 before 10.
    return (int(job.name), "") if job.name.isdigit() else (sys.maxsize, job.name)


def _job_row(job: Path) -> dict[str, Any]:
    overrides_file = job / ".hydra" / "overrides.yaml"
    overrides = yaml.safe_load(overrides_file.read_text()) if overrides_file.exists() else []
    row: dict[str, Any] = {"job": job.name, "overrides": " ".join(overrides or []), "step": None}
    slurm = job / "slurm_job"  # written by each SLURM job's rank 0 (distrib.cli.slurm_tasks)
    if slurm.exists():
        row["slurm_job"] = slurm.read_text().strip()
    final = _last_eval_row(job / "metrics.jsonl")
    if final is not None:
        row["step"] = final.get("step")
        row.update({k: v for k, v in final.items() if k.startswith("eval_")})
    return row


def _last_eval_row(path: Path) -> dict[str, Any] | None:
    # Train rows (loss, lr, ...) and eval rows share the file; a resumed job appends rows it
    # logs again, so the last eval row in file order is the final one.
    if not path.exists():
        return None
    rows = [r for r in read_jsonl(path) if any(k.startswith("eval_") for k in r)]
    return rows[-1] if rows else None


def _columns(rows: list[dict[str, Any]]) -> list[str]:
    slurm = ["slurm_job"] if any("slurm_job" in row for row in rows) else []
    metrics = sorted({k for row in rows for k in row} - set(_FIXED) - set(slurm))
    return [_FIXED[0], *slurm, *_FIXED[1:], *metrics]


def _cell(row: dict[str, Any], key: str) -> str:
    value = row.get(key)
    if key == "step" and value is None:
        return NO_METRICS
    if value is None:
        return ""
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def to_markdown(rows: list[dict[str, Any]]) -> str:
    """A markdown table of ``rows`` (as `summarize` returns them), one line per job."""
    columns = _columns(rows)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = (_cell(row, c).replace("|", "\\|") for c in columns)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def to_csv(rows: list[dict[str, Any]]) -> str:
    """The same table as CSV (floats at full precision, for plotting)."""
    columns = _columns(rows)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow(_cell(row, c) if c == "step" else row.get(c, "") for c in columns)
    return out.getvalue()


def _write_atomic(path: Path, text: str) -> None:
    # A reader (or a second sweep callback) never sees half a file.
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_summary(sweep_dir: Path) -> str:
    """Write ``summary.csv`` and ``summary.md`` into ``sweep_dir``; return the markdown."""
    sweep_dir = Path(sweep_dir)
    rows = summarize(sweep_dir)
    table = to_markdown(rows)
    _write_atomic(sweep_dir / "summary.csv", to_csv(rows))
    _write_atomic(sweep_dir / "summary.md", table)
    return table


class SweepSummary(Callback):
    """Hydra callback: at the end of a multirun, write and print the sweep's summary table."""

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        table = write_summary(sweep_dir)
        print(f"sweep summary ({sweep_dir / 'summary.md'}):\n{table}", end="", flush=True)


def main(argv: list[str] | None = None) -> int:
    """``python -m distrib sweep SWEEP_DIR``: summarize a sweep after the fact (or a failure)."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or not Path(args[0]).is_dir():
        print("usage: python -m distrib sweep SWEEP_DIR", file=sys.stderr)
        return 2
    print(write_summary(Path(args[0])), end="")
    return 0
