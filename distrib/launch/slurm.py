"""Submit a job to SLURM through submitit: one SLURM task per worker, on any number of nodes.

The submitting side only: it writes the sbatch script (submitit's), submits, says where the
logs and run directory are, and with ``wait`` follows the job through requeues to its end. What
each task runs (`distrib.cli.slurm_tasks.train_task` / `script_task`) meets the other tasks
itself, so nothing here picks a port or touches torch.
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distrib.errors import ConfigError

_DONE_STATES = (
    "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL",
    "DEADLINE",
)  # fmt: skip


class SubmitFailed(RuntimeError):
    """sbatch refused the job; the message carries sbatch's own reason."""


@dataclass(frozen=True)
class SlurmOptions:
    """What sbatch is asked for. Keys are the config's (``launcher.*``), so errors name them."""

    nodes: int = 1
    tasks_per_node: int = 1
    gpus_per_node: int = 0
    cpus_per_task: int = 1
    mem_gb: float = 0
    partition: str = ""
    time_min: int = 60
    account: str = ""
    qos: str = ""
    signal_delay_s: int = 120
    job_name: str = "distrib"
    sbatch: dict[str, Any] = field(default_factory=dict)
    setup: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for key, value, ok, allowed in (
            ("launcher.nnodes", self.nodes, self.nodes >= 1, "an integer >= 1"),
            ("launcher.nproc", self.tasks_per_node, self.tasks_per_node >= 1, "an integer >= 1"),
            ("launcher.gpus_per_node", self.gpus_per_node, self.gpus_per_node >= 0, ">= 0"),
            ("launcher.cpus_per_task", self.cpus_per_task, self.cpus_per_task >= 1, ">= 1"),
            ("launcher.mem_gb", self.mem_gb, self.mem_gb >= 0, ">= 0 (0: the default)"),
            ("launcher.time_min", self.time_min, self.time_min >= 1, "minutes >= 1"),
            ("launcher.signal_delay_s", self.signal_delay_s, self.signal_delay_s >= 1, ">= 1"),
        ):
            if not ok:
                raise ConfigError(key, value, allowed)
        if self.signal_delay_s >= self.time_min * 60:
            raise ConfigError(
                "launcher.signal_delay_s",
                self.signal_delay_s,
                f"seconds below launcher.time_min ({self.time_min} min)",
            )

    def parameters(self) -> dict[str, Any]:
        """submitit ``SlurmExecutor.update_parameters`` keywords (sbatch's names)."""
        params: dict[str, Any] = {
            "job_name": self.job_name,
            "nodes": self.nodes,
            "ntasks_per_node": self.tasks_per_node,
            "cpus_per_task": self.cpus_per_task,
            "time": self.time_min,
            "signal_delay_s": self.signal_delay_s,
            # requeue: a preempted or stopped job comes back into the same run directory
            "additional_parameters": {"requeue": True, **self.sbatch},
        }
        if self.gpus_per_node:
            params["gpus_per_node"] = self.gpus_per_node
        if self.mem_gb:
            params["mem"] = f"{int(self.mem_gb * 1024)}MB"
        for key in ("partition", "account", "qos"):
            if getattr(self, key):
                params[key] = getattr(self, key)
        if self.setup:
            params["setup"] = list(self.setup)
        return params


def sbatch_script(options: SlurmOptions, folder: Path, python: str = sys.executable) -> str:
    """The sbatch script a submission of ``options`` writes (for review and golden tests)."""
    from submitit.slurm.slurm import _make_sbatch_string

    command = f"{python} -u -m submitit.core._submit {folder / '%j'}"
    return _make_sbatch_string(command=command, folder=folder / "%j", **options.parameters())


def submit(fn: Callable[..., Any], args: tuple, options: SlurmOptions, folder: Path) -> Any:
    """Submit ``fn(*args)`` as one job (every task runs it); return the submitit job."""
    if shutil.which("sbatch") is None:
        raise SubmitFailed(
            "launcher=slurm: `sbatch` is not on PATH (run this on a SLURM login node)"
        )
    import submitit
    from submitit.core.utils import FailedJobError, FailedSubmissionError

    executor = submitit.SlurmExecutor(folder=folder / "%j")
    executor.update_parameters(**options.parameters())
    try:
        return executor.submit(fn, *args)
    except (FailedJobError, FailedSubmissionError) as e:
        raise SubmitFailed(f"sbatch refused the job: {_sbatch_reason(e)}") from None


def _sbatch_reason(error: BaseException) -> str:
    """sbatch's own ``error:`` lines, without submitit's wrapping."""
    lines = [ln.strip() for ln in str(error).splitlines()]
    said = [ln.split("error:", 1)[1].strip() for ln in lines if "error:" in ln]
    return "; ".join(dict.fromkeys(said)) or (lines[0] if lines else type(error).__name__)


def describe(job: Any, run_dir: Path) -> str:
    """What a user needs after submitting: the id and where to look."""
    paths = job.paths
    return (
        f"distrib: submitted SLURM job {job.job_id}\n"
        f"  run directory: {run_dir}\n"
        f"  logs: {paths.stdout} (and .err; task t: {str(paths.stdout).replace('_0_', '_<t>_')})\n"
        f"  follow: squeue -j {job.job_id}; cancel: scancel {job.job_id}"
    )


def follow(
    job: Any, *, state_every_s: float = 10.0, on_state: Callable[[str], None] | None = None
) -> Any:
    """Wait for ``job`` to end, through any requeues; return task 0's result or raise
    ``submitit``'s ``FailedJobError`` (its message holds the failed task's log tail).

    The result file is checked every second; SLURM's state (one ``sacct``) every
    ``state_every_s``, which is how a job that ended without a result is noticed.
    """
    last, asked = "", 0.0
    while not job.done():
        if time.monotonic() - asked >= state_every_s:
            asked = time.monotonic()
            state = job.watcher.get_state(job.job_id, mode="force").upper()
            if state != last and on_state is not None:
                on_state(state)
            last = state
            if state.split()[0] in _DONE_STATES:
                break
        time.sleep(1.0)
    return job.results()[0]


def run_job(
    fn: Callable[..., Any], args: tuple, options: SlurmOptions, run_dir: Path, *, wait: bool
) -> tuple[int, Any]:
    """Submit, print where to look, and with ``wait`` follow the job to its end; return the
    exit status for the command line (0 or 1) and task 0's result (the job id without wait).
    Every failure is said on stderr: sbatch's reason, or the failed task's log tail + a line."""
    try:
        job = submit(fn, args, options, run_dir / "slurm")
    except SubmitFailed as e:
        print(f"distrib: error: {e}", file=sys.stderr)
        return 1, None
    print(describe(job, run_dir), flush=True)
    if not wait:
        return 0, {"job_id": job.job_id}
    try:
        result = follow(
            job, on_state=lambda s: print(f"distrib: job {job.job_id}: {s}", flush=True)
        )
    except Exception as e:  # submitit's FailedJobError: the failed task's log tail included
        print(str(e).rstrip(), file=sys.stderr)
        print(
            f"distrib: error: SLURM job {job.job_id} failed (logs: {job.paths.stderr})",
            file=sys.stderr,
        )
        return 1, None
    print(f"distrib: SLURM job {job.job_id} completed", flush=True)
    return 0, result
