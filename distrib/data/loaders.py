"""Loaders over the sharded samplers: a DataLoader per rank, or whole batches by index for
in-memory tensors (faster than any DataLoader), for training (`loader`) and evaluation
(`eval_loader`: every sample exactly once over all ranks). An ``IterableDataset`` gets a
`StreamLoader` (`distrib.data.streaming`) with the same interface.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler, TensorDataset

from distrib.data.samplers import EvalSampler, ShardedSampler, per_rank_batch
from distrib.data.streaming import StreamLoader, stream_eval_loader, stream_loader
from distrib.distributed.process_group import Context, current
from distrib.rng import seed_loader_worker


class TensorBatches:
    """Batches of an in-memory tensor dataset, served by index: one gather per tensor per batch.

    A DataLoader fetches and collates sample by sample (a Python call and a ``torch.stack``
    per sample): at a few microseconds per sample that caps a fast GPU on small inputs. Here
    the sampler's indices for a batch become one ``tensor[idx]`` per tensor. Same sampler,
    same batches, same order, hence the same training and exact resume as the DataLoader.
    With ``device`` the tensors live there (moved once) and batches are gathered in place.
    """

    def __init__(
        self,
        tensors: tuple[torch.Tensor, ...],
        sampler: Sampler[int],
        batch_size: int,
        *,
        device: torch.device | None = None,
        pin_memory: bool = False,
    ) -> None:
        self.tensors = tuple(t.to(device) for t in tensors) if device is not None else tensors
        self.sampler, self.batch_size = sampler, batch_size
        self.pin_memory = pin_memory and device is None

    def __len__(self) -> int:
        return -(-len(self.sampler) // self.batch_size)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        order = torch.tensor(list(iter(self.sampler)), dtype=torch.int64)
        if order.numel() == 0:
            return
        order = order.to(self.tensors[0].device)
        for idx in order.split(self.batch_size):
            batch = tuple(t[idx] for t in self.tensors)
            yield tuple(b.pin_memory() for b in batch) if self.pin_memory else batch


def _resident(tensors: tuple[torch.Tensor, ...], ctx: Context, on_device: bool | None) -> bool:
    """Whether to keep the tensors on the GPU: asked for, or (None) small enough to."""
    if ctx.device.type != "cuda" or on_device is False:
        return False
    if on_device:
        return True
    size = sum(t.numel() * t.element_size() for t in tensors)
    return size <= torch.cuda.get_device_properties(ctx.device).total_memory // 8


def _tensors_of(dataset: Dataset, num_workers: int, kwargs: dict[str, Any]) -> Any:
    """The dataset's tensors when batches can be gathered by index, else None: a
    ``TensorDataset`` (the built-in datasets are), no worker processes, no custom collate."""
    tensors = getattr(dataset, "tensors", None)
    if not isinstance(dataset, TensorDataset) or num_workers or kwargs:
        return None
    return tensors


def loader(
    dataset: Dataset,
    *,
    batch_size: int,
    ctx: Context | None = None,
    shuffle: bool = True,
    seed: int = 0,
    drop_last: bool = True,
    accum: int = 1,
    num_workers: int = 0,
    on_device: bool | None = None,
    shuffle_buffer: int = 4096,
    **kwargs: Any,
) -> DataLoader | TensorBatches | StreamLoader:
    """A training loader over this rank's shard; ``batch_size`` is the *global* batch.

    Call ``loader.sampler.set_epoch(epoch)`` every epoch (the training loop does). Example::

        train = distrib.loader(dataset, batch_size=256, seed=0)   # 128 per rank on 2 ranks

    A ``TensorDataset`` without workers is served by `TensorBatches` (whole batches by index,
    the same batches as a DataLoader; on a GPU the data stays there when ``on_device``, or by
    default when it takes at most 1/8 of the GPU's memory); anything else
    gets a DataLoader (``num_workers``, ``pin_memory`` on CUDA, any DataLoader keyword). An
    ``IterableDataset`` gets a `StreamLoader`: split over ranks and loader workers by position,
    shuffled by shard order and windows of ``shuffle_buffer`` samples (docs/guide/streaming.md).
    """
    ctx = ctx or current()
    micro = per_rank_batch(batch_size, ctx.world_size, accum)
    if isinstance(dataset, IterableDataset):
        return stream_loader(
            dataset,
            batch_size=batch_size,
            ctx=ctx,
            shuffle=shuffle,
            seed=seed,
            drop_last=drop_last,
            accum=accum,
            num_workers=num_workers,
            shuffle_buffer=shuffle_buffer,
            **kwargs,
        )
    sampler = ShardedSampler(
        dataset,  # type: ignore[arg-type]
        num_replicas=ctx.world_size,
        rank=ctx.rank,
        global_batch=batch_size,
        shuffle=shuffle,
        seed=seed,
        drop_last=drop_last,
    )
    tensors = _tensors_of(dataset, num_workers, kwargs)
    if tensors is not None:
        device = ctx.device if _resident(tensors, ctx, on_device) else None
        return TensorBatches(
            tensors, sampler, micro, device=device, pin_memory=ctx.device.type == "cuda"
        )
    g = torch.Generator()
    g.manual_seed(seed * 1000003 + ctx.rank)
    return DataLoader(
        dataset,
        batch_size=micro,
        sampler=sampler,
        num_workers=num_workers,
        worker_init_fn=seed_loader_worker,
        generator=g,
        pin_memory=ctx.device.type == "cuda",
        drop_last=False,
        **kwargs,
    )


def eval_loader(
    dataset: Dataset,
    *,
    batch_size: int,
    ctx: Context | None = None,
    num_workers: int = 0,
    on_device: bool | None = None,
) -> DataLoader | TensorBatches | StreamLoader:
    """An evaluation loader: every sample on exactly one rank; ``batch_size`` is per rank."""
    ctx = ctx or current()
    if isinstance(dataset, IterableDataset):
        return stream_eval_loader(dataset, batch_size=batch_size, ctx=ctx, num_workers=num_workers)
    sampler = EvalSampler(dataset, num_replicas=ctx.world_size, rank=ctx.rank)  # type: ignore[arg-type]
    tensors = _tensors_of(dataset, num_workers, {})
    if tensors is not None:
        device = ctx.device if _resident(tensors, ctx, on_device) else None
        cuda = ctx.device.type == "cuda"
        return TensorBatches(tensors, sampler, batch_size, device=device, pin_memory=cuda)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        pin_memory=ctx.device.type == "cuda",
    )
