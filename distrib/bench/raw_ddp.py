"""Raw torch DDP, as the PyTorch tutorial writes it: the scaling benchmark's baseline.

    torchrun --standalone --nproc_per_node=2 distrib/bench/raw_ddp.py \\
        --spec '<workload json>' --steps 23 --out DIR

``init_process_group`` (gloo on CPU, nccl on GPU), a DistributedSampler, DDP, AdamW, and the
loop of `workloads.train_steps`. Run by path it imports nothing of distrib -- its one
neighbour is workloads.py, shared by every way -- so it times torch alone. ``--via fabric``
or ``--via accelerate`` runs the same loop through Lightning Fabric or HF Accelerate (both
optional; the benchmark skips them when they are not installed). Each rank writes its
measurement to ``DIR/rank<k>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

if __package__:  # imported as distrib.bench.raw_ddp (tests, linters)
    from distrib.bench import workloads as w
else:  # run by path under torchrun: a sibling import keeps the library out
    import workloads as w  # type: ignore[no-redef]

Setup = tuple[nn.Module, torch.optim.Optimizer, Callable[[torch.Tensor], None]]


def _torch_ddp(model: nn.Module, device: torch.device, lr: float) -> Setup:
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    ddp = DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None
    )
    opt = torch.optim.AdamW(ddp.parameters(), lr=lr, weight_decay=0.0)
    return ddp, opt, torch.Tensor.backward


def _fabric(model: nn.Module, device: torch.device, lr: float) -> Setup:
    from lightning.fabric import Fabric

    local_world = int(os.environ["LOCAL_WORLD_SIZE"])
    accelerator = "cuda" if device.type == "cuda" else "cpu"
    fabric = Fabric(accelerator=accelerator, devices=local_world, strategy="ddp")
    fabric.launch()  # under torchrun: joins the job torchrun started, spawns nothing
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    model, opt = fabric.setup(model, opt)
    return model, opt, fabric.backward


def _accelerate(model: nn.Module, device: torch.device, lr: float) -> Setup:
    from accelerate import Accelerator

    acc = Accelerator(cpu=device.type == "cpu")
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    model, opt = acc.prepare(model, opt)
    return model, opt, acc.backward


VIAS = {"torch": _torch_ddp, "fabric": _fabric, "accelerate": _accelerate}


def run(spec: w.Workload, *, steps: int, via: str = "torch") -> dict:
    """Train ``steps`` steps as this torchrun worker; returns this rank's measurement."""
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank, local_world = int(os.environ["LOCAL_RANK"]), int(os.environ["LOCAL_WORLD_SIZE"])
    device = w.device_for(local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    w.reset_peak_memory(device)
    torch.set_num_threads(w.threads_for(local_world))  # torchrun's default would be 1
    torch.manual_seed(spec.seed)
    model, opt, backward = VIAS[via](w.build_model(**spec.model).to(device), device, spec.lr)
    data = w.dataset(list(spec.input_shape), spec.train_size, seed=spec.seed)
    sampler = DistributedSampler(
        data, num_replicas=world, rank=rank, shuffle=True, seed=spec.seed, drop_last=True
    )
    sampler.set_epoch(0)
    batches = DataLoader(
        data,
        batch_size=spec.global_batch // world,
        sampler=sampler,
        drop_last=True,
        pin_memory=device.type == "cuda",
    )
    clock = w.StepClock(device)
    first = w.train_steps(
        model, opt, batches, device, clock, steps=steps, backward=backward, precision=spec.precision
    )
    return {"first_loss": first, **clock.summary(spec.warmup_steps)}


def _teardown() -> None:
    """Every rank done, then leave without tearing gloo down: destroying the group (or the
    interpreter's own teardown of it) intermittently aborts a rank with "terminate called
    without an active exception" when its peer closes first -- the same race distrib's own
    runner sidesteps. The measurement is written already; exit code 0 is all torchrun needs."""
    if dist.is_initialized():
        device = w.device_for(int(os.environ["LOCAL_RANK"]))
        dist.barrier(device_ids=[device.index] if device.type == "cuda" else None)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--spec", required=True, help="a Workload as JSON")
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--via", choices=sorted(VIAS), default="torch")
    args = p.parse_args()
    result = run(w.Workload.from_dict(json.loads(args.spec)), steps=args.steps, via=args.via)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"rank{os.environ['RANK']}.json").write_text(json.dumps(result))
    _teardown()  # run()'s model is freed by now


if __name__ == "__main__":
    main()
