"""What the trainer optimizes: a task turns a batch into a loss and metric sums.

The loop knows nothing about labels, logits or losses; it calls the task configured under
``task`` (``task._target_``) once per micro-batch::

    out = task(model=model, batch=batch)   # batch already on the device, any nesting
    out.loss.backward()                    # the mean the optimizer follows
    # out.sums: additive tensors (sum of losses, correct count, sample count...)

Evaluation adds every batch's ``sums`` over all samples of all ranks with one all_reduce and
hands the totals to ``task.metrics(totals)``: exact global metrics, whatever the world size.
Sums, not per-rank means, are what makes 2 workers report what 1 worker does.

Your own task is any object with those two methods, for example::

    class Huber:
        def __call__(self, *, model, batch):
            x, y = batch
            err = F.huber_loss(model(x).float(), y, reduction="none").sum(dim=1)
            return TaskOutput(loss=err.mean(), sums={"loss": err.sum(), "count": len(y)})

        def metrics(self, sums):
            return {"loss": sums["loss"] / max(sums["count"], 1)}

``metrics`` names come out prefixed with ``eval_`` (``eval_loss``), the names ``best_metric``
refers to. Every task reports ``loss``.

A training step reads ``loss`` only, so the built-in tasks skip their sums when the model is
in training mode: on a small model each skipped op is a few microseconds of a step that may
take well under a millisecond.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from distrib.errors import ConfigError


@dataclass
class TaskOutput:
    """One micro-batch's result.

    ``loss`` is the differentiable mean the optimizer follows; ``sums`` are additive statistics
    (tensors or numbers) that sum exactly over batches and ranks, e.g. ``{"loss": sum of
    per-sample losses, "count": samples}``.
    """

    loss: torch.Tensor
    sums: dict[str, torch.Tensor | float] = field(default_factory=dict)


class Task(Protocol):
    """The seam between the trainer and a model: see the module docstring."""

    def __call__(self, *, model: nn.Module, batch: Any) -> TaskOutput: ...

    def metrics(self, sums: Mapping[str, float]) -> dict[str, float]: ...


def to_device(batch: Any, device: torch.device) -> Any:
    """Tensors anywhere in tuples, lists, dicts (and namedtuples) moved to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return type(batch)({k: to_device(v, device) for k, v in batch.items()})  # type: ignore[call-arg]
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # namedtuple
        return type(batch)(*(to_device(v, device) for v in batch))
    if isinstance(batch, list | tuple):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def batch_size(batch: Any) -> int:
    """Samples in a batch: the leading size of its first tensor, however nested."""
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.dim() else 1
    values = batch.values() if isinstance(batch, Mapping) else batch
    if isinstance(values, list | tuple) or isinstance(batch, Mapping):
        for v in values:
            n = batch_size(v)
            if n:
                return n
    return 0


def pair(batch: Any, task: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The (input, target) pair a supervised task expects, or one line saying what came."""
    if isinstance(batch, list | tuple) and len(batch) == 2:
        return batch[0], batch[1]
    got = (
        f"a dict with keys {sorted(batch)}"
        if isinstance(batch, Mapping)
        else f"a {type(batch).__name__}"
        + (f" of {len(batch)}" if isinstance(batch, list | tuple) else "")
    )
    raise ConfigError(
        "data.train",
        message=f"data.train: task={task} needs each sample to be an (input, target) pair; got "
        f"{got} (return a tuple from __getitem__, or pick a task for your batches: "
        "task=model_loss calls model(**batch) for dicts)",
    )


def _count(sums: Mapping[str, float]) -> float:
    return max(float(sums.get("count", 0.0)), 1.0)


class Classification:
    """Cross-entropy on (input, class index) pairs; reports loss and accuracy."""

    metric_names = ("loss", "acc", "correct", "total")
    """What `metrics` reports (``eval_<name>``): checked against best_metric before training."""

    def __call__(self, *, model: nn.Module, batch: Any) -> TaskOutput:
        x, y = pair(batch, "classification")
        logits = model(x).float()
        if model.training:
            return TaskOutput(loss=F.cross_entropy(logits, y))
        losses = F.cross_entropy(logits, y, reduction="none")
        return TaskOutput(
            loss=losses.mean(),
            sums={
                "loss": losses.detach().double().sum(),  # float64: exact to the sample's loss
                "correct": (logits.detach().argmax(dim=1) == y).sum(),
                "count": y.numel(),
            },
        )

    def metrics(self, sums: Mapping[str, float]) -> dict[str, float]:
        n = _count(sums)
        return {
            "loss": sums["loss"] / n,
            "acc": sums["correct"] / n,
            "correct": int(sums["correct"]),
            "total": int(sums["count"]),
        }


class Regression:
    """Mean squared error on (input, target) pairs; reports loss (MSE) and RMSE.

    The loss averages over every target element, so a (batch, k) target weighs each of its
    k outputs alike; a (batch,) target is compared with a (batch, 1) output as one column.
    """

    metric_names = ("loss", "rmse")
    """What `metrics` reports (``eval_<name>``): checked against best_metric before training."""

    def __call__(self, *, model: nn.Module, batch: Any) -> TaskOutput:
        x, y = pair(batch, "regression")
        pred = model(x).float()
        y = y.float()
        if pred.dim() == y.dim() + 1 and pred.shape[-1] == 1:
            pred = pred.squeeze(-1)
        sq = (pred - y) ** 2
        if model.training:
            return TaskOutput(loss=sq.mean())
        return TaskOutput(
            loss=sq.mean(), sums={"loss": sq.detach().double().sum(), "count": sq.numel()}
        )

    def metrics(self, sums: Mapping[str, float]) -> dict[str, float]:
        mse = sums["loss"] / _count(sums)
        return {"loss": mse, "rmse": math.sqrt(mse)}


class NextToken:
    """Next-token cross-entropy for language models: a batch of token ids ``(B, T+1)``.

    The model sees ``tokens[:, :-1]`` and returns logits ``(B, T, vocab)``; every position
    predicts the token after it. Reports loss in nats per token and perplexity.
    """

    metric_names = ("loss", "perplexity")
    """What `metrics` reports (``eval_<name>``): checked against best_metric before training."""

    def __call__(self, *, model: nn.Module, batch: Any) -> TaskOutput:
        tokens = batch[0] if isinstance(batch, list | tuple) else batch
        if not isinstance(tokens, torch.Tensor) or tokens.dim() != 2:
            raise ConfigError(
                "data.train",
                message="data.train: task=lm needs each sample to be a 1-D tensor of token ids "
                f"(T+1 long); got {type(tokens).__name__}",
            )
        logits = model(tokens[:, :-1]).float()
        target = tokens[:, 1:]
        if model.training:
            return TaskOutput(loss=F.cross_entropy(logits.flatten(0, 1), target.flatten()))
        losses = F.cross_entropy(logits.flatten(0, 1), target.flatten(), reduction="none")
        return TaskOutput(
            loss=losses.mean(),
            sums={"loss": losses.detach().double().sum(), "count": target.numel()},
        )

    def metrics(self, sums: Mapping[str, float]) -> dict[str, float]:
        loss = sums["loss"] / _count(sums)
        return {"loss": loss, "perplexity": math.exp(min(loss, 80.0))}


class ModelLoss:
    """For models that compute their own loss: ``model(**batch)`` for a dict batch,
    ``model(*batch)`` for a tuple, ``model(batch)`` otherwise.

    The model returns its loss as a tensor, or an object or dict with a ``loss`` entry (the
    Hugging Face convention). The loss is taken as the batch's mean, so evaluation weighs each
    batch by its sample count.
    """

    metric_names = ("loss",)
    """What `metrics` reports (``eval_<name>``): checked against best_metric before training."""

    def __init__(self, key: str = "loss") -> None:
        self.key = key

    def __call__(self, *, model: nn.Module, batch: Any) -> TaskOutput:
        if isinstance(batch, Mapping):
            out = model(**batch)
        elif isinstance(batch, list | tuple):
            out = model(*batch)
        else:
            out = model(batch)
        loss = out if isinstance(out, torch.Tensor) else _get(out, self.key)
        loss = loss.float()
        if loss.dim() != 0:
            raise ConfigError(
                "task",
                message=f"task=model_loss: the model returned a loss of shape {tuple(loss.shape)}; "
                "it must return a scalar (the batch's mean loss)",
            )
        if model.training:
            return TaskOutput(loss=loss)
        n = batch_size(batch)
        return TaskOutput(loss=loss, sums={"loss": loss.detach().double() * n, "count": n})

    def metrics(self, sums: Mapping[str, float]) -> dict[str, float]:
        return {"loss": sums["loss"] / _count(sums)}


def _get(out: Any, key: str) -> torch.Tensor:
    value = out.get(key) if isinstance(out, Mapping) else getattr(out, key, None)
    if not isinstance(value, torch.Tensor):
        raise ConfigError(
            "task",
            message=f"task=model_loss: the model returned a {type(out).__name__} without a "
            f"tensor {key!r}; return the loss, or a dict/object with {key!r}",
        )
    return value
