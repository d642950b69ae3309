from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
from helpers import spawn

import distrib
from distrib.distributed.process_group import pick_backend, pick_device, threads_per_worker


def test_lone_process_creates_no_group():
    ctx = distrib.init(environ={})
    assert ctx.world_size == 1 and ctx.device == torch.device("cpu") and ctx.backend == "gloo"
    assert not dist.is_initialized()
    assert distrib.init() is ctx  # idempotent
    distrib.shutdown()
    distrib.shutdown()  # twice is fine


def test_bad_device_and_backend_name_the_key():
    with pytest.raises(distrib.ConfigError, match="trainer.device"):
        pick_device("tpu", 0)
    with pytest.raises(distrib.ConfigError, match="trainer.backend"):
        pick_backend("mpi", torch.device("cpu"))
    with pytest.raises(distrib.ConfigError, match="nccl needs CUDA"):
        pick_backend("nccl", torch.device("cpu"))
    assert pick_backend("auto", torch.device("cpu")) == "gloo"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA error")
def test_cuda_requested_without_cuda():
    with pytest.raises(distrib.ConfigError, match="no CUDA device"):
        pick_device("cuda", 0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_device_follows_local_rank():
    assert pick_device("auto", 0) == torch.device("cuda", 0)
    assert pick_backend("auto", torch.device("cuda", 0)) == "nccl"


def test_threads_split_cores():
    cores = len(os.sched_getaffinity(0))
    assert threads_per_worker(1) == cores
    assert threads_per_worker(2) == max(1, cores // 2)
    assert threads_per_worker(10**6) == 1
    slurm = {"SLURM_STEP_ID": "0", "SLURM_CPUS_PER_TASK": "3"}
    assert threads_per_worker(1, slurm) == 3  # SLURM's allotment, not the node's cores


def _join_and_report() -> dict:
    ctx = distrib.init(timeout_s=60)
    t = torch.tensor([ctx.rank + 1.0])
    dist.all_reduce(t)
    return {
        "rank": ctx.rank,
        "world": ctx.world_size,
        "sum": t.item(),
        "threads": torch.get_num_threads(),
        "group": dist.is_initialized(),
    }


def test_two_workers_join_one_gloo_group():
    results = spawn(_join_and_report, world_size=2)
    assert [r["rank"] for r in results] == [0, 1]
    assert all(r["world"] == 2 and r["sum"] == 3.0 and r["group"] for r in results)
    assert all(r["threads"] == threads_per_worker(2) for r in results)


def _nccl_reduce_of_cpu_and_rng() -> dict:
    from distrib.rng import get_rng_state

    ctx = distrib.init(backend="nccl")
    total = distrib.reduce_sum(torch.tensor([ctx.rank + 1.0]))  # a CPU tensor, as users pass
    return {"sum": total.item(), "device": str(total.device), "rng": get_rng_state()["cuda"]}


@pytest.mark.skipif(
    torch.cuda.device_count() < 2, reason="NCCL with one GPU per worker needs 2 CUDA GPUs"
)
def test_nccl_reduces_cpu_tensors_and_keeps_one_gpu_rng_state_per_worker():
    results = spawn(_nccl_reduce_of_cpu_and_rng, world_size=2)
    assert [r["sum"] for r in results] == [3.0, 3.0]
    assert {r["device"] for r in results} == {"cpu"}  # back where it came from
    assert all(isinstance(r["rng"], torch.Tensor) for r in results)  # its own GPU's, not all


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_rng_state_round_trips_this_workers_gpu_only():
    from distrib.rng import get_rng_state, set_rng_state

    torch.cuda.init()
    state = get_rng_state()
    a = torch.rand(3, device="cuda")
    set_rng_state(state)
    assert torch.equal(torch.rand(3, device="cuda"), a)
