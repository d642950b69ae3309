"""The exact command that resumes a stopped run: what every "resume" message prints.

The default run directory is a new ``outputs/<date>/<time>`` on every launch, so "run the same
command" would start over; the command printed here is the run's own overrides (hydra's record
of them, so a sweep's job gets its own point's) with its secrets cut out, plus
``hydra.run.dir=<absolute run dir>``. Printed only when the run directory holds a checkpoint.
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Iterable
from pathlib import Path

from distrib.secrets import scrub


def command(
    overrides: Iterable[str],
    run_dir: Path,
    secrets: set[str],
    *,
    argv: list[str] | None = None,
    in_place: bool = False,
) -> str:
    """``python -m distrib.train <overrides> hydra.run.dir=<run_dir>`` (``distrib-train ...``
    for the console script; a torchrun worker's command starts ``torchrun <its options>``)."""
    argv = sys.argv if argv is None else argv
    prog = "distrib-train" if Path(argv[0]).name == "distrib-train" else "python -m distrib.train"
    if in_place:
        prog = "torchrun <the same options> -m distrib.train"
    extra = []
    if "--config-dir" in argv[1:-1]:  # a project's own conf/ on the search path
        extra = ["--config-dir", argv[argv.index("--config-dir") + 1]]
    kept = [o for o in overrides if not o.lstrip("+~").startswith("hydra.run.dir=")]
    words = [*extra, *(scrub(o, secrets) for o in kept), f"hydra.run.dir={Path(run_dir).resolve()}"]
    return f"{prog} {shlex.join(words)}"


def has_checkpoint(run_dir: Path) -> bool:
    """Whether a resume from ``run_dir`` would find something to resume from."""
    ckpts = Path(run_dir) / "checkpoints"
    return ckpts.is_dir() and any(ckpts.glob("step-*"))
