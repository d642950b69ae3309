from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import spawn
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

import distrib


def test_world_of_one_gets_the_bare_model():
    distrib.init(environ={})
    model = nn.Linear(3, 2)
    assert distrib.wrap(model) is model
    assert distrib.unwrap(model) is model


def _step_and_compare(sync_bn: bool) -> dict:
    ctx = distrib.init()
    torch.manual_seed(100 + ctx.rank)  # deliberately different init: DDP must broadcast rank 0's
    net = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))
    model = distrib.wrap(net, ddp=distrib.DDPConfig(sync_batchnorm=sync_bn, bucket_cap_mb=1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    torch.manual_seed(ctx.rank)  # each rank its own data
    x, y = torch.randn(6, 4), torch.randint(0, 2, (6,))
    F.cross_entropy(model(x), y).backward()
    opt.step()
    params = torch.cat([p.detach().flatten() for p in distrib.unwrap(model).parameters()])
    return {
        "ddp": isinstance(model, DDP),
        "params": params,
        "sync_bn": any(isinstance(m, nn.SyncBatchNorm) for m in model.modules()),
    }


def test_parameters_are_identical_on_every_rank_after_a_step():
    r0, r1 = spawn(_step_and_compare, False)
    assert r0["ddp"] and r1["ddp"] and not r0["sync_bn"]
    assert torch.equal(r0["params"], r1["params"])


def _sync_bn_on_cpu() -> str:
    distrib.init()
    try:
        distrib.wrap(nn.BatchNorm1d(3), ddp=distrib.DDPConfig(sync_batchnorm=True))
    except distrib.ConfigError as e:
        return str(e)
    return "no error"


def test_sync_batchnorm_on_cpu_is_a_clear_error():
    msgs = spawn(_sync_bn_on_cpu)
    assert all(m.startswith("trainer.ddp.sync_batchnorm=True: expected false on CPU") for m in msgs)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="SyncBatchNorm needs CUDA (and NCCL)")
def test_sync_batchnorm_option():
    r0, r1 = spawn(_step_and_compare, True)
    assert r0["sync_bn"] and r1["sync_bn"]
    assert torch.equal(r0["params"], r1["params"])


def _accumulation(accum: int) -> dict:
    ctx = distrib.init()
    torch.manual_seed(0)
    model = distrib.wrap(nn.Linear(4, 3))
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(8, 4, generator=g), torch.randint(0, 3, (8,), generator=g)
    mine = slice(4 * ctx.rank, 4 * ctx.rank + 4)
    xs, ys = x[mine].chunk(accum), y[mine].chunk(accum)
    calls = []  # one entry per gradient all-reduce DDP issues
    model.register_comm_hook(None, lambda state, bucket: (calls.append(1), _allreduce(bucket))[1])
    for i in range(accum):
        with distrib.accumulate(model, sync=i == accum - 1):
            (F.cross_entropy(model(xs[i]), ys[i]) / accum).backward()
    grad = torch.cat([p.grad.flatten() for p in model.parameters()])
    return {"grad": grad, "allreduces": len(calls)}


def _allreduce(bucket):  # the default DDP behaviour, counted by the hook above
    import torch.distributed as dist

    t = bucket.buffer() / dist.get_world_size()
    return dist.all_reduce(t, async_op=True).get_future().then(lambda f: f.value()[0])


def test_accumulation_syncs_once_and_equals_the_full_batch():
    full0, full1 = spawn(_accumulation, 1)
    acc0, acc1 = spawn(_accumulation, 2)
    assert full0["allreduces"] == 1 and acc0["allreduces"] == 1  # micro-step 1 skipped the sync
    assert torch.allclose(acc0["grad"], full0["grad"], atol=1e-6)
    assert torch.equal(acc0["grad"], acc1["grad"])


def test_bf16_autocast_and_clipping():
    model = nn.Linear(4, 4)
    with distrib.autocast(torch.device("cpu"), "bf16"):
        out = model(torch.randn(2, 4))
    assert out.dtype == torch.bfloat16
    with distrib.autocast(torch.device("cpu"), "fp32"):
        assert model(torch.randn(2, 4)).dtype == torch.float32
    (model(torch.randn(2, 4)) * 1000).sum().backward()
    distrib.clip_grad(model, 1.0)
    norm = torch.norm(torch.stack([p.grad.norm() for p in model.parameters()]))
    assert norm <= 1.0 + 1e-5


def _all_reduces_in_one_accumulated_step(micro: int) -> int:
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

    ctx = distrib.init()
    model = distrib.wrap(nn.Linear(8, 4))
    calls = []

    def counted(state, bucket):  # type: ignore[no-untyped-def]
        calls.append(bucket.index())
        return allreduce_hook(state, bucket)

    model.register_comm_hook(None, counted)
    torch.manual_seed(ctx.rank)
    for i in range(micro):
        with distrib.accumulate(model, sync=i == micro - 1):
            model(torch.randn(4, 8)).sum().backward()
    return len(calls)


def test_accumulation_reduces_gradients_once_per_optimizer_step_not_per_micro_step():
    # one bucket (a small model): 4 micro-steps, 1 all-reduce -- not 4
    assert spawn(_all_reduces_in_one_accumulated_step, 4) == [1, 1]
