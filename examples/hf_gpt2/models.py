"""``_target_: hf_gpt2.models.gpt2``: a transformers GPT-2 language model built from a config,
nothing downloaded, trained by ``task=model_loss`` on distrib's built-in chars data.

    PYTHONPATH=examples python -m distrib.train --config-dir examples/hf_gpt2/conf \\
        model=gpt2 data=chars task=model_loss trainer.strategy=fsdp trainer.blocks=[GPT2Block] \\
        launcher.nproc=2

FSDP shards each ``GPT2Block`` (``trainer.blocks``); the embeddings and the head go with the
root. The model computes its own loss (Hugging Face's: labels are the input ids, shifted
inside), so the task is ``model_loss``.
"""

from __future__ import annotations

import torch
from torch import nn

from distrib.datasets import CHARS


class CharGPT2(nn.Module):
    """GPT-2 over a batch of character windows ``(B, T+1)``: returns Hugging Face's output,
    whose ``loss`` is next-token cross-entropy over every position."""

    def __init__(self, lm: nn.Module) -> None:
        super().__init__()
        self.lm = lm

    def forward(self, tokens: torch.Tensor):  # type: ignore[no-untyped-def]
        return self.lm(input_ids=tokens, labels=tokens)


def gpt2(n_layer: int = 2, n_embd: int = 64, n_head: int = 2, n_positions: int = 128) -> nn.Module:
    """A small GPT-2 (``transformers.GPT2LMHeadModel``) for the built-in chars vocabulary."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=len(CHARS),
        n_positions=n_positions,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
        # no dropout: 1 worker and N workers draw different random numbers for it
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    return CharGPT2(GPT2LMHeadModel(config))
