"""``torch.compile`` for training (``trainer.compile.*``), applied where each strategy wants it.

Under fsdp each block is compiled before ``fully_shard`` (`compile_blocks`, torchtitan's
order: the blocks' graphs hold no FSDP hooks, and the all-gathers stay between them); under
ddp the DDP-wrapped model, in place (`compile_in_place`), whose graph dynamo splits at the
gradient buckets (its DDP optimizer, torch's default) so the all-reduces still overlap the
backward; in a world of one the model, in place. No checkpoint holds ``_orig_mod.``: the
in-place compile keeps the module tree, and torch's state-dict functions strip the blocks'
wrappers; so a compiled run's checkpoint resumes in an eager run and the reverse, and export
sees the plain module. Evaluation and the FLOP count run eagerly (``torch.compiler.set_stance``).

Compiling happens in the first training step; the log says how long that step took. The
inductor cache is ``<run dir>/inductor_cache`` (``TORCHINDUCTOR_CACHE_DIR``, unless set), so a
restarted or requeued job finds the compiled kernels there instead of compiling again.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from distrib.errors import check
from distrib.parallel.blocks import replace_blocks

log = logging.getLogger("distrib.parallel.compile")

MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
"""torch.compile's modes (``torch._inductor.list_mode_options``)."""


@dataclass(kw_only=True)
class CompileConfig:
    """``torch.compile`` (``trainer.compile.*``); off by default."""

    enable: bool = False
    """Compile the model for training (the first step pays the compile; see the log)."""
    mode: str = "default"
    """torch.compile's mode: default, reduce-overhead (CUDA graphs), max-autotune or
    max-autotune-no-cudagraphs."""
    fullgraph: bool = False
    """torch.compile's fullgraph: fail on a graph break instead of running that part eagerly."""

    def __post_init__(self) -> None:
        check(self.mode in MODES, "trainer.compile.mode", self.mode, ", ".join(MODES))


def compile_in_place(module: nn.Module, config: CompileConfig) -> None:
    """``module.compile(...)`` with the config's mode and fullgraph (a no-op when disabled):
    what dynamo compiles is the user's forward, called from DDP's (a model whose forward is
    torch's own, a bare ``nn.Sequential``, is skipped by dynamo: the log says so)."""
    if not config.enable:
        return
    inner = getattr(module, "module", module)  # DDP's
    if type(inner).forward.__module__.startswith("torch."):
        log.warning(
            "trainer.compile: %s's forward is torch's own code, which dynamo does not compile; "
            "give the model a forward of its own (a subclass) to compile it",
            type(inner).__name__,
        )
    module.compile(mode=config.mode, fullgraph=config.fullgraph)


def compile_blocks(
    model: nn.Module, blocks: list[nn.Module], config: CompileConfig
) -> list[nn.Module]:
    """Replace each of ``blocks`` inside ``model`` by ``torch.compile(block)``; return them.

    A wrapper, not ``block.compile()``: dynamo skips the frames of torch's own classes, so an
    in-place compiled ``nn.TransformerEncoderLayer`` (or a checkpoint wrapper) would compile
    nothing. Its ``_orig_mod.`` is in the parameter names but not in a checkpoint: torch's
    state-dict functions, which sharded checkpoints use, strip it (as torchtitan relies on).
    """
    if not config.enable:
        return blocks
    return replace_blocks(
        model,
        blocks,
        lambda block: torch.compile(block, mode=config.mode, fullgraph=config.fullgraph),
    )


def use_cache_in(run_dir: Path | None) -> str | None:
    """Point inductor's cache at ``<run dir>/inductor_cache`` unless TORCHINDUCTOR_CACHE_DIR was
    set by the user; return the directory in use (None: inductor's default, in /tmp)."""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    # importing torch._inductor writes its default into the variable: that is not the user's
    given = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if run_dir is not None and given in (None, os.path.abspath(default_cache_dir())):
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(Path(run_dir).resolve() / "inductor_cache")
    return os.environ.get("TORCHINDUCTOR_CACHE_DIR")


def eager() -> contextlib.AbstractContextManager:
    """Run compiled modules eagerly inside (evaluation, the FLOP count)."""
    return torch.compiler.set_stance("force_eager")
