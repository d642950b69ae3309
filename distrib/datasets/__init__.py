"""Built-in datasets: in memory and made here (`distrib.datasets.builtin`: digits, synthetic,
regression, chars), and readers of shard files on disk that the streaming loader splits over
ranks and loader workers (`TokenShards`: memory-mapped token ids; `HFShards`: parquet / JSON
Lines through Hugging Face ``datasets``).

Each is built from its config keys, the shape users' own dataset classes take under
``data.train._target_`` / ``data.eval._target_``.
"""

from distrib.datasets.builtin import CHARS, SPLITS, chars, digits, regression, synthetic, text
from distrib.datasets.hf import HFShards
from distrib.datasets.tokens import TokenShards

__all__ = [
    "CHARS",
    "SPLITS",
    "HFShards",
    "TokenShards",
    "chars",
    "digits",
    "regression",
    "synthetic",
    "text",
]
