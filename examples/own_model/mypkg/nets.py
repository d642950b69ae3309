# mypkg/nets.py
import torch
from torch import nn


class TinyNet(nn.Module):
    """One hidden layer. It flattens its input, so 1x8x8 digits work as 64 features."""

    def __init__(self, in_features: int = 16, hidden: int = 64, num_classes: int = 10) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(), nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
