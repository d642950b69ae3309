"""``python -m distrib.train`` (console script ``distrib-train``): the hydra entry.

    python -m distrib.train                                   # 1 process, digits, small CNN
    python -m distrib.train launcher.nproc=2                  # 2 local workers (elastic agent)
    torchrun --standalone --nproc_per_node=2 -m distrib.train # already workers: train in place
    python -m distrib.train model._target_=my_pkg.MyNet data=... optim.lr=1e-3

It sits above both sides: it composes and checks the config (a bad value exits 2 with one line
before any process or port is started), then either launches workers (``distrib.launch``) or,
when this process already is a worker (torchrun, SLURM), trains in place (``distrib.trainer.loop``).
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

from distrib.bounded import leave

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"  # the repository's conf/
HYDRA_FILES = ("config.yaml", "hydra.yaml", "overrides.yaml")
_NO_PREFLIGHT = (
    "help",
    "hydra_help",
    "cfg",
    "info",
    "shell_completion",
    "multirun",
    "experimental_rerun",
)


def main() -> None:
    try:
        _main()
    except KeyboardInterrupt:  # before training started, or Ctrl-C twice: no traceback
        print("distrib: interrupted (nothing saved)", file=sys.stderr)
        leave(128 + signal.SIGINT)
    except SystemExit as e:  # (a store call left hanging must not turn it into SIGABRT)
        leave(e.code)
    leave(0)


def _main() -> None:
    from distrib import config

    config.register()
    args = _parse_args(sys.argv[1:])
    if not any(getattr(args, name, None) for name in _NO_PREFLIGHT):
        try:
            extra = []  # --config-dir adds a search path (the user's own groups)
            if args.config_dir:
                extra = [f"hydra.searchpath=[file://{Path(args.config_dir).resolve()}]"]
            preflight(
                args.overrides + extra,
                config_dir=args.config_path,
                config_name=args.config_name or "config",
            )
        except config.ConfigError as e:
            _fail(e)
    _hydra_main()


def _parse_args(argv: list[str]) -> Any:
    from hydra._internal.utils import get_args_parser

    return get_args_parser().parse_args(argv)


def _fail(error: Exception) -> None:
    print(f"distrib: error: {error}", file=sys.stderr)
    sys.exit(2)


def compose(
    overrides: list[str], *, config_dir: str | None = None, config_name: str = "config"
) -> Any:
    """The composed config for ``overrides`` (as the CLI would see them), hydra keys removed."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from distrib.config import describe, register

    register()
    conf = str(Path(config_dir).resolve()) if config_dir else str(CONF_DIR)
    try:
        with initialize_config_dir(config_dir=conf, version_base="1.3", job_name="distrib"):
            return hydra_compose(config_name=config_name, overrides=list(overrides))
    except Exception as e:  # hydra wraps every composition problem; report it in one line
        raise describe(e) from None


def preflight(
    overrides: list[str], *, config_dir: str | None = None, config_name: str = "config"
) -> Any:
    """Compose and fully check the config; raise `ConfigError` on the first problem."""
    from distrib.config import check_targets, to_config
    from distrib.data import per_rank_batch
    from distrib.distributed.process_group import check_devices
    from distrib.env import is_worker, read_env

    cfg = to_config(compose(overrides, config_dir=config_dir, config_name=config_name))
    check_targets(cfg)
    env = read_env() if is_worker() else None
    world = env.world_size if env else cfg.launcher.nproc * cfg.launcher.nnodes
    per_rank_batch(cfg.trainer.global_batch_size, world, cfg.trainer.grad_accum)
    local = env.local_world_size if env else cfg.launcher.nproc
    submitting = env is None and cfg.launcher.name == "slurm"
    if not submitting:  # a login node's devices say nothing about the job's nodes
        check_devices(cfg.trainer.device, cfg.trainer.backend, local)
    if submitting:
        slurm_options(cfg.launcher)
    elif env is None:
        topology(cfg.launcher)  # bad multi-node settings: one line, before anything starts
    if cfg.trainer.resume not in ("auto", "never"):
        check_resume_file(Path(cfg.trainer.resume))
    if env is None and not submitting and cfg.launcher.nnodes == 1:
        _refuse_a_busy_run_dir(overrides)
    return cfg


def _refuse_a_busy_run_dir(overrides: list[str]) -> None:
    """Before hydra writes its ``.hydra/`` into it: a run directory another job holds (its
    rank 0 locks it, `distrib.trainer.run_lock`) is refused in one line. Only a directory
    named outright (``hydra.run.dir``, ``DISTRIB_RUN_ID``) can be shared; the default one is
    new each launch. (Several nodes each run this command into one directory: there the
    workers' own lock decides.)"""
    from distrib.trainer import run_lock

    named = [o.split("=", 1)[1] for o in overrides if o.lstrip("+").startswith("hydra.run.dir=")]
    if not named and os.environ.get("DISTRIB_RUN_ID"):
        named = [f"outputs/{os.environ['DISTRIB_RUN_ID']}"]
    for run_dir in named[-1:]:
        who = run_lock.holder(Path(run_dir))
        if who is not None:
            from distrib.errors import ConfigError

            raise ConfigError("hydra.run.dir", message=run_lock.refusal(Path(run_dir), who))


def check_resume_file(path: Path) -> None:
    """An explicit ``trainer.resume`` file must verify and open with ``weights_only=True``.

    Checked in the parent so a bad file is one line, not a traceback from every worker; the
    load is memory-mapped, so even a large checkpoint costs little here.
    """
    import torch

    from distrib.checkpoint import CheckpointError
    from distrib.checkpoint.files import one_line, read_manifest, verify
    from distrib.config import ConfigError

    try:
        entry = read_manifest(path.parent).get(path.name)
        if entry is not None:
            verify(path, entry)
        torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except CheckpointError as e:
        raise ConfigError("trainer.resume", message=f"trainer.resume: {e}") from None
    except Exception as e:  # not a torch zip file, or refused by weights_only
        reason = one_line(e)  # never torch's advice to load it with weights_only=False
        raise ConfigError("trainer.resume", message=f"trainer.resume: {path}: {reason}") from None


def _task(cfg: Any) -> Any:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import OmegaConf

    from distrib.config import ConfigError, check_targets, to_config

    try:
        run_cfg = to_config(cfg)
        check_targets(run_cfg)
    except ConfigError as e:
        _fail(e)
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    values = OmegaConf.to_container(cfg, resolve=True)
    # hydra has already copied the command line into .hydra/: cut the secrets out of it
    from distrib.secrets import config_secrets, scrub_files, scrub_output, secret_values

    hydra_files = [run_dir / hydra_cfg.output_subdir / f for f in HYDRA_FILES]
    if hydra_cfg.output_subdir is not None:
        scrub_files(hydra_files, config_secrets(values) | secret_values())
    # Under hydra multirun every job of one sweep shares a wandb group: the sweep directory.
    group = None
    if hydra_cfg.mode == RunMode.MULTIRUN:
        group = Path(hydra_cfg.sweep.dir).as_posix().strip("/").replace("/", "-")
    said = _say_run_dir(run_dir)
    secrets = config_secrets(values) | secret_values()
    scrub_output(secrets)  # what this command prints (a worker's error, say) is redacted too
    overrides = list(hydra_cfg.overrides.task)

    from distrib.cli import resume_hint
    from distrib.env import is_worker

    command = resume_hint.command(overrides, run_dir, secrets, in_place=is_worker())

    def resume() -> str | None:
        if not said or not resume_hint.has_checkpoint(run_dir):
            return None
        return f"distrib: to resume: {command}"

    resume.command = command  # type: ignore[attr-defined]  # what a cancelled SLURM job says
    result = run(values, run_cfg, run_dir, group, resume=resume)  # type: ignore[arg-type]

    submitted = run_cfg.launcher.name == "slurm" and not run_cfg.launcher.wait and not is_worker()
    if said and not submitted:  # a submitted job is not done: describe() said how to follow it
        print(f"distrib: done: {_shown(run_dir)} (checkpoints/, metrics.jsonl, logs/)", flush=True)
    return result


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _say_run_dir(run_dir: Path) -> bool:
    """Print where this run writes, once per job (not once per torchrun or SLURM worker)."""
    from distrib.env import is_worker, read_env

    if is_worker() and read_env().rank != 0:
        return False
    print(f"distrib: run directory {_shown(run_dir)}", flush=True)
    return True


def _say(resume: Any, stream: Any) -> None:
    """The exact resume command, when there is a checkpoint to resume from."""
    line = resume()
    if line:
        print(line, file=stream, flush=True)


def run(
    values: dict, cfg: Any, run_dir: Path, group: str | None = None, resume: Any = lambda: None
) -> dict[str, Any]:
    """Train in place if this process is a worker (or one is enough), else launch workers.

    ``resume()`` is the line with the exact command that resumes this run (or None): said after
    a stop that saved (Ctrl-C, SIGTERM: exit 130/75) and before the error line of a failure.
    """
    from distrib.env import is_slurm_step, is_worker
    from distrib.trainer.loop import fit, worker_entry

    if is_worker() or cfg.launcher.in_place:
        if not is_slurm_step(os.environ):
            return _in_place(fit, cfg, run_dir, group, resume)
        from distrib.cli.slurm_tasks import train_task

        return train_task(values, str(run_dir), group, getattr(resume, "command", None))
    if cfg.launcher.name == "slurm":
        return _submit(values, cfg, run_dir, group, resume)
    from distrib.launch.agent import RendezvousFailed
    from distrib.launch.local import Interrupted, WorkerFailed, launch
    from distrib.trainer.preemption import INTERRUPT_EXIT_CODE, REQUEUE_EXIT_CODE

    try:
        results = launch(
            worker_entry, (values, str(run_dir), group), topology=topology(cfg.launcher)
        )
    except WorkerFailed as e:
        if e.exitcode in (REQUEUE_EXIT_CODE, INTERRUPT_EXIT_CODE):  # they agreed to stop, saved
            _say(resume, sys.stdout)
            sys.exit(e.exitcode)
        if e.traceback.strip():
            print(e.traceback.rstrip(), file=sys.stderr)
        _say(resume, sys.stderr)
        print(f"distrib: error: {e}", file=sys.stderr)
        sys.exit(1)
    except RendezvousFailed as e:
        print(f"distrib: error: {e} (launcher.rdzv_endpoint)", file=sys.stderr)
        sys.exit(1)
    except Interrupted as e:
        # The signal reached the workers too. 75 only when they wrote a checkpoint and exited
        # with 75 ("requeue me"); otherwise 128 + the signal, as a killed process. Ctrl-C
        # after a checkpoint: rank 0 has said so in one line already.
        if e.saved and e.signum == signal.SIGINT:
            _say(resume, sys.stdout)
            sys.exit(INTERRUPT_EXIT_CODE)
        print(f"distrib: {e}", file=sys.stderr)
        if e.saved or e.requeue:
            _say(resume, sys.stderr)
        sys.exit(REQUEUE_EXIT_CODE if e.requeue else 128 + e.signum)
    return results[min(results)]


def _in_place(
    fit: Any, cfg: Any, run_dir: Path, group: str | None, resume: Any = lambda: None
) -> dict[str, Any]:
    """Train in this process; a failure ends like a launched worker's: its traceback, then one
    ``distrib:`` line -- not hydra's "Error executing job" paragraph."""
    import traceback

    from distrib.errors import ConfigError
    from distrib.trainer.preemption import INTERRUPT_EXIT_CODE, REQUEUE_EXIT_CODE

    try:
        return fit(cfg, run_dir, group=group)
    except ConfigError as e:
        _fail(e)
    except SystemExit as e:  # stopped by a signal, after a save
        if e.code in (REQUEUE_EXIT_CODE, INTERRUPT_EXIT_CODE):
            _say(resume, sys.stdout)
        raise
    except Exception as e:
        traceback.print_exc()
        said = " ".join(ln.strip() for ln in str(e).splitlines() if ln.strip())[:400]
        _say(resume, sys.stderr)
        _fail_run(f"{type(e).__name__}: {said}" if said else type(e).__name__)
    raise AssertionError("unreachable")


def _submit(
    values: dict, cfg: Any, run_dir: Path, group: str | None, resume: Any = lambda: None
) -> dict[str, Any]:
    """``launcher=slurm``: submit, say where to look, and with ``launcher.wait`` follow."""
    from distrib.cli.slurm_tasks import train_task
    from distrib.launch.slurm import run_job

    options = slurm_options(cfg.launcher)
    code, result = run_job(
        train_task,
        (values, str(run_dir), group, getattr(resume, "command", None)),
        options,
        run_dir,
        wait=cfg.launcher.wait,
    )
    if code:
        sys.exit(code)
    return result


def _fail_run(error: object) -> None:
    print(f"distrib: error: {error}", file=sys.stderr)
    sys.exit(1)


def slurm_options(launcher: Any) -> Any:
    """The launch side's `SlurmOptions` of ``launcher.*`` (checked: errors name the key)."""
    from distrib.launch.slurm import SlurmOptions

    return SlurmOptions(
        nodes=launcher.nnodes,
        tasks_per_node=launcher.nproc,
        gpus_per_node=launcher.gpus_per_node,
        cpus_per_task=launcher.cpus_per_task,
        mem_gb=launcher.mem_gb,
        partition=launcher.partition,
        time_min=launcher.time_min,
        account=launcher.account,
        qos=launcher.qos,
        signal_delay_s=launcher.signal_delay_s,
        sbatch=dict(launcher.sbatch),
    )


_LAUNCHER_KEYS = {
    "--nproc-per-node": "launcher.nproc",
    "--nnodes": "launcher.nnodes",
    "--node-rank": "launcher.node_rank",
    "--rdzv-endpoint": "launcher.rdzv_endpoint",
    "--rdzv-timeout": "launcher.rdzv_timeout_s",
    "--max-restarts": "launcher.max_restarts",
    "--start-method": "launcher.start_method",
}


def topology(launcher: Any) -> Any:
    """The launch side's `Topology` of ``launcher.*``; a bad value names the config key."""
    from distrib.errors import ConfigError
    from distrib.launch.topology import Topology

    try:
        return Topology(
            nproc_per_node=launcher.nproc,
            nnodes=launcher.nnodes,
            node_rank=launcher.node_rank,
            rdzv_endpoint=launcher.rdzv_endpoint,
            rdzv_id=launcher.rdzv_id or "",
            rdzv_timeout_s=launcher.rdzv_timeout_s,
            local_addr=launcher.local_addr,
            ifname=launcher.ifname,
            max_restarts=launcher.max_restarts,
            signal_grace_s=launcher.signal_grace_s,
            start_method=launcher.start_method,
        )
    except ConfigError as e:  # name the config key, not the command-line option
        raise ConfigError(_LAUNCHER_KEYS.get(e.key, e.key), e.value, e.allowed) from None


def _hydra_main() -> None:
    import hydra

    hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")(_task)()


if __name__ == "__main__":
    main()
