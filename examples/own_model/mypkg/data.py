# mypkg/data.py
import torch
from torch.utils.data import Dataset


class Dicts(Dataset):
    """Samples as dicts: a task reads them by name, not by position in a tuple."""

    def __init__(self, features: torch.Tensor, label: torch.Tensor) -> None:
        self.features, self.label = features, label

    def __len__(self) -> int:
        return len(self.label)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"features": self.features[i], "label": self.label[i]}


def blobs(split: str = "train", size: int = 2048, features: int = 16) -> Dicts:
    """Points around 10 Gaussian centres. Seeded, so every worker builds the same data: the
    centres are shared by both splits, the points differ per split."""
    centres = torch.randn(10, features, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed({"train": 1, "test": 2}[split])
    label = torch.randint(0, 10, (size,), generator=g)
    return Dicts(centres[label] + torch.randn(size, features, generator=g), label)
