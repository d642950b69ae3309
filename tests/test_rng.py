"""RNG state: every generator a step can touch goes into a checkpoint and comes back."""

from __future__ import annotations

import io
import random
from pathlib import Path

import numpy as np
import torch
from helpers import spawn

from distrib.rng import get_rng_state, seed_all, set_rng_state


def _draws() -> tuple[float, float, float]:
    return random.random(), float(np.random.rand()), float(torch.rand(()))


def test_python_numpy_and_torch_states_come_back_through_a_weights_only_load():
    seed_all(7)
    _draws()
    buf = io.BytesIO()
    torch.save(get_rng_state(), buf)  # as a checkpoint holds it
    expected = _draws()
    seed_all(123)  # anything else meanwhile
    _draws()
    buf.seek(0)
    set_rng_state(torch.load(buf, weights_only=True))
    assert _draws() == expected  # python's random too, not only torch's


def _resumed_at_another_world_size(path: str) -> tuple[float, float, float]:
    import distrib
    from distrib.models import MLP
    from distrib.trainer.state import restore

    ctx = distrib.init()
    model = MLP(4, 8, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    ckpt = torch.load(path, weights_only=True)
    restore(ckpt, Path(path), model=model, optimizer=optimizer, scheduler=None, ctx=ctx, seed=5)
    return _draws()


def test_a_resume_at_another_world_size_reseeds_each_rank_apart_and_reproducibly(tmp_path):
    from distrib.models import MLP

    model = MLP(4, 8, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    seed_all(0)
    ckpt = {
        "format_version": 1, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
        "scheduler": None, "epoch": 0, "step": 12, "consumed": 0, "world_size": 1,
        "rng": [get_rng_state()],  # one rank's: it cannot be given to two
    }  # fmt: skip
    path = tmp_path / "step-00000012.pt"
    torch.save(ckpt, path)
    ranks = spawn(_resumed_at_another_world_size, str(path), world_size=2)
    assert ranks[0] != ranks[1]  # each rank its own stream
    for rank, drawn in enumerate(ranks):  # and reproducible from (seed, step, rank)
        seed_all(5 + 1000003 * 12 + rank)
        assert drawn == _draws()
