"""Sharded data: every rank reads its part of each global batch, in an order that does not
depend on the world size (`distrib.data.samplers`), through a loader (`distrib.data.loaders`).
Streamed (iterable) data is split the same way by position (`distrib.data.order`) and read
by `distrib.data.streaming` from a sharded source (`distrib.data.sources`).

The built-in datasets themselves are `distrib.datasets`.
"""

from distrib.data.loaders import TensorBatches, eval_loader, loader
from distrib.data.samplers import EvalSampler, ShardedSampler, per_rank_batch
from distrib.data.sources import ShardedSource
from distrib.data.streaming import StreamLoader

__all__ = [
    "EvalSampler",
    "ShardedSampler",
    "ShardedSource",
    "StreamLoader",
    "TensorBatches",
    "eval_loader",
    "loader",
    "per_rank_batch",
]
