"""The config schema: the run's dataclasses (``trainer.*``, ``trainer.checkpoint.*``, the top).

YAML under ``conf/`` only supplies values; the types and the ranges live here. Each field has a
docstring; range checks run in ``__post_init__`` and raise `ConfigError` naming the key, so a bad
value stops the run with one line before any process or port is started (see
`distrib.cli.train.preflight`). Each component's own knobs sit beside it (``trainer.ddp.*`` in
`distrib.parallel.ddp`, ``launcher.*`` in `distrib.config.launcher`) and are composed here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import MISSING

from distrib.config.launcher import LauncherConfig
from distrib.errors import check
from distrib.loggers import LOGGERS
from distrib.parallel.compile import CompileConfig
from distrib.parallel.ddp import DDPConfig
from distrib.parallel.fsdp import FSDPConfig, check_available
from distrib.parallel.precision import PRECISIONS
from distrib.parallel.strategy import STRATEGIES


@dataclass(kw_only=True)
class CheckpointConfig:
    """When checkpoints are written and which are kept (``trainer.checkpoint.*``)."""

    every_steps: int | str = 0
    """Save every N optimizer steps (0: off); mid-epoch saves resume at the exact next sample.
    ``auto``: every ``sqrt(2 x save cost x MTBF)`` seconds (Young/Daly), from this run's
    measured blocking save cost and ``mtbf_h``, converted to steps by the measured step time;
    the first save, at the first log step, measures the cost (`distrib.checkpoint.interval`)."""
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
    mtbf_h: float | None = None
    """The job's mean time between failures in hours, for ``every_steps=auto``; null: one GPU's
    (~50,700 h, from Llama 3's 419 interruptions in 54 days on 16,384 GPUs) / the world size."""
    auto_min_s: float = 60.0
    """``every_steps=auto`` never saves more often than every this many seconds."""
    auto_max_s: float = 3600.0
    """``every_steps=auto`` saves at least every this many seconds."""

    def __post_init__(self) -> None:
        p = "trainer.checkpoint."
        steps = self.every_steps
        check(
            steps == "auto" or (isinstance(steps, int) and steps >= 0),
            p + "every_steps",
            steps,
            "an integer >= 0 (0: off) or auto",
        )
        mtbf = self.mtbf_h
        check(mtbf is None or mtbf > 0, p + "mtbf_h", mtbf, "a number of hours > 0 (null: default)")
        check(self.auto_min_s > 0, p + "auto_min_s", self.auto_min_s, "a number of seconds > 0")
        check(
            self.auto_max_s >= self.auto_min_s,
            p + "auto_max_s",
            self.auto_max_s,
            f"a number of seconds >= auto_min_s ({self.auto_min_s:g})",
        )
        check(self.keep_last >= 1, p + "keep_last", self.keep_last, "an integer >= 1")
        check(self.best_mode in ("max", "min"), p + "best_mode", self.best_mode, "max or min")


@dataclass(kw_only=True)
class ProfileConfig:
    """A torch.profiler window (``trainer.profile.*``; `distrib.trainer.profile`); off by
    default. Its schedule counts optimizer steps: skip ``wait``, warm up ``warmup`` (recorded
    and thrown away: the first steps after the profiler starts are unrepresentative), then
    record ``active`` steps into ``<run dir>/profile/``."""

    wait: int = 0
    """Optimizer steps skipped before the window (past a compile or a cold cache)."""
    warmup: int = 1
    """Steps profiled and discarded before the recorded ones."""
    active: int = 0
    """Steps recorded into the trace (0: off, no profiler is created)."""
    ranks: list[int] = field(default_factory=lambda: [0])
    """Which ranks record, one trace file each (empty: every rank)."""

    def __post_init__(self) -> None:
        p = "trainer.profile."
        check(self.wait >= 0, p + "wait", self.wait, "an integer >= 0")
        check(self.warmup >= 0, p + "warmup", self.warmup, "an integer >= 0")
        check(self.active >= 0, p + "active", self.active, "an integer >= 0 (0: off)")
        bad = [r for r in self.ranks if r < 0]
        check(not bad, p + "ranks", list(self.ranks), "a list of ranks >= 0 (empty: all)")


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
    """fp32, bf16 autocast for forward passes, or fp16 autocast with a gradient scaler (its
    state checkpointed; an overflowed step skipped and counted in ``skipped_steps``)."""
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
    """Drop the epoch's tail that does not fill a whole global batch (exact W-independence);
    false: map-style data pads to the world size, streamed data wraps to fill the last batch."""
    shuffle_buffer: int = 4096
    """Streamed (IterableDataset) data: after the shard order is shuffled, samples move within
    windows of this many consecutive ones; about this many samples are held over all workers."""
    deterministic: bool = False
    """torch.use_deterministic_algorithms(True): bit-exact reruns, sometimes slower."""
    log_every: int = 10
    """Optimizer steps between metric lines."""
    straggler_factor: float = 1.5
    """Warn when one rank's work before the gradient sync stays more than this many times the
    median rank's (and costs the others >= 5% of a step), naming the rank and its host
    (`distrib.trainer.stragglers`); 0: off."""
    straggler_every: int = 10
    """While it stays slow, warn again every this many log steps."""
    nonfinite: str = "stop"
    """A NaN/Inf loss: stop (exit non-zero naming the step, no checkpoint of those weights)
    or skip (drop every step whose gradients are not finite; costs one read-back a step)."""
    allow_batch_change: bool = False
    """Accept a resume at another global_batch_size (refused by default: the optimizer state
    and the data position were made for the old one)."""
    resume: str = "auto"
    """auto: continue from the newest good checkpoint of the run directory; never; or a path."""
    strategy: str = "ddp"
    """ddp (a whole model per worker) or fsdp (parameters, gradients and optimizer state
    sharded over the workers: for models larger than one GPU; needs torch >= 2.9)."""
    blocks: list[str] = field(default_factory=list)
    """Class names of the model's repeated blocks (``[GPT2Block]``): what fsdp shards one by one
    and activation checkpointing recomputes; empty: the modules of the model's largest
    ModuleList, else the children of its largest Sequential."""
    activation_checkpointing: bool = False
    """Recompute each block's activations in the backward instead of keeping them (both
    strategies): about one more forward pass for much less activation memory."""
    peak_tflops: float = 0.0
    """The device's dense peak TFLOP/s per rank at ``precision``, for the ``mfu`` of each log
    row; 0: from distrib's table by GPU name (A100, H100, H200, L40S, L4; none on a CPU)."""
    compile: CompileConfig = field(default_factory=CompileConfig)
    profile: ProfileConfig = field(default_factory=ProfileConfig)
    ddp: DDPConfig = field(default_factory=DDPConfig)
    fsdp: FSDPConfig = field(default_factory=FSDPConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)

    def __post_init__(self) -> None:
        check(
            self.resume in ("auto", "never")
            or Path(self.resume).is_file()
            or (Path(self.resume).suffix == ".dcp" and Path(self.resume).is_dir()),
            "trainer.resume",
            self.resume,
            "auto, never or the path of an existing checkpoint (a step-*.pt file or .dcp dir)",
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
            ", ".join(PRECISIONS),
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
        check(self.peak_tflops >= 0, "trainer.peak_tflops", self.peak_tflops, "a number >= 0")
        check(self.timeout_s > 0, "trainer.timeout_s", self.timeout_s, "a number of seconds > 0")
        check(self.num_workers >= 0, "trainer.num_workers", self.num_workers, "an integer >= 0")
        buffer = self.shuffle_buffer
        check(buffer >= 1, "trainer.shuffle_buffer", buffer, "an integer >= 1")
        check(self.log_every >= 1, "trainer.log_every", self.log_every, "an integer >= 1")
        factor = self.straggler_factor
        check(factor == 0 or factor > 1, "trainer.straggler_factor", factor, "0 (off) or > 1")
        every = self.straggler_every
        check(every >= 1, "trainer.straggler_every", every, "an integer >= 1")
        check(
            self.nonfinite in ("stop", "skip"), "trainer.nonfinite", self.nonfinite, "stop or skip"
        )
        check(self.strategy in STRATEGIES, "trainer.strategy", self.strategy, "ddp or fsdp")
        if self.strategy == "fsdp":
            check_available()
            check(
                not self.ddp.sync_batchnorm,
                "trainer.ddp.sync_batchnorm",
                True,
                "false under trainer.strategy=fsdp (FSDP2 has no SyncBatchNorm)",
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
