"""Numeric precision of the forward pass: fp32, or bf16 autocast on the worker's device."""

from __future__ import annotations

import contextlib

import torch

from distrib.errors import check

PRECISIONS = ("fp32", "bf16")


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast on the worker's device, or a no-op for fp32."""
    check(precision in PRECISIONS, "trainer.precision", precision, " or ".join(PRECISIONS))
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
