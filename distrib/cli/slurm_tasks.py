"""What ``launcher=slurm`` runs in each SLURM task: meet the job's other tasks, then train
(`train_task`) or run the user's script (`script_task`); after a stop for requeue, ask SLURM
for it (`requeue_or_exit`).

These are submitit's callables, pickled by reference: they live above the trainer (they call
`distrib.trainer.loop.fit`), while the rendezvous they start with (`distrib.distributed.slurm`)
lives below the process group.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from distrib.distributed.slurm import join

REQUEUE_EXIT_CODE = 75  # = distrib.trainer.preemption.REQUEUE_EXIT_CODE, without importing torch


def requeue_or_exit(code: int) -> None:
    """After every rank saved and stopped with 75: rank 0 asks SLURM to requeue the job, and
    the task exits without returning (submitit must not record a result for an unfinished
    job). A job SLURM is already requeueing (preemption) refuses the second request; fine."""
    if os.environ.get("SLURM_PROCID") == "0":
        job = os.environ.get("SLURM_ARRAY_JOB_ID") and (
            f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ.get('SLURM_ARRAY_TASK_ID', '0')}"
        )
        job = job or os.environ.get("SLURM_JOB_ID", "")
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            done = subprocess.run(
                ["scontrol", "requeue", job], capture_output=True, text=True, timeout=60
            )
            print(
                f"distrib: requeue of job {job}: "
                + ("accepted" if done.returncode == 0 else done.stderr.strip()),
                file=sys.stderr,
                flush=True,
            )
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def train_task(values: dict, run_dir: str, group: str | None = None) -> dict[str, Any]:
    """One SLURM task of a ``launcher=slurm`` training job: meet, train, requeue when stopped."""
    from distrib.config import to_config
    from distrib.trainer.loop import fit

    cfg = to_config(values)
    join(Path(run_dir) / ".distrib", timeout_s=cfg.trainer.timeout_s)
    try:
        return fit(cfg, Path(run_dir), group=group)
    except SystemExit as e:
        if e.code == REQUEUE_EXIT_CODE:
            requeue_or_exit(REQUEUE_EXIT_CODE)
        raise


def script_task(target: str, args: list[str], module: bool, run_dir: str) -> int:
    """One SLURM task running a user's torchrun-style script (or ``-m`` module)."""
    import runpy

    join(Path(run_dir) / ".distrib")
    sys.argv = [target, *args]
    code = 0
    try:
        if module:
            runpy.run_module(target, run_name="__main__", alter_sys=True)
        else:
            sys.path.insert(0, str(Path(target).resolve().parent))
            runpy.run_path(target, run_name="__main__")
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    if code == REQUEUE_EXIT_CODE:
        requeue_or_exit(code)
    if code:
        raise RuntimeError(f"{target} exited with status {code}")
    return code
