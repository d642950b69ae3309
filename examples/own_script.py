"""Your own training script, made data-parallel with distrib's Python API.

    python examples/own_script.py                                   # one process
    python -m distrib.launch --nproc 2 examples/own_script.py       # 2 local workers
    torchrun --standalone --nproc_per_node=2 examples/own_script.py # the same under torchrun

Only the lines marked ``# distrib`` differ from a single-process script.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

import distrib
from distrib.datasets import digits
from distrib.models import SmallCNN


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64, help="global batch over all workers")
    parser.add_argument("--lr", type=float, default=3e-3)
    args = parser.parse_args()

    ctx = distrib.init()  # distrib
    distrib.seed_all(0)  # same init on every rank
    model = distrib.wrap(SmallCNN())  # distrib
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
    train = distrib.loader(digits("train"), batch_size=args.batch_size, seed=0)  # distrib
    test = distrib.eval_loader(digits("test"), batch_size=256)  # distrib

    for epoch in range(args.epochs):
        train.sampler.set_epoch(epoch)  # distrib: a new shuffle every epoch
        model.train()
        for x, y in train:
            x, y = x.to(ctx.device), y.to(ctx.device)
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        model.eval()
        counts = torch.zeros(2, dtype=torch.float64)
        with torch.no_grad():
            for x, y in test:
                pred = distrib.unwrap(model)(x.to(ctx.device)).argmax(dim=1).cpu()
                counts += torch.tensor([(pred == y).sum().item(), y.numel()], dtype=torch.float64)
        correct, total = distrib.reduce_sum(counts).tolist()  # distrib: exact global accuracy
        if ctx.is_main:
            print(
                f"epoch {epoch + 1}: loss {loss.item():.4f} test accuracy {correct / total:.4f} "
                f"({int(correct)}/{int(total)}, {ctx.world_size} workers)",
                flush=True,
            )
    distrib.shutdown()


if __name__ == "__main__":
    main()
