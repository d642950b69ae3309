"""Numeric precision of the forward pass: fp32, bf16 autocast, or fp16 autocast with a
gradient scaler (`grad_scaler`) on the worker's device.

fp16 has 5 exponent bits: small gradients underflow to zero. The scaler multiplies the loss
before the backward and divides the gradients again before the step; a step whose gradients
overflowed (inf/NaN) is skipped and the scale halved, and after 2000 clean steps it doubles.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Any

import torch

from distrib.errors import ConfigError, check

PRECISIONS = ("fp32", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 or fp16 autocast on the worker's device, or a no-op for fp32."""
    check(precision in PRECISIONS, "trainer.precision", precision, " or ".join(PRECISIONS))
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=_DTYPES[precision])


def _autocasts(device_type: str, dtype: torch.dtype) -> bool:
    """Whether this torch autocasts to ``dtype`` on ``device_type`` (older torch disables a
    CPU fp16 autocast with a warning instead of failing)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            with torch.autocast(device_type=device_type, dtype=dtype):
                return torch.is_autocast_enabled(device_type)
        except (RuntimeError, TypeError):
            return False


def check_supported(device: torch.device, precision: str) -> None:
    """Refuse, in one line naming the key, a precision this torch cannot autocast to here."""
    if precision == "fp32" or _autocasts(device.type, _DTYPES[precision]):
        return
    raise ConfigError(
        "trainer.precision",
        message=f"trainer.precision={precision}: torch {torch.__version__} cannot autocast "
        f"in {precision} on {device.type} (use bf16 or fp32 there, or a GPU)",
    )


def grad_scaler(device: torch.device, precision: str, *, sharded: bool) -> Any:
    """The gradient scaler of an fp16 run (FSDP's sharded variant, which agrees on overflow
    over every rank's shards); None for fp32 and bf16, which need none."""
    if precision != "fp16":
        return None
    if sharded:
        from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

        return ShardedGradScaler(device=device.type)
    return torch.amp.GradScaler(device.type)


def found_inf(scaler: Any, optimizer: torch.optim.Optimizer) -> torch.Tensor:
    """1.0 where the gradients ``scaler.unscale_`` just checked overflowed, else 0.0: a 0-d
    tensor left on the device (read back with the log row, never in the step)."""
    # torch keeps the flags per device in the optimizer's entry (GradScaler._found_inf_per_device)
    flags = list(scaler._found_inf_per_device(optimizer).values())
    return (torch.stack([f.to(flags[0].device) for f in flags]).sum() > 0).to(torch.float32)
