"""Built-in datasets that need no download: scikit-learn's bundled digits, synthetic data,
and generated text for the character-level language model.

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


def regression(
    split: str = "train",
    size: int = 4096,
    features: int = 16,
    outputs: int = 1,
    noise: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> TensorDataset:
    """Targets of a fixed random smooth teacher (tanh of a linear map) plus noise, for
    ``task=regression``."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(size, features, generator=g)
    w = torch.randn(features, outputs, generator=g) / features**0.5
    y = torch.tanh(x @ w) * 2 + noise * torch.randn(size, outputs, generator=g)
    idx = torch.from_numpy(_split_indices(size, split, test_fraction, seed))
    return TensorDataset(x[idx], y[idx])


CHARS = " .,abcdefghijklmnopqrstuvwxyz"
"""The alphabet of `chars`: token id = index in this string."""

_SUBJECTS = [
    "the cat",
    "a dog",
    "my friend",
    "the old man",
    "a small bird",
    "the teacher",
    "her brother",
    "the farmer",
    "a young girl",
    "the captain",
    "our neighbour",
    "a fox",
]
_VERBS = [
    "sees",
    "likes",
    "finds",
    "follows",
    "paints",
    "reads",
    "carries",
    "watches",
    "remembers",
    "builds",
    "forgets",
    "feeds",
]
_OBJECTS = [
    "the red house",
    "a long letter",
    "the river",
    "some bread",
    "the green hills",
    "a wooden boat",
    "the morning train",
    "an apple",
    "the quiet garden",
    "a new song",
    "the cold sea",
    "a lost key",
]
_ENDINGS = ["", " every day", " in the rain", " at night", " with great care", " again",
            ", and smiles", " near the market"]  # fmt: skip


def text(chars: int, seed: int = 0) -> str:
    """``chars`` characters of simple generated English: sentences from a small grammar.

    Real enough that a language model has structure to learn (spelling, word order,
    punctuation), small enough to learn in a minute on a CPU, and made here: nothing to download.
    """
    rng = np.random.RandomState(seed)
    out: list[str] = []
    n = 0
    while n < chars:
        parts = (_SUBJECTS, _VERBS, _OBJECTS, _ENDINGS)
        words = [p[rng.randint(len(p))] for p in parts]
        sentence = f"{words[0]} {words[1]} {words[2]}{words[3]}. "
        out.append(sentence)
        n += len(sentence)
    return "".join(out)[:chars]


def chars(
    split: str = "train",
    context: int = 64,
    size: int = 4096,
    test_fraction: float = 0.1,
    seed: int = 0,
) -> TensorDataset:
    """``size`` windows of ``context + 1`` character ids of generated text (`text`): for
    ``task=lm``, each window is the model's input (the first ``context``) and its targets
    (shifted by one). Train and test come from different stretches of text."""
    n_test = int(round(size * test_fraction))
    n = n_test if split == "test" else size - n_test
    if split not in SPLITS:
        raise ValueError(f"split={split!r}: expected one of {SPLITS}")
    stream = text(n * (context + 1), seed=seed + (1 if split == "test" else 0))
    lookup = {c: i for i, c in enumerate(CHARS)}
    ids = torch.tensor([lookup[c] for c in stream], dtype=torch.int64)
    return TensorDataset(ids.view(n, context + 1))
