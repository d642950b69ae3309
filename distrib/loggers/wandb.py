"""Metrics to Weights & Biases: one run per job, created on rank 0, resumed with the job.

``wandb`` is imported inside `WandbLogger` only, so a job that does not choose this logger
never pays for (or needs) the package.

- Mode: ``$WANDB_MODE`` when set (``online``, ``offline``, ``disabled``); else ``online`` when
  ``$WANDB_API_KEY`` is set and ``offline`` otherwise, so a job on an air-gapped cluster never
  blocks on the network (sync later with ``wandb sync <run_dir>/wandb/offline-run-*``). A
  ``wandb login`` (netrc) without ``$WANDB_API_KEY`` needs ``WANDB_MODE=online``.
- Identity: the run id lives in ``<run_dir>/wandb_run_id``; a resumed job (same run dir) reads
  it and continues the same run with ``resume="allow"``.
- Files: ``dir=<run_dir>``, so everything wandb writes sits under ``<run_dir>/wandb``.
- Config: the resolved config with secrets redacted (`distrib.secrets.redact`).
- Steps only grow: wandb drops (and warns about) a step lower than one it has. A job resumed
  from step S after an attempt that logged up to L > S (it died after its last checkpoint)
  sends nothing for S+1..L -- wandb keeps the abandoned attempt's values there, and says so
  once -- and goes on from L+1. The last step sent lives in ``<run_dir>/wandb_last_step``.
"""

from __future__ import annotations

import logging
import os
import sys
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from distrib.secrets import config_secrets, redact, scrub, secret_values

log = logging.getLogger(__name__)

RUN_ID_FILE = "wandb_run_id"
LAST_STEP_FILE = "wandb_last_step"


def wandb_mode(environ: Mapping[str, str] | None = None) -> str:
    """The mode a run gets: ``$WANDB_MODE``, else online with an API key, else offline."""
    env = os.environ if environ is None else environ
    if env.get("WANDB_MODE"):
        return env["WANDB_MODE"]
    return "online" if env.get("WANDB_API_KEY") else "offline"


def run_id(run_dir: Path) -> str:
    """This job's wandb run id: read from ``<run_dir>/wandb_run_id``, created on first use."""
    path = Path(run_dir) / RUN_ID_FILE
    if path.exists():
        return path.read_text().strip()
    rid = uuid.uuid4().hex[:12]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(rid + "\n")
    tmp.replace(path)  # atomic: a job killed here leaves either no id or a whole one
    return rid


class WandbLogger:
    """A wandb run for this job (rank 0 only; `distrib.loggers.make_loggers` sees to that)."""

    def __init__(
        self,
        *,
        run_dir: Path,
        config: Mapping[str, Any],
        group: str | None = None,
        project: str | None = None,
        start_step: int = 0,
    ) -> None:
        import wandb

        run_dir = Path(run_dir)
        self.run_id = run_id(run_dir)
        self._last_file = run_dir / LAST_STEP_FILE
        try:
            self._last = int(self._last_file.read_text().strip())
        except (OSError, ValueError):
            self._last = -1
        if self._last > start_step:
            log.warning(
                "wandb: steps %d-%d were logged by the attempt that was abandoned after its last "
                "checkpoint; wandb keeps those (its steps only grow) and gets this run's from "
                "step %d on",
                start_step + 1,
                self._last,
                self._last + 1,
            )
        # wandb stores the command line (sys.argv) with the run: never a secret given there
        argv, secrets = list(sys.argv), config_secrets(dict(config)) | secret_values()
        sys.argv[:] = [scrub(a, secrets) for a in argv]
        try:
            self._run: Any = self._init(wandb, run_dir, config, group, project)
        finally:
            sys.argv[:] = argv
        url = getattr(self._run, "url", None)
        log.info("wandb run %s (%s)%s", self.run_id, wandb_mode(), f": {url}" if url else "")

    def _init(
        self,
        wandb: Any,
        run_dir: Path,
        config: Mapping[str, Any],
        group: str | None,
        project: str | None,
    ) -> Any:
        return wandb.init(
            project=project or os.environ.get("WANDB_PROJECT") or "distrib",
            id=self.run_id,
            resume="allow",
            dir=str(run_dir),
            group=group,
            config=redact(dict(config)),
            mode=wandb_mode(),  # type: ignore[arg-type]
            # Our own console and log files already record stdout; wandb's capture would wrap
            # sys.stdout (breaking the progress bar) and duplicate every line into the run.
            settings=wandb.Settings(console="off", silent=True),
        )

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        if step < self._last or (step == self._last and "loss" in metrics):
            return  # wandb has this step already (an abandoned attempt's); steps only grow
        row = {k: v for k, v in metrics.items() if k != "step"}  # wandb keeps its own step
        self._run.log(row, step=step)
        if step != self._last:
            self._last = step
            self._last_file.write_text(f"{step}\n")

    def close(self) -> None:
        """Finish the run and wait until wandb has written all of it.

        ``run.finish()`` alone returns once wandb's service has *received* the run's end; the
        service (``wandb-core``, a separate process) writes the ``.wandb`` file in its own time.
        Seen under load: 1 close in 15 returned with the file still at its 7-byte header, so a
        job ending right after could lose its whole wandb record. ``wandb.teardown()`` waits
        for the service to flush and exit (the atexit hook wandb registers for the same purpose
        does not run in every multiprocessing setup, as its docstring says).
        """
        if self._run is None:
            return
        import wandb

        try:
            self._run.finish()
        finally:
            self._run = None
            wandb.teardown()
