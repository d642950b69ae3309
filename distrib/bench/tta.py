"""Time to accuracy (DAWNBench-style): wall seconds, and core- or GPU-seconds, to reach a test
accuracy on sklearn's digits, with the trainer at 1 and at N workers.

The run is ``python -m distrib.train``'s default (conf/: model=cnn, data=digits, optim=adamw,
global batch 64), evaluated every epoch. The clock starts when the way starts (the call for
1 worker, the launch for N) and stops when the first evaluation at or above the target ends,
so start-up counts, as it does for whoever waits for the result.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from distrib.bench import ways
from distrib.bench import workloads as w

TARGET = 0.97


def digits_config(epochs: int) -> dict[str, Any]:
    """conf/config.yaml's defaults (no checkpoints, no loggers), timed by `ways`' probes."""
    return {
        "model": {
            "_target_": f"{ways.__name__}.probed_model",
            "factory": "distrib.models.SmallCNN",
            "in_channels": 1,
            "num_classes": 10,
            "width": 32,
        },
        "data": {
            "train": {"_target_": "distrib.datasets.digits", "split": "train"},
            "eval": {"_target_": "distrib.datasets.digits", "split": "test"},
        },
        "optim": {"_target_": f"{ways.__name__}.clocked_adamw", "_partial_": True, "lr": 3e-3},
        "trainer": {
            "epochs": epochs,
            "global_batch_size": 64,
            "seed": 0,
            "checkpoint": {"every_epoch": False},
        },
        "logger": [],
    }


def run(nproc: int, epochs: int, logs: Path) -> ways.Run:
    cfg = digits_config(epochs)
    return ways.run_trainer(cfg, nproc, logs / "tta", warmup_steps=1, launched=nproc > 1)


def summarize(run: ways.Run, nproc: int, target: float = TARGET) -> dict[str, Any]:
    """The accuracy curve (seconds since start, test accuracy) and when it crossed ``target``.

    Resources: GPU-seconds on GPUs (one per worker); on CPU core-seconds, wall x the cores
    the workers use together (each gets cores / workers threads, so all of them either way).
    """
    # every rank evaluates the same epochs (each is a collective); an evaluation ends when
    # its slowest rank is done, and its accuracy is the same on every rank
    ends = [
        max(t for t, _ in evals) for evals in zip(*(r["evals"] for r in run.ranks), strict=True)
    ]
    accs = [acc for _, acc in run.ranks[0]["evals"]]
    curve = [(end - run.start, acc) for end, acc in zip(ends, accs, strict=True)]
    reached = next((t for t, acc in curve if acc >= target), math.nan)
    gpu = torch.cuda.is_available()
    used = nproc if gpu else min(w.cores(), nproc * w.threads_for(nproc))
    return {
        "workers": nproc,
        "target": target,
        "wall_s": reached,
        "resource_s": reached * used,
        "resource": "GPU-seconds" if gpu else "core-seconds",
        "reached": not math.isnan(reached),
        "epochs": len(curve),
        "final_acc": curve[-1][1] if curve else math.nan,
        "curve": curve,
    }
