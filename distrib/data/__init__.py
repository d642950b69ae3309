"""Sharded data: every rank reads its part of each global batch, in an order that does not
depend on the world size (`distrib.data.samplers`), through a loader (`distrib.data.loaders`).

The built-in datasets themselves are `distrib.datasets`.
"""

from distrib.data.loaders import TensorBatches, eval_loader, loader
from distrib.data.samplers import EvalSampler, ShardedSampler, per_rank_batch

__all__ = [
    "EvalSampler",
    "ShardedSampler",
    "TensorBatches",
    "eval_loader",
    "loader",
    "per_rank_batch",
]
