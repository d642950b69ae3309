from __future__ import annotations

import pytest
import torch
from helpers import spawn
from torch.utils.data import TensorDataset

import distrib
from distrib.data import EvalSampler, ShardedSampler, per_rank_batch


def _indices(n: int = 103, batch: int = 8, drop_last: bool = True) -> dict:
    ctx = distrib.init()
    ds = TensorDataset(torch.arange(n))
    dl = distrib.loader(ds, batch_size=batch, seed=7, drop_last=drop_last)
    epochs = []
    for epoch in range(2):
        dl.sampler.set_epoch(epoch)
        epochs.append([x.tolist() for (x,) in dl])
    ev = [x.tolist() for (x,) in distrib.eval_loader(ds, batch_size=5)]
    return {"rank": ctx.rank, "epochs": epochs, "eval": ev}


def test_shards_are_disjoint_and_cover_the_dataset():
    r0, r1 = spawn(_indices, 103, 8, True)
    for epoch in range(2):
        a = [i for b in r0["epochs"][epoch] for i in b]
        b = [i for b in r1["epochs"][epoch] for i in b]
        assert not set(a) & set(b)
        assert len(a) == len(b) == 48  # 103 // 8 = 12 global batches of 8 -> 96 samples
        assert len(set(a) | set(b)) == 96
        assert all(len(batch) == 4 for batch in r0["epochs"][epoch])  # global 8 -> 4 per rank
    assert r0["epochs"][0] != r0["epochs"][1]  # set_epoch reshuffles
    evals = [i for r in (r0, r1) for b in r["eval"] for i in b]
    assert sorted(evals) == list(range(103))  # every eval sample exactly once, no padding


def test_without_drop_last_the_shards_cover_everything():
    r0, r1 = spawn(_indices, 103, 8, False)
    seen = {i for r in (r0, r1) for b in r["epochs"][0] for i in b}
    assert seen == set(range(103))


def test_global_batches_do_not_depend_on_world_size():
    ds = list(range(50))
    one = ShardedSampler(ds, num_replicas=1, rank=0, global_batch=10, seed=3)
    two = [ShardedSampler(ds, num_replicas=2, rank=r, global_batch=10, seed=3) for r in range(2)]
    flat = list(one)
    shards = [list(s) for s in two]
    for k in range(5):  # global step k: positions [10k, 10k+10) on any world size
        assert sorted(flat[10 * k : 10 * k + 10]) == sorted(
            shards[0][5 * k : 5 * k + 5] + shards[1][5 * k : 5 * k + 5]
        )


def test_set_position_continues_with_the_next_sample():
    ds = list(range(40))
    full = list(ShardedSampler(ds, num_replicas=1, rank=0, global_batch=4, seed=1))
    s = ShardedSampler(ds, num_replicas=2, rank=1, global_batch=4, seed=1)
    s.set_position(0, consumed=12)
    assert list(s) == full[12:][1::2] and len(s) == len(full[12:][1::2])
    s.set_epoch(1)
    assert s.start == 0


def test_per_rank_batch_error_names_the_key():
    assert per_rank_batch(64, 2, 2) == 16
    with pytest.raises(
        distrib.ConfigError, match=r"trainer.global_batch_size=63: expected a positive multiple of"
    ):
        per_rank_batch(63, 2)


def test_eval_sampler_uneven():
    parts = [list(EvalSampler(list(range(7)), num_replicas=3, rank=r)) for r in range(3)]
    assert parts == [[0, 3, 6], [1, 4], [2, 5]]
    assert [len(EvalSampler(list(range(7)), num_replicas=3, rank=r)) for r in range(3)] == [3, 2, 2]


class Noisy(torch.utils.data.Dataset):
    """Each item is a draw from python's RNG: shows how each loader worker was seeded."""

    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int) -> float:
        import random

        return random.random()


def _worker_seeds() -> list:
    distrib.init()
    dl = distrib.loader(Noisy(), batch_size=4, num_workers=2, seed=5, shuffle=False)
    return [b.tolist() for b in dl]


def test_dataloader_workers_are_seeded_by_seed_rank_and_worker():
    first = spawn(_worker_seeds)
    again = spawn(_worker_seeds)
    assert first == again  # reproducible
    flat = [v for r in first for b in r for v in b]
    assert len(set(flat)) == len(flat)  # but no two ranks/workers share a stream


def _both_loaders(world: int, rank: int):  # type: ignore[no-untyped-def]
    from torch.utils.data import default_collate

    from distrib.data import TensorBatches, loader
    from distrib.distributed.process_group import Context
    from distrib.env import WorkerEnv

    ctx = Context(
        env=WorkerEnv(rank=rank, world_size=world), device=torch.device("cpu"), backend="gloo"
    )
    data = TensorDataset(torch.randn(203, 5), torch.arange(203))
    fast = loader(data, batch_size=24, ctx=ctx, seed=7, drop_last=False)
    slow = loader(data, batch_size=24, ctx=ctx, seed=7, drop_last=False, collate_fn=default_collate)
    assert isinstance(fast, TensorBatches) and not isinstance(slow, TensorBatches)
    return fast, slow


@pytest.mark.parametrize("world, rank", [(1, 0), (2, 1), (3, 2)])
def test_tensor_batches_are_the_dataloaders_batches_in_every_epoch_and_after_a_resume(
    world: int, rank: int
):
    fast, slow = _both_loaders(world, rank)
    for epoch, consumed in [(0, 0), (1, 0), (2, 48 * world)]:
        fast.sampler.set_position(epoch, consumed)
        slow.sampler.set_position(epoch, consumed)
        a, b = list(fast), list(slow)
        assert len(a) == len(b) == len(fast) == len(slow)
        for (xa, ya), (xb, yb) in zip(a, b, strict=True):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_eval_tensor_batches_cover_each_sample_once():
    from distrib.data import TensorBatches, eval_loader
    from distrib.distributed.process_group import Context
    from distrib.env import WorkerEnv

    data = TensorDataset(torch.arange(101))
    seen = []
    for rank in range(3):
        ctx = Context(
            env=WorkerEnv(rank=rank, world_size=3), device=torch.device("cpu"), backend="gloo"
        )
        dl = eval_loader(data, batch_size=10, ctx=ctx)
        assert isinstance(dl, TensorBatches)
        seen += [int(v) for (x,) in dl for v in x]
    assert sorted(seen) == list(range(101))
