"""A torchrun-style training script that never imports distrib: plain DDP on gloo.

It checkpoints every ``--save-every`` steps into ``--out`` (atomically), resumes from the newest
checkpoint there, and writes its final weights and what torchrun told it. ``--kill-rank`` and
``--kill-step`` SIGKILL one worker once (on the first attempt only), as a crash would.
"""

import argparse
import glob
import json
import os
import signal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

p = argparse.ArgumentParser()
p.add_argument("--out", required=True)
p.add_argument("--steps", type=int, default=40)
p.add_argument("--save-every", type=int, default=5)
p.add_argument("--kill-rank", type=int, default=-1)
p.add_argument("--kill-step", type=int, default=-1)
args = p.parse_args()

torch.use_deterministic_algorithms(True)
dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
attempt = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
with open(os.path.join(args.out, f"seen-rank{rank}-attempt{attempt}.json"), "w") as f:
    json.dump({k: v for k, v in os.environ.items() if k.startswith(("TORCH", "RANK"))}, f)

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 4))
ddp = DistributedDataParallel(model)
opt = torch.optim.SGD(ddp.parameters(), lr=0.05, momentum=0.9)
gen = torch.Generator().manual_seed(1)
x, y = torch.randn(1024, 16, generator=gen), torch.randint(0, 4, (1024,), generator=gen)
global_batch = 64
per_rank = global_batch // world

start = 0
saved = sorted(glob.glob(os.path.join(args.out, "ckpt-*.pt")))
if saved:
    state = torch.load(saved[-1], weights_only=True)
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["opt"])
    start = state["step"]
    print(f"rank {rank}: resumed at step {start}", flush=True)

for step in range(start, args.steps):
    if attempt == 0 and rank == args.kill_rank and step == args.kill_step:
        os.kill(os.getpid(), signal.SIGKILL)
    idx = torch.arange(step * global_batch, (step + 1) * global_batch) % len(x)
    mine = idx[rank * per_rank : (rank + 1) * per_rank]
    loss = F.cross_entropy(ddp(x[mine]), y[mine])
    opt.zero_grad()
    loss.backward()
    opt.step()
    if rank == 0 and (step + 1) % args.save_every == 0:
        path = os.path.join(args.out, f"ckpt-{step + 1:05d}.pt")
        torch.save(
            {"model": model.state_dict(), "opt": opt.state_dict(), "step": step + 1}, path + ".tmp"
        )
        os.replace(path + ".tmp", path)

if rank == 0:
    torch.save(model.state_dict(), os.path.join(args.out, "final.pt"))
dist.barrier()
dist.destroy_process_group()
