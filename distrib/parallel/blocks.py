"""The model's repeated blocks (transformer layers, residual stages): FSDP's unit of sharding
and activation checkpointing's unit of recomputation (``trainer.blocks``).

Named by class (``trainer.blocks=[GPT2Block]``), or found: the modules of the model's largest
``nn.ModuleList``, else the children of its largest ``nn.Sequential`` (by parameter count).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from distrib.errors import ConfigError


def find_blocks(model: nn.Module, names: list[str]) -> list[nn.Module]:
    """The modules to shard one by one: of the classes ``names``, or the documented default."""
    if names:
        blocks = [m for m in model.modules() if type(m).__name__ in names and m is not model]
        if not blocks:
            have = sorted({type(m).__name__ for m in model.modules()})
            raise ConfigError(
                "trainer.blocks",
                message=f"trainer.blocks={names}: no module of the model "
                f"({type(model).__name__}) has that class; its classes: {', '.join(have)}",
            )
        return blocks

    def size(m: nn.Module) -> int:
        return sum(p.numel() for p in m.parameters())

    for kind in (nn.ModuleList, nn.Sequential):
        lists = [m for m in model.modules() if type(m) is kind and len(m) > 0]
        if lists:
            biggest = max(lists, key=size)
            return [m for m in biggest if size(m) > 0]
    return []


def checkpoint_blocks(model: nn.Module, blocks: list[nn.Module]) -> list[nn.Module]:
    """Replace each of ``blocks`` inside ``model`` by an activation-checkpointed wrapper (its
    activations are dropped after the forward and recomputed in the backward: about one more
    forward pass for the memory of all blocks' activations but one); return the wrappers.

    torch's wrapper keeps a block's parameter names under ``_checkpoint_wrapped_module.``;
    torch's state-dict functions (which checkpoints use) strip that again, so a checkpoint's
    keys are the plain model's.
    """
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

    # non-reentrant: works with DDP, FSDP and compile
    return replace_blocks(model, blocks, checkpoint_wrapper)


def replace_blocks(model: nn.Module, blocks: list[nn.Module], wrap: Any) -> list[nn.Module]:
    """Put ``wrap(block)`` where each of ``blocks`` sits inside ``model``; return the new ones."""
    parents = {
        id(child): (parent, name)
        for parent in model.modules()
        for name, child in parent.named_children()
    }
    out = []
    for block in blocks:
        parent, name = parents[id(block)]
        new = wrap(block)
        setattr(parent, name, new)
        out.append(new)
    return out
