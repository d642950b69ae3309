"""The "plain" way: one process, a script with no distrib in it, as a user would write it.

A DataLoader over the TensorDataset with the epoch's shuffled order, the model, AdamW, and
the loop of `workloads.train_steps` (``.item()`` every 10 steps). The scaling benchmark's
other ways are measured against this one.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch.utils.data import DataLoader

from distrib.bench import workloads as w


def run(spec: w.Workload, *, steps: int) -> dict[str, Any]:
    """Train ``steps`` steps in this process; the rank result `ways.measure` reads."""
    start = time.time()
    device = w.device_for(0)
    w.reset_peak_memory(device)
    torch.set_num_threads(w.cores())  # one process: all cores, as distrib gives a lone worker
    torch.manual_seed(spec.seed)
    model = w.build_model(**spec.model).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=0.0)
    data = w.dataset(list(spec.input_shape), spec.train_size, seed=spec.seed)
    batches = DataLoader(
        data,
        batch_size=spec.global_batch,
        sampler=w.epoch_order(len(data), spec.seed),
        drop_last=True,
        pin_memory=device.type == "cuda",
    )
    clock = w.StepClock(device)
    first_loss = w.train_steps(
        model, optimizer, batches, device, clock, steps=steps, precision=spec.precision
    )
    return {"start": start, "first_loss": first_loss, **clock.summary(spec.warmup_steps)}
