"""``python -m distrib env``: which Python, which torch, is CUDA there, do my workers talk?

The first thing to run on a new machine or cluster (also as a SLURM job step). It collects the
facts into one dict, so the screen and ``--json`` say the same; ``--check N`` starts N local
workers through distrib's own launcher and times an all_reduce of a few sizes, the numbers that
tell a broken or slow interconnect from a slow model. Inside a job's worker (torchrun, or a
SLURM step of several tasks) ``--check`` launches nothing: it measures the job's own world in
place and only rank 0 prints.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import socket
import statistics
import sys
import time
from collections.abc import Mapping
from typing import Any

SIZES = (4, 4 << 10, 256 << 10, 4 << 20, 32 << 20)
"""all_reduce sizes in bytes (float32): latency-bound to bandwidth-bound."""
PACKAGES = ("hydra-core", "omegaconf", "submitit", "wandb")


def facts(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Everything the screen shows, as plain JSON-able values."""
    import torch
    import torch.distributed as dist

    from distrib.launch.topology import LOOPBACK  # pure values: no launch happens

    environ = os.environ if environ is None else environ
    cuda = torch.cuda.is_available()
    build: dict[str, Any] = {"cuda": torch.version.cuda}
    if torch.version.cuda:
        build["cudnn"] = torch.backends.cudnn.version()
        try:
            build["nccl"] = ".".join(str(v) for v in torch.cuda.nccl.version())
        except Exception:  # a CUDA build without NCCL
            build["nccl"] = None
    gpus = []
    for i in range(torch.cuda.device_count() if cuda else 0):
        props = torch.cuda.get_device_properties(i)
        gpus.append({"index": i, "name": props.name, "memory_gib": props.total_memory / 2**30})
    return {
        "python": {"version": platform.python_version(), "executable": sys.executable},
        "torch": {"version": torch.__version__, **build},
        "cuda_available": cuda,
        "gpus": gpus,
        "backends": {
            "gloo": dist.is_gloo_available(),
            "nccl": dist.is_nccl_available(),
            "mpi": dist.is_mpi_available(),
        },
        "launch": launch_environment(environ),
        "hostname": socket.gethostname(),
        "rendezvous": {"single_machine": LOOPBACK, "multi_node": _host_address()},
        "packages": {name: _version(name) for name in PACKAGES},
    }


def launch_environment(environ: Mapping[str, str]) -> dict[str, Any]:
    """torchrun, a SLURM job (step) or nothing, with what each says about this process."""
    from distrib.env import is_slurm_step, is_torchrun_worker, read_env

    if is_torchrun_worker(environ):
        env = read_env(environ)
        return {
            "kind": "torchrun",
            "rank": env.rank,
            "world_size": env.world_size,
            "local_rank": env.local_rank,
            "run_id": environ.get("TORCHELASTIC_RUN_ID"),
        }
    if "SLURM_JOB_ID" in environ:
        out: dict[str, Any] = {
            "kind": "slurm step" if is_slurm_step(environ) else "slurm job",
            "job_id": environ["SLURM_JOB_ID"],
            "step_id": environ.get("SLURM_STEP_ID"),
            "nodes": environ.get("SLURM_JOB_NUM_NODES") or environ.get("SLURM_NNODES"),
            "nodelist": environ.get("SLURM_JOB_NODELIST"),
        }
        if is_slurm_step(environ):
            env = read_env(environ)
            out.update(rank=env.rank, world_size=env.world_size, master_addr=env.master_addr)
        return out
    return {"kind": "none"}


def _host_address() -> str:
    """The address other nodes would reach this one at (the first non-loopback one)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("10.255.255.255", 1))  # no packet is sent: picks the outgoing interface
            return str(s.getsockname()[0])
    except OSError:  # no route at all (an offline machine): what the hostname resolves to
        pass
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "unresolved"


def _version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def measure(repeats: int = 10) -> dict[str, Any]:
    """In a worker: time all_reduce at each of `SIZES`; rank 0's numbers come back."""
    import torch
    import torch.distributed as dist

    import distrib

    ctx = distrib.init(timeout_s=60)
    n = ctx.world_size
    rows = []
    for size in SIZES:
        x = torch.ones(max(1, size // 4), dtype=torch.float32, device=ctx.device)
        reps = repeats if size <= (4 << 20) else max(3, repeats // 3)
        for _ in range(2):  # warm-up: connections, allocations
            dist.all_reduce(x)
        times = []
        for _ in range(reps):
            _sync(ctx.device)
            dist.barrier()
            start = time.perf_counter()
            dist.all_reduce(x)
            _sync(ctx.device)
            times.append(time.perf_counter() - start)
        t = statistics.median(times)
        algbw = size / t / 1e9
        rows.append(
            {
                "bytes": size,
                "latency_us": t * 1e6,
                "algbw_gbps": algbw,
                "busbw_gbps": algbw * 2 * (n - 1) / n,  # nccl-tests' convention
            }
        )
    return {"backend": ctx.backend, "world_size": n, "device": str(ctx.device), "sizes": rows}


def _sync(device: Any) -> None:
    if device.type == "cuda":
        import torch

        torch.cuda.synchronize(device)


def check(nproc: int) -> dict[str, Any]:
    """`measure` on ``nproc`` local workers started by distrib's launcher; in place (``nproc``
    unused) when this process already is a worker of a job: torchrun or a SLURM step."""
    from distrib.env import is_worker

    if is_worker():
        return measure()
    from distrib.launch.local import launch

    return launch(measure, (), nproc=nproc)[0]


def gpu_shortfall(nproc: int) -> str | None:
    """Why ``nproc`` local workers cannot start, said before any starts: on CUDA, nccl needs
    one GPU per worker, and two workers on one GPU end in NCCL's "Duplicate GPU" abort."""
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if not count or nproc <= count:
        return None
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    shown = f" (CUDA_VISIBLE_DEVICES={visible})" if visible is not None else ""
    return (
        f"--check {nproc}: nccl needs one GPU per worker, but {count} GPU(s) are visible"
        f"{shown}; use --check {count} or fewer"
    )


def render(info: dict[str, Any]) -> str:
    """One screen of text."""
    t = info["torch"]
    if t["cuda"]:
        build = f"CUDA {t['cuda']}, cuDNN {t.get('cudnn')}, NCCL {t.get('nccl')}"
    else:
        build = "CPU build"
    launch = info["launch"]
    where = ", ".join(f"{k} {v}" for k, v in launch.items() if k != "kind" and v is not None)
    lines = [
        f"python      {info['python']['version']} ({info['python']['executable']})",
        f"torch       {t['version']} ({build})",
        f"cuda        available: {info['cuda_available']}, devices: {len(info['gpus'])}",
        *(f"  gpu {g['index']}     {g['name']}, {g['memory_gib']:.1f} GiB" for g in info["gpus"]),
        "backends    " + ", ".join(f"{k} {v}" for k, v in info["backends"].items()),
        f"launched by {launch['kind']}" + (f" ({where})" if where else ""),
        f"hostname    {info['hostname']}",
        f"rendezvous  {info['rendezvous']['single_machine']} (one machine), "
        f"{info['rendezvous']['multi_node']} (as other nodes see this one)",
        "packages    " + ", ".join(f"{k} {v}" for k, v in info["packages"].items()),
    ]
    if "check" in info:
        c = info["check"]
        lines.append(
            f"all_reduce  {c['world_size']} workers, {c['backend']} on {c['device']} "
            "(median; bus bandwidth as nccl-tests)"
        )
        lines.append(f"  {'bytes':>10}  {'latency us':>11}  {'busbw GB/s':>10}")
        for r in c["sizes"]:
            lines.append(f"  {r['bytes']:>10}  {r['latency_us']:>11.1f}  {r['busbw_gbps']:>10.3f}")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m distrib env", description=__doc__.split("\n")[0])
    say = "time all_reduce on N local workers (inside a job's worker: on the job's own)"
    p.add_argument("--check", type=int, metavar="N", help=say)
    p.add_argument("--json", action="store_true", help="the same facts as JSON")
    args = p.parse_args(argv)
    from distrib.env import is_worker, read_env

    in_place = is_worker()
    problem = None
    if args.check is not None and args.check < 1:
        problem = f"--check {args.check}: expected a number of workers >= 1"
    elif args.check and not in_place:
        problem = gpu_shortfall(args.check)
    if problem:
        print(f"distrib: error: {problem}", file=sys.stderr)
        return 2
    info = facts()
    if args.check:
        try:
            info["check"] = check(args.check)
        except Exception as e:  # the workers could not start or talk: that is the finding
            said = " ".join(str(e).split())[:300]
            print(f"distrib: error: --check {args.check}: {type(e).__name__}: {said}",
                  file=sys.stderr)  # fmt: skip
            return 1
        if in_place and not read_env().is_main:
            return 0  # the numbers are rank 0's: one table per job, not one per worker
    print(json.dumps(info, indent=2) if args.json else render(info))
    return 0
