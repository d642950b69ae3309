"""Built-in datasets that need no download: scikit-learn's bundled digits, and synthetic data.

Each is a map-style `Dataset` built from a ``split`` argument, the shape users' own dataset
classes take under ``data.train._target_`` / ``data.eval._target_``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import TensorDataset

SPLITS = ("train", "test")


def _split_indices(n: int, split: str, test_fraction: float, seed: int) -> np.ndarray:
    if split not in SPLITS:
        raise ValueError(f"split={split!r}: expected one of {SPLITS}")
    order = np.random.RandomState(seed).permutation(n)
    n_test = int(round(n * test_fraction))
    return order[n_test:] if split == "train" else order[:n_test]


def digits(split: str = "train", test_fraction: float = 0.2, seed: int = 0) -> TensorDataset:
    """1,797 8x8 handwritten digits shipped inside scikit-learn; images (1, 8, 8) in [0, 1]."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ImportError(
            "the digits dataset needs scikit-learn: pip install 'distrib[sklearn]'"
        ) from e
    bunch = load_digits()
    idx = _split_indices(len(bunch.target), split, test_fraction, seed)
    x = torch.tensor(bunch.images[idx] / 16.0, dtype=torch.float32).unsqueeze(1)
    y = torch.tensor(bunch.target[idx], dtype=torch.int64)
    return TensorDataset(x, y)


def synthetic(
    split: str = "train",
    size: int = 8192,
    features: int = 64,
    num_classes: int = 10,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> TensorDataset:
    """Gaussian inputs labelled by a fixed random linear teacher: learnable, any size, no files."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(size, features, generator=g)
    teacher = torch.randn(features, num_classes, generator=g)
    y = (x @ teacher).argmax(dim=1)
    idx = torch.from_numpy(_split_indices(size, split, test_fraction, seed))
    return TensorDataset(x[idx], y[idx])
