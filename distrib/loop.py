"""The training loop behind ``python -m distrib.train``: build, train, evaluate, report.

Order of a run (each step is one function below): join the job (`session`), seed equally on
every rank, build the model and wrap it, build the optimizer over the *wrapped* parameters,
shard the data, then per epoch: train with gradient accumulation, evaluate exactly, log.
Users with their own script call the same pieces through the public API instead.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from distrib.config import Config, build, to_config
from distrib.data import eval_loader, loader
from distrib.logs import setup_logging
from distrib.process_group import Context, session
from distrib.rng import seed_all
from distrib.wrap import accumulate, autocast, clip_grad, unwrap, wrap

log = logging.getLogger("distrib.loop")


@dataclass
class TrainState:
    """Where training is: what a checkpoint must restore to continue exactly."""

    epoch: int = 0
    step: int = 0
    """Optimizer steps taken in all."""
    consumed: int = 0
    """Global samples consumed in the current epoch."""
    history: list[dict[str, float]] = field(default_factory=list)
    """One entry per logging step (global values) and per evaluation."""


def worker_entry(cfg: dict, run_dir: str) -> dict[str, Any]:
    """What each launched worker runs: a picklable, importable entry point."""
    return fit(to_config(cfg), Path(run_dir))


def fit(cfg: Config, run_dir: Path | None, *, return_weights: bool = False) -> dict[str, Any]:
    """Train ``cfg`` in this process as one worker of the job its environment describes.

    Returns the final evaluation and the logged history (global values, equal on every rank);
    ``return_weights`` adds the final CPU state dict (for tests and notebooks).
    """
    t = cfg.trainer
    with session(device=t.device, backend=t.backend, timeout_s=t.timeout_s) as ctx:
        setup_logging(run_dir, ctx.rank)
        if t.deterministic:
            torch.use_deterministic_algorithms(True)
        seed_all(t.seed)  # same seed everywhere: equal replicas before DDP even broadcasts
        model = wrap(build(cfg.model), ctx, t.ddp)
        optimizer = build(cfg.optim)(model.parameters())
        scheduler = build(cfg.scheduler)(optimizer) if cfg.scheduler is not None else None
        train_dl = loader(
            build(cfg.data["train"]),
            batch_size=t.global_batch_size,
            ctx=ctx,
            seed=t.seed,
            drop_last=t.drop_last,
            accum=t.grad_accum,
            num_workers=t.num_workers,
        )
        eval_dl = eval_loader(
            build(cfg.data["eval"]),
            batch_size=t.eval_batch_size,
            ctx=ctx,
            num_workers=t.num_workers,
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
        state = TrainState()
        result: dict[str, Any] = {}
        while state.epoch < t.epochs and not _done(state, t.max_steps):
            t0 = time.perf_counter()
            train_loss = train_epoch(model, optimizer, scheduler, train_dl, ctx, cfg, state)
            result = evaluate(unwrap(model), eval_dl, ctx)
            state.history.append({"epoch": state.epoch, "step": state.step, **result})
            log.info(
                "epoch %d/%d  step %d  train_loss %.4f  eval_loss %.4f  eval_acc %.4f  (%.1fs)",
                state.epoch + 1,
                t.epochs,
                state.step,
                train_loss,
                result["eval_loss"],
                result["eval_acc"],
                time.perf_counter() - t0,
            )
            state.epoch, state.consumed = state.epoch + 1, 0
        log.info(
            "final test accuracy: %.4f (%d/%d)",
            result.get("eval_acc", float("nan")),
            result.get("eval_correct", 0),
            result.get("eval_total", 0),
        )
        out = {"rank": ctx.rank, "world_size": ctx.world_size, "history": state.history, **result}
        if return_weights:
            out["state_dict"] = {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()}
        return out


def _done(state: TrainState, max_steps: int) -> bool:
    return max_steps > 0 and state.step >= max_steps


def train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    dl: DataLoader,
    ctx: Context,
    cfg: Config,
    state: TrainState,
) -> float:
    """One pass over this rank's shard; returns the epoch's global mean training loss."""
    t = cfg.trainer
    dl.sampler.set_position(state.epoch, state.consumed)  # type: ignore[attr-defined]
    model.train()
    n_micro = len(dl)
    window = torch.zeros(2, dtype=torch.float64)  # loss sum, steps since the last log
    epoch_sum = torch.zeros(2, dtype=torch.float64)
    step_loss = 0.0
    for i, (x, y) in enumerate(dl):
        first = i - i % t.grad_accum
        in_step = min(t.grad_accum, n_micro - first)  # the last step may be short
        last_micro = i - first == in_step - 1
        x, y = x.to(ctx.device, non_blocking=True), y.to(ctx.device, non_blocking=True)
        with accumulate(model, sync=last_micro):
            with autocast(ctx.device, t.precision):
                loss = F.cross_entropy(model(x), y) / in_step
            loss.backward()
        step_loss += loss.item()
        if not last_micro:
            continue
        clip_grad(model, t.clip_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if scheduler is not None:
            scheduler.step()
        state.step += 1
        state.consumed += x.shape[0] * in_step * ctx.world_size
        window += torch.tensor([step_loss, 1.0], dtype=torch.float64)
        step_loss = 0.0
        end = i == n_micro - 1 or _done(state, t.max_steps)
        if state.step % t.log_every == 0 or end:
            mean = _global_mean(window, ctx)
            epoch_sum += torch.tensor(
                [mean * window[1].item(), window[1].item()], dtype=torch.float64
            )
            state.history.append({"epoch": state.epoch, "step": state.step, "loss": mean})
            log.info("epoch %d  step %d  loss %.4f", state.epoch + 1, state.step, mean)
            window.zero_()
        if _done(state, t.max_steps):
            break
    return (epoch_sum[0] / epoch_sum[1].clamp(min=1)).item()


def _global_mean(window: torch.Tensor, ctx: Context) -> float:
    """Mean step loss over all ranks in one all_reduce (ranks hold equal-sized batches)."""
    total = window.clone()
    if ctx.is_distributed:
        dist.all_reduce(total)  # gloo and nccl both sum float64 on CPU tensors
    return (total[0] / total[1]).item()


@torch.no_grad()
def evaluate(model: nn.Module, dl: DataLoader, ctx: Context) -> dict[str, Any]:
    """Exact global loss and accuracy: summed over every sample once, one all_reduce."""
    was_training = model.training
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64)  # loss sum, correct, total
    for x, y in dl:
        x, y = x.to(ctx.device), y.to(ctx.device)
        out = model(x)
        sums += torch.tensor(
            [
                F.cross_entropy(out.float(), y, reduction="sum").item(),
                (out.argmax(dim=1) == y).sum().item(),
                y.numel(),
            ],
            dtype=torch.float64,
        )
    if ctx.is_distributed:
        dist.all_reduce(sums)
    model.train(was_training)
    loss, correct, total = sums.tolist()
    return {
        "eval_loss": loss / max(total, 1),
        "eval_acc": correct / max(total, 1),
        "eval_correct": int(correct),
        "eval_total": int(total),
    }
