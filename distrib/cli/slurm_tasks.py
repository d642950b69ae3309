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

JOB_FILE = "slurm_job"  # <run dir>/slurm_job: the SLURM job (array task) that trained it
REQUEUE_EXIT_CODE = 75  # = distrib.trainer.preemption.REQUEUE_EXIT_CODE, without importing torch


def _job() -> str:
    array = os.environ.get("SLURM_ARRAY_JOB_ID")
    if array:
        return f"{array}_{os.environ.get('SLURM_ARRAY_TASK_ID', '0')}"
    return os.environ.get("SLURM_JOB_ID", "")


def cancelled(job: str, environ: Any = None) -> bool:
    """Whether SLURM is ending ``job`` for good (``scancel``), not for a requeue.

    SLURM sends SIGTERM both on ``scancel`` and on preemption, and both leave the job
    COMPLETING when the signal arrives. Preemption in REQUEUE mode has already counted the
    requeue then (seen on slurm 22.05: ``Restarts=1`` in the trap of a first allocation);
    ``scancel`` has not. A time limit signals USR2 while the job is still RUNNING.
    """
    env = os.environ if environ is None else environ
    try:
        out = subprocess.run(
            ["scontrol", "-o", "show", "job", job], capture_output=True, text=True, timeout=30
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return False
    fields = dict(w.split("=", 1) for w in out.split() if "=" in w)
    state = fields.get("JobState", "")
    restarts = fields.get("Restarts", "0")
    return state in ("COMPLETING", "CANCELLED") and restarts == env.get("SLURM_RESTART_COUNT", "0")


def requeue_or_exit(code: int, resume_command: str | None = None) -> None:
    """After every rank saved and stopped with 75: rank 0 asks SLURM to requeue the job, and
    the task exits without returning (submitit must not record a result for an unfinished
    job). A job SLURM is already requeueing (preemption) refuses the second request; fine. A
    job cancelled with ``scancel`` is not requeued: it ends CANCELLED, saying how to resume."""
    if os.environ.get("SLURM_PROCID") == "0":
        job = _job()
        if cancelled(job):
            hint = f"; to resume: {resume_command}" if resume_command else ""
            print(
                f"distrib: job {job} was cancelled (scancel): its checkpoint is written, and it "
                f"is not requeued{hint}",
                file=sys.stderr,
                flush=True,
            )
            sys.stdout.flush()
            os._exit(code)
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


def train_task(
    values: dict, run_dir: str, group: str | None = None, resume_command: str | None = None
) -> dict[str, Any]:
    """One SLURM task of a ``launcher=slurm`` training job: meet, train, requeue when stopped
    (``resume_command``: what a cancelled job says resumes it by hand)."""
    from distrib.config import to_config
    from distrib.trainer.loop import fit

    cfg = to_config(values)
    if os.environ.get("SLURM_PROCID") == "0":  # the job's id, for a sweep's table
        Path(run_dir, JOB_FILE).write_text(_job() + "\n")
    join(Path(run_dir) / ".distrib", timeout_s=cfg.trainer.timeout_s)
    try:
        return fit(cfg, Path(run_dir), group=group)
    except SystemExit as e:
        if e.code == REQUEUE_EXIT_CODE:
            requeue_or_exit(REQUEUE_EXIT_CODE, resume_command)
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
