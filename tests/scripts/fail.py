"""A torchrun-style script (no distrib import) whose rank ``--rank`` fails by ``--how``
(raise, exit, kill, sleep) after one all_reduce, while its peers go on to the next one; or
every rank exits 75 (``requeue``); or rank 0 exits 75 while the others exit 1 at the same
moment (``mixed``); or all wait to be signalled (``none``). Writes its pid
to ``<--out>/rank<k>.pid`` so a test can check that no worker is left."""

import argparse
import os
import signal
import sys
import time

import torch
import torch.distributed as dist

p = argparse.ArgumentParser()
p.add_argument("--out", required=True)
p.add_argument(
    "--how",
    choices=["raise", "exit", "kill", "sleep", "none", "requeue", "mixed"],
    default="raise",
)
p.add_argument("--rank", type=int, default=1)
args = p.parse_args()

dist.init_process_group("gloo")
rank = dist.get_rank()
with open(os.path.join(args.out, f"rank{rank}.pid"), "w") as f:
    f.write(str(os.getpid()))
attempt = os.environ["TORCHELASTIC_RESTART_COUNT"]
open(os.path.join(args.out, f"attempt{attempt}-rank{rank}"), "w").close()
x = torch.ones(4)
dist.all_reduce(x)
if args.how == "requeue":  # every rank: "checkpoint written, requeue me"
    dist.barrier()
    dist.destroy_process_group()
    sys.exit(75)
if args.how == "mixed":  # at once: rank 0 "saved, requeue me", the others fail
    dist.barrier()
    os._exit(75 if rank == 0 else 1)
if rank == args.rank:
    if args.how == "raise":
        raise ValueError(f"bad shard on rank {rank}")
    if args.how == "exit":
        os._exit(7)
    if args.how == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if args.how == "sleep":
        time.sleep(600)
dist.all_reduce(x)
time.sleep(600 if args.how == "none" else 0)  # "none": wait to be signalled
dist.destroy_process_group()
