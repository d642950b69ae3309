"""The training loop behind ``python -m distrib.train``: build, resume, train, evaluate, save.

Order of a run (each a function below): join the job (`session`) with preemption signals
caught, seed equally on every rank, build the model and wrap it, build the optimizer over the
*wrapped* parameters, shard the data, resume from a checkpoint, then per epoch: train with
gradient accumulation, evaluate exactly, log, save. SIGTERM/SIGUSR1/SIGUSR2 finish the current step,
save, and exit with `REQUEUE_EXIT_CODE`. Users with their own script call the same pieces
through the public API instead.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import signal
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader

from distrib.checkpoint import Checkpointer
from distrib.checkpoint.files import step_of
from distrib.checkpoint.interval import AutoInterval
from distrib.config import Config, build, to_config
from distrib.data import StreamLoader, eval_loader, loader
from distrib.distributed.process_group import FR_DIR, Context, session
from distrib.errors import ConfigError
from distrib.loggers import MetricLogger, close_all, log_all, make_loggers
from distrib.loggers.rank_logs import setup_logging
from distrib.parallel import compile as compiling
from distrib.parallel import precision
from distrib.parallel import strategy as par
from distrib.rng import seed_all
from distrib.tasks import Task, batch_size, to_device
from distrib.trainer import flops as fl
from distrib.trainer import preemption, run_lock
from distrib.trainer import profile as profiling
from distrib.trainer.evaluation import describe, evaluate
from distrib.trainer.guards import (
    NonFiniteLoss,
    build_named,
    check_steps,
    same_length_everywhere,
)
from distrib.trainer.metrics import Metrics, StepTimer, record_step, report
from distrib.trainer.resume_policy import (
    apply_hyperparameters,
    check_compatible,
    data_changes,
    hyperparameter_changes,
)
from distrib.trainer.state import TrainState, capture, restore, sharded_state
from distrib.trainer.stragglers import Watch

log = logging.getLogger("distrib.trainer.loop")

_save_clock = time.perf_counter
"""What a save's blocking cost is measured with (tests inject a fake one)."""
_SAVE_COST = "checkpoint_blocked_s"

STOP_CHECK_EVERY = 10
"""A preemption signal stops training within min(log_every, 10) optimizer steps: the vote
rides on each log step's all_reduce, with a tiny one every 10 steps in between. Keep that many
steps plus a save under the cluster's grace time (SLURM's GraceTime, the --signal lead)."""


def worker_entry(cfg: dict, run_dir: str, group: str | None = None) -> dict[str, Any]:
    """What each launched worker runs: a picklable, importable entry point."""
    return fit(to_config(cfg), Path(run_dir), group=group)


@dataclasses.dataclass
class _Run:
    """The live objects of one run, passed between the steps below."""

    cfg: Config
    ctx: Context
    model: nn.Module
    task: Task
    optimizer: torch.optim.Optimizer
    scheduler: Any
    ckpt: Checkpointer
    loggers: list[MetricLogger]
    state: TrainState
    saved_step: int = -1
    train_dl: Any = None
    """The training loader: a stream's position goes into each checkpoint (`StreamLoader`)."""
    flops_per_sample: float | None = None
    """A sample's training FLOPs, counted on the first micro-batch (`distrib.trainer.flops`)."""
    peak_tflops: float | None = None
    """The device's dense peak at the run's precision (``trainer.peak_tflops`` or the table)."""
    first_step: int = 0
    """The step this job started at (after a resume): its next step compiles."""
    scaler: Any = None
    """fp16's gradient scaler (`distrib.parallel.precision.grad_scaler`); None otherwise."""
    save_cost_s: float = -1.0
    """How long this rank's last `save` blocked training (-1: none yet)."""
    auto: AutoInterval | None = None
    """``every_steps=auto``: the interval, re-evaluated at each log step."""
    stragglers: Watch | None = None
    hosts: list[str] | None = None
    """Every rank's host name, gathered at the first straggler warning."""
    profiler: Any = None
    """This rank's ``trainer.profile`` window (`distrib.trainer.profile`); None: off."""

    def save(self, metrics: dict[str, float] | None = None) -> None:
        """Checkpoint now (every rank calls: RNG states are gathered; rank 0 writes).

        Never weights that went NaN/Inf: keep_last would rotate every good checkpoint out.
        """
        if not par.params_finite(self.model):
            raise NonFiniteLoss(
                f"the weights are not finite at step {self.state.step}; stopped without "
                "checkpointing them (the newest checkpoint is still a good one)"
            )
        data = capture(
            model=self.model,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            state=self.state,
            ctx=self.ctx,
            global_batch=self.cfg.trainer.global_batch_size,
            config=dataclasses.asdict(self.cfg),
            data=_stream_state(self.train_dl, self.state),
            scaler=self.scaler,
        )
        start = _save_clock()
        shards = sharded_state(self.model, self.optimizer) if par.is_sharded(self.model) else None
        self.ckpt.save(
            data,
            step=self.state.step,
            epoch=self.state.epoch_number,
            metrics=metrics,
            sharded=shards,
        )
        self.save_cost_s = _save_clock() - start  # async: the staging copy only
        self.saved_step = self.state.step


def fit(
    cfg: Config, run_dir: Path | None, *, return_weights: bool = False, group: str | None = None
) -> dict[str, Any]:
    """Train ``cfg`` in this process as one worker of the job its environment describes.

    ``run_dir`` holds checkpoints, metrics.jsonl, wandb files and per-rank logs (None: keep
    nothing, for tests). Returns the final evaluation and the logged history (equal on every
    rank); ``return_weights`` adds the final CPU state dict.
    """
    t = cfg.trainer
    if run_dir is not None:  # a timed-out collective's flight record goes to the run directory
        os.environ.setdefault("TORCH_FR_DUMP_TEMP_FILE", str(run_dir.resolve() / FR_DIR / "rank_"))
    with (
        session(device=t.device, backend=t.backend, timeout_s=t.timeout_s) as ctx,
        preemption.install((*preemption.DEFAULT_SIGNALS, signal.SIGINT)) as flag,
    ):
        _lock_run_dir(run_dir, ctx)  # before this job writes anything there
        setup_logging(run_dir, ctx.rank)
        if t.compile.enable:  # before anything compiles: a restarted job finds its kernels
            cache = compiling.use_cache_in(run_dir)
            if ctx.is_main:
                log.info("torch.compile (mode %s): inductor cache in %s", t.compile.mode, cache)
        if t.deterministic:
            torch.use_deterministic_algorithms(True)
        seed_all(t.seed)  # same seed everywhere: equal replicas before DDP even broadcasts
        precision.check_supported(ctx.device, t.precision)
        model = par.wrap(
            build_named("model", cfg.model),
            ctx,
            t.ddp,
            strategy=t.strategy,
            fsdp=t.fsdp,
            blocks=t.blocks,
            precision=t.precision,
            activation_checkpointing=t.activation_checkpointing,
            compile=t.compile,
        )
        optimizer = build(cfg.optim)(model.parameters())
        scheduler = build(cfg.scheduler)(optimizer) if cfg.scheduler is not None else None
        train_ds = build_named("data.train", cfg.data["train"])
        train_dl = loader(
            train_ds,
            batch_size=t.global_batch_size,
            ctx=ctx,
            seed=t.seed,
            drop_last=t.drop_last,
            accum=t.grad_accum,
            num_workers=t.num_workers,
            on_device=t.data_on_device,
            shuffle_buffer=t.shuffle_buffer,
        )
        same_length_everywhere(train_dl.sampler.dataset, ctx)  # a stream: its counted length
        eval_ds = build_named("data.eval", cfg.data["eval"])
        if hasattr(eval_ds, "__len__") and len(eval_ds) == 0:
            raise ConfigError(
                "data.eval",
                message=f"data.eval: {cfg.data['eval'].get('_target_')} has 0 samples: "
                "evaluation would have nothing to report (give it an evaluation split)",
            )
        eval_dl = eval_loader(
            eval_ds,
            batch_size=t.eval_batch_size,
            ctx=ctx,
            num_workers=t.num_workers,
            on_device=t.data_on_device,
        )
        c = t.checkpoint
        ckpt = Checkpointer(
            (run_dir or Path(".")) / "checkpoints",
            keep_last=c.keep_last,
            best_metric=c.best_metric,
            best_mode=c.best_mode,
            async_save=c.async_save,
            enabled=ctx.is_main,
            keep=run_dir is not None,
        )
        check_steps(train_dl, t.global_batch_size, ctx.world_size)
        task = build_named("task", cfg.task)
        names = getattr(task, "metric_names", None)  # a task may say what it reports
        if names is not None:  # then a best_metric it lacks stops the run now, not an epoch in
            _check_best_metric(c.best_metric, {f"eval_{n}": 0 for n in names}, cfg.task)
        run = _Run(cfg, ctx, model, task, optimizer, scheduler, ckpt, [], TrainState())
        run.train_dl = train_dl
        run.scaler = precision.grad_scaler(ctx.device, t.precision, sharded=par.is_sharded(model))
        run.peak_tflops = t.peak_tflops or fl.peak_tflops(fl.device_name(ctx.device), t.precision)
        run.stragglers = Watch(factor=t.straggler_factor, every=t.straggler_every)
        if c.every_steps == "auto":
            run.auto = AutoInterval(
                world_size=ctx.world_size,
                mtbf_h=c.mtbf_h,
                min_s=c.auto_min_s,
                max_s=c.auto_max_s,
                announce=ctx.is_main,
            )
        try:
            _resume(run, t.resume if run_dir is not None else "never")
            steps_per_epoch = -(-len(train_dl) // t.grad_accum)
            total = steps_per_epoch * t.epochs
            total = min(total, t.max_steps) if t.max_steps else total
            if run_dir is not None:
                run.loggers = make_loggers(
                    cfg.logger,
                    run_dir=run_dir,
                    config=dataclasses.asdict(cfg),
                    is_main=ctx.is_main,
                    total_steps=total,
                    group=group,
                    start_step=run.state.step,
                )
            if ctx.is_main:
                log.info(
                    "training on %d worker(s) (%s, %s), global batch %d = %d x %d x %d micro-steps",
                    ctx.world_size,
                    ctx.device,
                    ctx.backend,
                    t.global_batch_size,
                    ctx.world_size,
                    t.global_batch_size // (ctx.world_size * t.grad_accum),
                    t.grad_accum,
                )
            run.profiler = profiling.start(t.profile, run_dir, ctx.rank)
            result = _train(run, train_dl, eval_dl, flag)
        finally:
            profiling.stop(run.profiler)
            ckpt.close()
            close_all(run.loggers)
            if run_dir is not None:
                run_lock.release(run_dir)  # the job is over for this rank
        log.info("final evaluation: %s", describe(result))
        out = {
            "rank": ctx.rank,
            "world_size": ctx.world_size,
            "history": run.state.history,
            "step": run.state.step,
            **result,
        }
        if return_weights:
            out["state_dict"] = par.full_state_dict(model)
        return out


def _lock_run_dir(run_dir: Path | None, ctx: Context) -> None:
    """Rank 0 holds the run directory's lock for the job (`distrib.trainer.run_lock`); every
    rank learns whether it got it, so a refused job ends on every rank, in one line."""
    if run_dir is None:
        return
    refused = ""
    if ctx.is_main:
        try:
            run_lock.acquire(run_dir)
        except ConfigError as e:
            refused = str(e)
    if ctx.is_distributed:
        box = [refused]
        dist.broadcast_object_list(box, src=0)
        refused = box[0]
    if refused:
        raise ConfigError("hydra.run.dir", message=refused)


def _resume(run: _Run, resume: str) -> None:
    """Load the checkpoint ``resume`` names (auto: newest good one; never: none)."""
    if resume == "never":
        return
    path, refused = "", ""
    if run.ctx.is_main:
        if resume == "auto":
            found = run.ckpt.latest_good()
            path = str(found[1]) if found is not None else ""
            left = sorted(
                p.name for p in run.ckpt.directory.glob("step-*") if step_of(p.name) is not None
            )
            if found is None and left:  # not a fresh start over files that could not be read
                refused = (
                    f"trainer.resume=auto: no checkpoint of {run.ckpt.directory} verifies "
                    f"({len(left)} there, newest {left[-1]}: see the lines above); they stay "
                    "as they are -- trainer.resume=never starts over beside them, "
                    "trainer.resume=<path> picks one"
                )
        else:
            path = resume
    if run.ctx.is_distributed:  # rank 0 chose; every rank loads that same file
        box = [path, refused]
        dist.broadcast_object_list(box, src=0)
        path, refused = box
    if refused:
        raise ConfigError("trainer.resume", message=refused)
    if not path:
        return
    data = run.ckpt.load(Path(path))
    current = dataclasses.asdict(run.cfg)
    allow_batch = run.cfg.trainer.allow_batch_change
    check_compatible(data.get("config"), current, Path(path), allow_batch=allow_batch)
    run.state = restore(
        data,
        Path(path),
        model=run.model,
        optimizer=run.optimizer,
        scheduler=run.scheduler,
        ctx=run.ctx,
        seed=run.cfg.trainer.seed,
        scaler=run.scaler,
    )
    if isinstance(run.train_dl, StreamLoader):  # refused if the stream's samples changed
        said = run.train_dl.check_resume(data.get("data"), Path(path))
        if said and run.ctx.is_main:
            log.info("%s", said)
    for line in data_changes(data.get("config"), current):
        log.warning(line)
    changes = hyperparameter_changes(data.get("config"), current)
    apply_hyperparameters(run.optimizer, run.scheduler, changes)
    run.saved_step = run.first_step = run.state.step
    log.info(
        "resumed from %s: epoch %d, step %d, %d samples into the epoch (written by %d worker(s))",
        path,
        run.state.epoch_number,
        run.state.step,
        run.state.consumed,
        data["world_size"],
    )


def _train(
    run: _Run, train_dl: DataLoader, eval_dl: DataLoader, flag: preemption.PreemptionFlag
) -> dict[str, Any]:
    t = run.cfg.trainer
    result: dict[str, Any] | None = None
    while run.state.epoch < t.epochs and not _done(run.state, t.max_steps):
        preempted = train_epoch(run, train_dl, flag)
        run.optimizer.zero_grad(set_to_none=True)  # their memory to evaluation and saving
        if preempted:
            run.save()
            run.ckpt.close()
            if flag.interrupted:  # Ctrl-C: one line (the CLI adds the command that resumes)
                if run.ctx.is_main:
                    log.warning(
                        "distrib: interrupted: checkpoint at step %d written in %s "
                        "(Ctrl-C twice stops without saving)",
                        run.state.step,
                        run.ckpt.directory,
                    )
                raise SystemExit(preemption.INTERRUPT_EXIT_CODE)
            if run.ctx.is_main:
                log.warning(
                    "preempted: checkpoint at step %d written; exiting with code %d (requeue)",
                    run.state.step,
                    preemption.REQUEUE_EXIT_CODE,
                )
            raise SystemExit(preemption.REQUEUE_EXIT_CODE)
        if run.state.consumed < train_dl.sampler.epoch_samples():  # type: ignore[attr-defined]
            break  # max_steps ended training mid-epoch
        result = _evaluate(run, eval_dl)
        _check_best_metric(t.checkpoint.best_metric, result, run.cfg.task)
        row = {"epoch": run.state.epoch_number, "step": run.state.step, **result}
        run.state.history.append(row)
        log_all(run.loggers, {k: float(v) for k, v in row.items()}, run.state.step)
        log.info(  # epochs count from 1 here, in metric rows and in checkpoints
            "epoch %d/%d done  step %d  %s",
            run.state.epoch_number,
            t.epochs,
            run.state.step,
            describe(result),
        )
        run.state.epoch, run.state.consumed = run.state.epoch + 1, 0
        if t.checkpoint.every_epoch:
            run.save({k: float(v) for k, v in result.items()})
    if result is None:  # max_steps ended training mid-epoch: its final evaluation is logged too
        result = _evaluate(run, eval_dl)
        _check_best_metric(t.checkpoint.best_metric, result, run.cfg.task)
        row = {"epoch": run.state.epoch_number, "step": run.state.step, **result}
        run.state.history.append(row)
        log_all(run.loggers, {k: float(v) for k, v in row.items()}, run.state.step)
    if run.saved_step != run.state.step:
        run.save({k: float(v) for k, v in result.items()})
    return result


def _evaluate(run: _Run, eval_dl: DataLoader) -> dict[str, Any]:
    """Evaluate the user's module, eagerly when compiled (no second compile for eval mode)."""
    with compiling.eager() if run.cfg.trainer.compile.enable else contextlib.nullcontext():
        return evaluate(par.unwrap(run.model), eval_dl, run.ctx, run.task)


def _stream_state(dl: Any, state: TrainState) -> dict[str, Any] | None:
    """A stream's position and what it is counted in (None for map-style data)."""
    return dl.state_dict(state.epoch, state.consumed) if isinstance(dl, StreamLoader) else None


def _check_best_metric(name: str | None, result: dict[str, Any], task: dict) -> None:
    """A ``best_metric`` the task does not report would keep no best checkpoint, silently."""
    if name is not None and name not in result:
        raise ConfigError(
            "trainer.checkpoint.best_metric",
            message=f"trainer.checkpoint.best_metric={name}: {task.get('_target_')} reports "
            f"{', '.join(result)} (or null: keep no best checkpoint)",
        )


def _update_auto(run: _Run, row: dict[str, float]) -> None:
    """``every_steps=auto``: re-evaluate from the row (equal on every rank, so every rank
    saves at the same steps): the slowest rank's last save cost, the mean step time."""
    if run.auto is None:
        return
    cost = row.pop(f"{_SAVE_COST}_max")
    row.pop(f"{_SAVE_COST}_min"), row.pop(f"{_SAVE_COST}_mean")
    if cost >= 0:
        run.auto.update(cost_s=cost, step_s=row.get("step_time_mean", math.nan))


def _warn_straggler(run: _Run, row: dict[str, float]) -> None:
    """Name a rank that stays slow (`distrib.trainer.stragglers`); the row is equal on every
    rank, so every rank joins the one host-name gather at the first warning."""
    rank = run.stragglers.update(row) if run.stragglers is not None else None
    if rank is None:
        return
    if run.hosts is None:
        import socket

        run.hosts = [socket.gethostname()]
        if run.ctx.is_distributed:
            run.hosts = [""] * run.ctx.world_size
            dist.all_gather_object(run.hosts, socket.gethostname())
    if run.ctx.is_main:
        t = run.cfg.trainer
        log.warning(
            "straggler: rank %d (host %s) works %.1fx as long as the median rank before each "
            "gradient sync (the others wait ~%.0f%% of a step for it) at step %d; again every "
            "%d log steps while it lasts (trainer.straggler_factor=%g)",
            rank,
            run.hosts[rank],
            row["slowest_vs_median"],
            100 * row["slowest_excess_frac"],
            run.state.step,
            t.straggler_every,
            t.straggler_factor,
        )


def _save_due(run: _Run, log_step: bool) -> bool:
    """A mid-epoch save at this step: every N steps, or when the auto interval has passed
    since the last save (the first one at the first log step, to measure its cost)."""
    every, step = run.cfg.trainer.checkpoint.every_steps, run.state.step
    if run.auto is None:
        return bool(every) and step % int(every) == 0
    if run.auto.steps is None:
        return log_step and run.save_cost_s < 0
    return step - run.saved_step >= run.auto.steps


def _done(state: TrainState, max_steps: int) -> bool:
    return max_steps > 0 and state.step >= max_steps


def _count_flops(run: _Run, batch: Any) -> float:
    """A sample's forward + backward FLOPs on the user's module (eager, side effects undone)."""
    model = par.unwrap(run.model)

    def forward() -> torch.Tensor:
        with par.autocast(run.model, run.ctx.device, run.cfg.trainer.precision):
            return run.task(model=model, batch=batch).loss

    per_sample = fl.count_flops_per_sample(model, forward, batch_size(batch))
    if run.ctx.is_main:
        peak = f"{run.peak_tflops:g} TFLOP/s" if run.peak_tflops else "unknown (no mfu)"
        log.info("%.4g FLOPs per training sample; peak per rank %s", per_sample, peak)
    return per_sample


def train_epoch(run: _Run, dl: DataLoader, flag: preemption.PreemptionFlag) -> bool:
    """Train from the state's position to the end of the epoch; True when preempted."""
    t, ctx, state = run.cfg.trainer, run.ctx, run.state
    dl.sampler.set_position(state.epoch, state.consumed)  # type: ignore[attr-defined]
    if t.num_workers > 0:  # never fork loader workers while the checkpoint writer holds locks
        run.ckpt.wait()
    run.model.train()
    n_micro = len(dl)
    metrics, timer = Metrics(), StepTimer(ctx.device)
    step_loss: torch.Tensor | float = 0.0  # stays on the device: read back at log steps only
    step_samples = 0
    logged_at = state.step
    for i, batch in enumerate(timer.iterate(dl)):
        first = i - i % t.grad_accum
        in_step = min(t.grad_accum, n_micro - first)  # the last step may be short
        last_micro = i - first == in_step - 1
        batch = to_device(batch, ctx.device)
        if run.flops_per_sample is None:  # once a run, on its first batch; not timed
            started = time.perf_counter()
            run.flops_per_sample = _count_flops(run, batch)
            timer.exclude(time.perf_counter() - started)
        with par.accumulate(run.model, sync=last_micro):
            with par.autocast(run.model, ctx.device, t.precision):
                loss = run.task(model=run.model, batch=batch).loss
                if in_step > 1:  # a mean over the step's micro-batches; no op for one
                    loss = loss / in_step
            if i == first:
                # The last step's gradients are dropped here, not right after its update: on the
                # CPU, memory freed at a step's end goes back to the OS and is faulted in again
                # by the next backward (a 42 MB MLP stepped 11% slower); here it is reused.
                run.optimizer.zero_grad(set_to_none=True)
            if last_micro:
                timer.work_done()  # this backward syncs the gradients: peers wait from here
            (loss if run.scaler is None else run.scaler.scale(loss)).backward()
        step_loss = loss.detach() if i == first else step_loss + loss.detach()
        step_samples += batch_size(batch)
        if not last_micro:
            continue
        overflow = None
        if run.scaler is not None:  # fp16: the true gradients, and whether they overflowed
            run.scaler.unscale_(run.optimizer)
            overflow = precision.found_inf(run.scaler, run.optimizer)
        par.clip_grad(run.model, t.clip_grad_norm)
        # skip: the all-reduced gradients are equal on every rank, so every rank skips alike
        # (under fp16 the scaler skips an overflowed step itself: a skip, not a NaN run)
        skipped = run.scaler is None and t.nonfinite == "skip" and not par.grads_finite(run.model)
        if skipped:
            log.warning("non-finite gradients at step %d: step skipped", state.step + 1)
            step_loss = torch.zeros((), device=ctx.device)  # and not averaged into the loss
        else:
            if run.scaler is not None:
                run.scaler.step(run.optimizer)  # skipped on overflow (torch reads the flag)
                run.scaler.update()  # then the scale halves; it doubles after 2000 clean steps
            else:
                run.optimizer.step()
            if run.scheduler is not None:
                run.scheduler.step()
        state.step += 1
        if run.profiler is not None:
            run.profiler.step()
        state.consumed += step_samples * ctx.world_size
        end = i == n_micro - 1 or _done(state, t.max_steps)
        log_step = state.step % t.log_every == 0 or end
        step_s, wait_s = timer.step_done(sync=log_step)
        if t.compile.enable and state.step == run.first_step + 1 and ctx.is_main:
            log.info("torch.compile: the first step took %.1f s (compiling)", step_s)
        record_step(
            metrics,
            loss=step_loss,
            samples=step_samples,
            step_s=step_s,
            data_wait_s=wait_s,
            loss_weight=0 if skipped else None,
            flops=run.flops_per_sample * step_samples if run.flops_per_sample else None,
            skipped=overflow,
        )
        step_loss, step_samples = 0.0, 0
        # The host waits (for the device, for the other ranks) at log steps only: one
        # all_reduce carries the window's metrics and the preemption vote. Between them a
        # vote every STOP_CHECK_EVERY steps bounds how late a preemption is seen.
        if log_step:
            if run.auto is not None:  # every rank's last save cost rides on the same collective
                metrics.add_per_rank(_SAVE_COST, run.save_cost_s)
            row = report(
                metrics,
                ctx,
                epoch=state.epoch_number,
                step=state.step,
                lr=run.optimizer.param_groups[0]["lr"],
                stop=flag.requested,
                steps=state.step - logged_at,
                peak_tflops=run.peak_tflops,
                work=timer.take_work(),
            )
            logged_at = state.step
            stop = row.pop("stop_requested") > 0
            _update_auto(run, row)
            _warn_straggler(run, row)
            state.history.append(row)
            log_all(run.loggers, row, state.step)
            if t.nonfinite == "stop" and not math.isfinite(row.get("loss", 0.0)):
                raise NonFiniteLoss(
                    f"the loss is {row['loss']} in the {t.log_every} steps up to step "
                    f"{state.step}; stopped without checkpointing these weights "
                    "(trainer.nonfinite=skip skips such steps instead)"
                )
        else:
            stop = state.step % STOP_CHECK_EVERY == 0 and preemption.should_stop(flag, ctx)
        if stop:
            return True
        # At an epoch's end a save follows anyway when every_epoch is on, or training is done.
        save_follows = end and (t.checkpoint.every_epoch or _done(state, t.max_steps))
        if _save_due(run, log_step) and not save_follows:
            run.save()
        if _done(state, t.max_steps):
            break
    return False
