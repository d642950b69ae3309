"""The ways of running one workload, each returning what its ranks measured.

- ``plain``: a hand-written loop in this process (plain.py, no distrib in it);
- ``trainer 1``: `distrib.trainer.loop.fit` in this process, no loggers, no checkpoints;
- ``compiled 1``: the same with ``trainer.compile.enable=true`` (``--ways trainer,compiled``:
  eager and compiled side by side, and their ratio). Its compile is never timed: each run's
  ``fit`` compiles in its first step (after the way's warm-up run, from dynamo's in-process
  cache, which a fresh model of the same class hits, and inductor's), and the first
  ``warmup_steps`` steps of every run are dropped from the timed ones; the log says how long
  that first step took (``logs/trainer.rank0.log``);
- ``distrib N``: the same trainer in N workers of a fresh launcher process (`launched`);
- ``raw DDP N``, ``fabric N``, ``accelerate N``: raw_ddp.py under ``torchrun --standalone``
  (Fabric and Accelerate only where installed; never dependencies).

The trainer is timed from the outside, without touching its loop: its optimizer is AdamW
with a step post-hook that ticks the same `workloads.StepClock` the hand-written loops
tick, and its model carries a forward hook that notes when each evaluation ends (for
time-to-accuracy). A run's ``start`` is when the way was started (the call, or the launch).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import json
import logging
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from distrib.bench import plain
from distrib.bench import workloads as w
from distrib.config import build, to_config
from distrib.trainer.loop import fit

RAW_DDP = Path(__file__).with_name("raw_ddp.py")


@dataclasses.dataclass
class Run:
    """One run of one way: when it was started and each rank's measurement."""

    start: float
    ranks: list[dict[str, Any]]


Runner = Callable[[w.Workload, int, Path, bool], Run]
"""(workload, steps, log directory, warm-up?) -> Run; a warm-up also records the first loss."""


@dataclasses.dataclass(frozen=True)
class Way:
    name: str
    workers: int
    family: str
    """distrib, torch, fabric or accelerate: 1 worker and N workers of one family scale."""
    runner: Runner | None
    skipped: str = ""
    """Why the way is not run (a framework that is not installed); empty when it runs."""
    default: bool = True
    """Run without ``--ways``; ``compiled 1`` is not (it compiles: a minute on a CPU)."""


def ways(n: int) -> list[Way]:
    """Every way at ``n`` workers, the optional ones marked skipped when absent."""

    def torchrun(via: str) -> Runner:
        return lambda spec, steps, logs, warm: _torchrun(spec, steps, n, via, logs)

    out = [
        Way("plain", 1, "torch", _plain),
        Way("trainer 1", 1, "distrib", _trainer(1, launched=False)),
        Way("compiled 1", 1, "distrib", _trainer(1, launched=False, compiled=True), default=False),
        Way(f"distrib {n}", n, "distrib", _trainer(n, launched=True)),
        Way(f"raw DDP {n}", n, "torch", torchrun("torch")),
    ]
    for via, module in (("fabric", "lightning"), ("accelerate", "accelerate")):
        if importlib.util.find_spec(module) is None:
            why = f"{module} is not installed (pip install {module})"
            out.append(Way(f"{via} {n}", n, via, None, why))
        else:
            out.append(Way(f"{via} {n}", n, via, torchrun(via)))
    return out


def measure(run: Run, global_batch: int) -> dict[str, float]:
    """One run's numbers; over ranks, the slowest (DDP ranks wait for each other anyway)."""
    steps = [r["step_s"] for r in run.ranks]
    losses = [r["first_loss"] for r in run.ranks if r.get("first_loss") is not None]
    return {
        "samples_per_s": global_batch * len(steps[0]) / max(sum(s) for s in steps),
        "step_ms_median": max(float(np.median(s)) for s in steps) * 1e3,
        "step_ms_p90": max(float(np.percentile(s, 90)) for s in steps) * 1e3,
        "launch_to_first_step_s": max(r["first_wall"] for r in run.ranks) - run.start,
        "peak_mib": max(r["peak_mib"] for r in run.ranks),
        # equal shards: the mean of the ranks' mean losses is the global batch's mean loss
        "first_loss": float(np.mean(losses)) if losses else math.nan,
    }


def _plain(spec: w.Workload, steps: int, logs: Path, warm: bool) -> Run:
    result = plain.run(spec, steps=steps)
    return Run(result.pop("start"), [result])


def _torchrun(spec: w.Workload, steps: int, nproc: int, via: str, logs: Path) -> Run:
    out = Path(tempfile.mkdtemp(prefix=f"{via}-", dir=logs))
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun)] if torchrun.exists() else [sys.executable, "-m", "torch.distributed.run"]
    cmd += ["--standalone", f"--nproc_per_node={nproc}", str(RAW_DDP), "--via", via]
    cmd += ["--spec", json.dumps(spec.to_dict()), "--steps", str(steps), "--out", str(out)]
    # torchrun sets 1 thread per worker (and warns) unless told; raw_ddp.py sets the share too
    env = {**os.environ, "OMP_NUM_THREADS": str(w.threads_for(nproc))}
    log = logs / f"{via}-ddp.log"
    with open(log, "a") as f:
        start = time.time()
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, check=False)
    if proc.returncode:
        tail = "".join(log.read_text().splitlines(keepends=True)[-15:])
        raise RuntimeError(f"{via} DDP: torchrun exited with {proc.returncode}; {log}:\n{tail}")
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(nproc)]
    shutil.rmtree(out)
    return Run(start, ranks)


def _trainer(nproc: int, *, launched: bool, compiled: bool = False) -> Runner:
    def runner(spec: w.Workload, steps: int, logs: Path, warm: bool) -> Run:
        # a warm-up logs every step: its first row is the first step's loss; the timed runs
        # keep the default (10), which the plain loop's `.item()` every 10 steps mirrors
        cfg = trainer_config(spec, steps=steps, log_every=1 if warm else 10, compiled=compiled)
        return run_trainer(cfg, nproc, logs / "trainer", spec.warmup_steps, launched=launched)

    return runner


def trainer_config(
    spec: w.Workload, *, steps: int, log_every: int, compiled: bool = False
) -> dict[str, Any]:
    """The workload as a trainer config (`distrib.config.to_config` input): same model, seed,
    data and order as the hand-written ways, AdamW with the same settings; ``compiled``:
    ``trainer.compile.enable=true``."""

    def data(size: int, seed: int) -> dict[str, Any]:
        shape = list(spec.input_shape)
        target = "distrib.bench.workloads.dataset"
        return {"_target_": target, "input_shape": shape, "size": size, "seed": seed}

    return {
        "model": {"_target_": f"{__name__}.probed_model", "factory": f"{w.__name__}.build_model"}
        | spec.model,
        "data": {
            "train": data(spec.train_size, spec.seed),
            "eval": data(spec.global_batch, spec.seed + 1),
        },
        "optim": {"_target_": f"{__name__}.clocked_adamw", "_partial_": True, "lr": spec.lr},
        "trainer": {
            "epochs": 1,
            "max_steps": steps,
            "global_batch_size": spec.global_batch,
            "seed": spec.seed,
            "log_every": log_every,
            "precision": spec.precision,
            "checkpoint": {"every_epoch": False},
            "compile": {"enable": compiled},
        },
        "logger": [],
    }


def run_trainer(
    cfg: dict[str, Any], nproc: int, log_path: Path, warmup_steps: int, *, launched: bool
) -> Run:
    """``fit`` in this process ("trainer 1") or in ``nproc`` workers of a launcher process
    ("distrib N", see `distrib.bench.launched`; launched even when N is 1, one GPU: then it
    measures what launching costs)."""
    if not launched:
        if nproc != 1:
            raise ValueError(f"nproc={nproc}: only one worker trains in this process")
        start = time.time()
        return Run(start, [trainer_worker(cfg, str(log_path), warmup_steps)])
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=log_path.parent) as tmp:
        request, out = Path(tmp, "request.json"), Path(tmp, "ranks.json")
        job = {"cfg": cfg, "log_path": str(log_path), "warmup_steps": warmup_steps}
        request.write_text(json.dumps({**job, "nproc": nproc}))
        log = log_path.with_name(f"{log_path.name}-launcher.log")
        cmd = [sys.executable, "-m", "distrib.bench.launched", str(request), str(out)]
        with open(log, "a") as f:
            start = time.time()
            proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, check=False)
        if proc.returncode:
            tail = "".join(log.read_text().splitlines(keepends=True)[-15:])
            raise RuntimeError(
                f"distrib {nproc}: the launcher exited with {proc.returncode}; {log}:\n{tail}"
            )
        return Run(start, json.loads(out.read_text()))


class _Probe:
    """What the trainer's optimizer (step ends) and model (evaluation ends) report."""

    def __init__(self, device: torch.device) -> None:
        self.clock = w.StepClock(device)
        self.eval_ends: list[float] = []
        self._in_eval = False

    def on_forward(self, module: nn.Module, args: Any, output: Any) -> None:
        if module.training:
            self._in_eval = False
            return
        if self.clock.cuda:  # evaluation is not timed per step: a sync costs nothing there
            torch.cuda.synchronize(self.clock.device)
        if not self._in_eval:
            self.eval_ends.append(0.0)
            self._in_eval = True
        self.eval_ends[-1] = time.time()  # the latest batch of the running evaluation


_probe: _Probe | None = None


def _current_probe() -> _Probe:
    if _probe is None:
        raise RuntimeError("probed_model and clocked_adamw are built inside trainer_worker only")
    return _probe


def probed_model(factory: str, **kwargs: Any) -> nn.Module:
    """The trainer's ``model._target_``: ``factory(**kwargs)`` with a hook noting eval ends."""
    model = build({"_target_": factory, **kwargs})
    model.register_forward_hook(_current_probe().on_forward)
    return model


def clocked_adamw(
    params: Any, lr: float = 1e-3, weight_decay: float = 0.0
) -> torch.optim.Optimizer:
    """The trainer's ``optim._target_``: AdamW that ticks the step clock after each step."""
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    clock = _current_probe().clock
    opt.register_step_post_hook(lambda *_: clock.tick())
    return opt


def trainer_worker(cfg: dict[str, Any], log_path: str, warmup_steps: int) -> dict[str, Any]:
    """One trainer worker (importable: `launch` spawns it by name); its rank's measurement."""
    global _probe
    rank = int(os.environ.get("RANK", "0"))
    device = w.device_for(int(os.environ.get("LOCAL_RANK", "0")))  # fit's pick (device=auto)
    w.reset_peak_memory(device)
    _probe = probe = _Probe(device)
    try:
        with _logs_to(Path(f"{log_path}.rank{rank}.log")):
            out = fit(to_config(cfg), None)
    finally:
        _probe = None
    history = out["history"]
    first = history[0] if history else {}
    accs = [row["eval_acc"] for row in history if "eval_acc" in row]
    return {
        "first_loss": first.get("loss") if first.get("step") == 1 else None,
        # one evaluation per row with eval_acc; a hook-less evaluation would only shorten this
        "evals": list(zip(probe.eval_ends, accs, strict=False)),
        **probe.clock.summary(warmup_steps),
    }


@contextlib.contextmanager
def _logs_to(path: Path) -> Iterator[None]:
    """The trainer's console lines go to ``path``: stdout is the benchmark's table."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f, contextlib.redirect_stdout(f):
        try:
            yield
        finally:  # fit's handlers hold ``f``: drop them before it closes
            logger = logging.getLogger("distrib")
            for handler in list(logger.handlers):
                logger.removeHandler(handler)
