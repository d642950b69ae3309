"""The config schema (dataclasses), its registration with hydra, and building from ``_target_``.

YAML under ``conf/`` only supplies values; the types and the ranges live here. Each field has a
docstring; range checks run in ``__post_init__`` and raise `ConfigError` naming the key, so a bad
value stops the run with one line before any process or port is started (see `preflight`).
This is the only worker-side module that imports hydra.
"""

from __future__ import annotations

import datetime as _dt
import os
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from distrib.errors import ConfigError, check
from distrib.launcher_config import LauncherConfig
from distrib.loggers import LOGGERS
from distrib.wrap import PRECISIONS, DDPConfig


@dataclass(kw_only=True)
class CheckpointConfig:
    """When checkpoints are written and which are kept (``trainer.checkpoint.*``)."""

    every_steps: int = 0
    """Save every N optimizer steps (0: off); mid-epoch saves resume at the exact next sample."""
    every_epoch: bool = True
    """Save at the end of every epoch (and always at the end of training)."""
    keep_last: int = 3
    """Keep the newest N checkpoints (plus the best one)."""
    best_metric: str | None = "eval_acc"
    """Also keep the best checkpoint by this evaluation metric (null: off)."""
    best_mode: str = "max"
    """max or min: which way ``best_metric`` is better."""
    async_save: bool = False
    """Copy the state to CPU memory and write it on a background thread."""

    def __post_init__(self) -> None:
        p = "trainer.checkpoint."
        check(
            self.every_steps >= 0, p + "every_steps", self.every_steps, "an integer >= 0 (0: off)"
        )
        check(self.keep_last >= 1, p + "keep_last", self.keep_last, "an integer >= 1")
        check(self.best_mode in ("max", "min"), p + "best_mode", self.best_mode, "max or min")


@dataclass(kw_only=True)
class TrainerConfig:
    """How to train (``trainer.*``)."""

    epochs: int = 10
    """Passes over the training set."""
    max_steps: int = 0
    """Stop after this many optimizer steps in all (0: no limit) -- for smoke tests."""
    global_batch_size: int = 64
    """Samples per optimizer step over ALL workers; split evenly across ranks and micro-steps."""
    eval_batch_size: int = 256
    """Samples per evaluation batch on each rank."""
    grad_accum: int = 1
    """Micro-steps per optimizer step; only the last one all-reduces gradients."""
    seed: int = 0
    """Seeds model init (equal on every rank), the data order and data workers."""
    precision: str = "fp32"
    """fp32, or bf16 autocast for forward passes."""
    clip_grad_norm: float = 0.0
    """Clip the global gradient norm to this (0: off)."""
    device: str = "auto"
    """auto (cuda:<local_rank> when CUDA is there, else CPU), cpu or cuda."""
    backend: str = "auto"
    """auto (nccl on CUDA, gloo on CPU), gloo or nccl."""
    timeout_s: float = 600.0
    """How long a collective waits for a hung or dead peer before the job fails, naming the
    rank that never arrived. 10 min covers a slow step or a big synchronous save on rank 0;
    use 30 while debugging a hang."""
    num_workers: int = 0
    """DataLoader worker processes per rank (0: in-memory TensorDatasets, the built-in ones,
    are served whole batches by index instead, which is faster than any DataLoader)."""
    data_on_device: bool | None = None
    """Keep an in-memory (TensorDataset) dataset on the GPU and gather batches there; null:
    when it takes at most 1/8 of the GPU's memory (no host-to-device copy per step)."""
    drop_last: bool = True
    """Drop the epoch's tail that does not fill a whole global batch (exact W-independence)."""
    deterministic: bool = False
    """torch.use_deterministic_algorithms(True): bit-exact reruns, sometimes slower."""
    log_every: int = 10
    """Optimizer steps between metric lines."""
    nonfinite: str = "stop"
    """A NaN/Inf loss: stop (exit non-zero naming the step, no checkpoint of those weights)
    or skip (drop every step whose gradients are not finite; costs one read-back a step)."""
    allow_batch_change: bool = False
    """Accept a resume at another global_batch_size (refused by default: the optimizer state
    and the data position were made for the old one)."""
    resume: str = "auto"
    """auto: continue from the newest good checkpoint of the run directory; never; or a path."""
    ddp: DDPConfig = field(default_factory=DDPConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)

    def __post_init__(self) -> None:
        check(
            self.resume in ("auto", "never") or Path(self.resume).is_file(),
            "trainer.resume",
            self.resume,
            "auto, never or the path of an existing checkpoint file",
        )
        check(self.epochs >= 1, "trainer.epochs", self.epochs, "an integer >= 1")
        check(
            self.max_steps >= 0,
            "trainer.max_steps",
            self.max_steps,
            "an integer >= 0 (0: no limit)",
        )
        check(
            self.global_batch_size >= 1,
            "trainer.global_batch_size",
            self.global_batch_size,
            "an integer >= 1",
        )
        check(
            self.eval_batch_size >= 1,
            "trainer.eval_batch_size",
            self.eval_batch_size,
            "an integer >= 1",
        )
        check(self.grad_accum >= 1, "trainer.grad_accum", self.grad_accum, "an integer >= 1")
        check(
            self.precision in PRECISIONS,
            "trainer.precision",
            self.precision,
            " or ".join(PRECISIONS),
        )
        check(
            self.clip_grad_norm >= 0, "trainer.clip_grad_norm", self.clip_grad_norm, "a number >= 0"
        )
        check(
            self.device in ("auto", "cpu", "cuda"),
            "trainer.device",
            self.device,
            "auto, cpu or cuda",
        )
        check(
            self.backend in ("auto", "gloo", "nccl"),
            "trainer.backend",
            self.backend,
            "auto, gloo or nccl",
        )
        check(self.timeout_s > 0, "trainer.timeout_s", self.timeout_s, "a number of seconds > 0")
        check(self.num_workers >= 0, "trainer.num_workers", self.num_workers, "an integer >= 0")
        check(self.log_every >= 1, "trainer.log_every", self.log_every, "an integer >= 1")
        check(
            self.nonfinite in ("stop", "skip"), "trainer.nonfinite", self.nonfinite, "stop or skip"
        )


@dataclass(kw_only=True)
class Config:
    """The whole run. ``model``, ``data.train``, ``data.eval``, ``optim``, ``scheduler`` and
    ``task`` are ``_target_`` nodes, so users point them at their own classes."""

    model: Any = MISSING
    """A module class: ``_target_: my_pkg.MyNet`` plus its keyword arguments."""
    data: Any = MISSING
    """``train`` and ``eval``: each a dataset ``_target_`` with its arguments."""
    optim: Any = MISSING
    """An optimizer ``_target_`` with ``_partial_: true``; called with the model's parameters."""
    scheduler: Any = None
    """Optional LR scheduler ``_target_`` with ``_partial_: true``; called with the optimizer."""
    task: Any = field(default_factory=lambda: {"_target_": "distrib.tasks.Classification"})
    """What is optimized and reported: a `distrib.tasks.Task` ``_target_`` (classification,
    regression, lm, model_loss, or your own)."""
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    launcher: LauncherConfig = field(default_factory=LauncherConfig)
    logger: list[str] = field(default_factory=lambda: ["console", "jsonl"])
    """Where metrics go, any of console, jsonl, wandb (rank 0 only)."""

    def __post_init__(self) -> None:
        for name in self.logger:
            check(name in LOGGERS, "logger", name, "a list of " + ", ".join(LOGGERS))


def run_id(environ: typing.Mapping[str, str] | None = None, *, rdzv_id: str | None = None) -> str:
    """The run directory's name, equal on every worker of one job without them talking.

    ``DISTRIB_RUN_ID`` wins (set it to rerun a job into its directory and resume, whatever
    launched it); then the launcher's ``rdzv_id`` (multi-node jobs: equal on every node);
    torchrun workers share ``TORCHELASTIC_RUN_ID`` (``--rdzv-id``; ``--standalone`` makes a
    random one, so pass ``DISTRIB_RUN_ID`` or ``hydra.run.dir`` to resume), SLURM tasks their
    job id (stable across requeues); a lone process takes the time.
    """
    environ = os.environ if environ is None else environ
    if environ.get("DISTRIB_RUN_ID"):
        return environ["DISTRIB_RUN_ID"]
    if rdzv_id and rdzv_id not in ("None", "null"):
        return rdzv_id
    rdzv = environ.get("TORCHELASTIC_RUN_ID", "none")
    if rdzv.startswith("slurm-"):  # a SLURM task after `distrib.slurm.join`: the job's name
        return rdzv
    if "RANK" in environ and rdzv not in ("", "none"):
        return f"torchrun-{rdzv}"
    if "SLURM_JOB_ID" in environ and "SLURM_PROCID" in environ:
        array = environ.get("SLURM_ARRAY_JOB_ID")
        if array:
            return f"slurm-{array}_{environ.get('SLURM_ARRAY_TASK_ID', '0')}"
        return f"slurm-{environ['SLURM_JOB_ID']}"
    return _dt.datetime.now().strftime("%Y-%m-%d/%H-%M-%S")


def register() -> None:
    """Register the schema and resolvers with hydra; the CLI calls this before composing."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="distrib_schema", node=Config)
    OmegaConf.register_new_resolver(
        "distrib_run_id", lambda rdzv_id=None: run_id(rdzv_id=rdzv_id), replace=True
    )


def to_config(cfg: DictConfig | dict) -> Config:
    """Composed values -> a validated `Config`; any problem becomes one `ConfigError`."""
    try:
        if not isinstance(cfg, DictConfig) or OmegaConf.get_type(cfg) is not Config:
            cfg = OmegaConf.merge(OmegaConf.structured(Config), cfg)
        obj = OmegaConf.to_object(cfg)
    except ConfigError:
        raise
    except OmegaConfBaseException as e:
        if isinstance(e.__cause__, ConfigError):
            raise e.__cause__ from None
        raise describe(e) from None
    assert isinstance(obj, Config)
    return obj


def describe(e: BaseException) -> ConfigError:
    """Turn a hydra/OmegaConf error into one line that names the key and what is allowed."""
    cause: BaseException = e
    while cause.__cause__ is not None and not isinstance(cause, OmegaConfBaseException):
        cause = cause.__cause__
    if isinstance(cause, ConfigError):
        return cause
    if isinstance(cause, OmegaConfBaseException):
        key = getattr(cause, "full_key", None) or "config"
        first = str(getattr(cause, "msg", cause)).splitlines()[0]
        if isinstance(cause, (ConfigKeyError, ConfigAttributeError)):
            obj = getattr(cause, "object_type", None)
            known = (
                ", ".join(f.name for f in fields(obj))
                if hasattr(obj, "__dataclass_fields__")
                else ""
            )
            parent = getattr(cause, "parent_node", None)
            if not known and isinstance(parent, DictConfig) and "_target_" in parent:
                from distrib.targets import unknown_argument

                node = OmegaConf.to_container(parent, resolve=False)
                said = unknown_argument(key.rpartition(".")[0], node, key.rpartition(".")[2])
                if said:
                    return ConfigError(key, message=said)
            hint = f"; known keys: {known}" if known else f"; to add a new key use +{key}=..."
            return ConfigError(key, message=f"{key}: unknown key{hint}")
        return ConfigError(key, message=f"{key}: {first}")
    text = str(e).split("\nConfig search path", 1)[0]  # hydra appends its whole search path
    return ConfigError("config", message=" ".join(text.replace("\t", " ").split()))


def build(node: Any, *args: Any) -> Any:
    """``hydra.utils.instantiate`` on a plain dict or DictConfig node, extra positional args."""
    from hydra.utils import instantiate

    return instantiate(node, *args, _convert_="all")


def check_targets(cfg: Config) -> None:
    """See `distrib.targets.check_targets` (kept here: the schema's callers import it)."""
    from distrib.targets import check_targets as check

    check(cfg)
