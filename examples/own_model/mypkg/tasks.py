# mypkg/tasks.py
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from distrib.tasks import TaskOutput


class DictClassification:
    """Cross-entropy on dict batches. It returns sums, not means, so that distrib can add them
    over batches and workers and report exact global metrics."""

    def __call__(self, *, model: nn.Module, batch: dict[str, torch.Tensor]) -> TaskOutput:
        logits = model(batch["features"]).float()
        losses = F.cross_entropy(logits, batch["label"], reduction="none")
        correct = (logits.detach().argmax(dim=1) == batch["label"]).sum()
        sums = {"loss": losses.detach().sum(), "correct": correct, "count": len(losses)}
        return TaskOutput(loss=losses.mean(), sums=sums)

    def metrics(self, sums: Mapping[str, float]) -> dict[str, float]:
        n = max(sums["count"], 1)
        return {"loss": sums["loss"] / n, "acc": sums["correct"] / n}  # eval_loss, eval_acc
