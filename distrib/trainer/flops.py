"""FLOPs of a training step and the share of the hardware's peak they reach (MFU).

The loop counts once, on the first micro-batch of the run: one forward and backward of the
real (eager) model on the real batch under ``torch.utils.flop_counter.FlopCounterMode``,
with the RNG forked and the buffers (BatchNorm statistics) put back, so training goes on
exactly as without it. A model may give its own figure instead: an attribute or property
``flops_per_sample`` (forward + backward of one sample). Each log row then carries
``tflops_per_s`` (per rank: FLOPs done over the step time, summed like ``samples_per_s``) and
``mfu`` = achieved / peak, the peak from ``trainer.peak_tflops`` or from `PEAKS` by the GPU's
name; on a CPU, or a GPU not in the table, no ``mfu``.

Example::

    flops = count_flops_per_sample(model, lambda: task(model=model, batch=batch).loss, 64)
    peak = peak_tflops(torch.cuda.get_device_name(), "bf16")      # 989.0 on an H100 SXM
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import nn


class Peak(NamedTuple):
    """Dense (no sparsity) peak TFLOP/s of one GPU model."""

    bf16: float
    """bf16 and fp16 tensor-core peak (the same rate on these GPUs)."""
    fp32: float
    """fp32 without TF32 (torch's default for matmuls: ``allow_tf32`` is off)."""
    source: str


# Matched by substring of torch.cuda.get_device_name(), the longest key first (H100 PCIe
# before H100). Figures: NVIDIA's datasheets, dense (half the "with sparsity" figures).
PEAKS: dict[str, Peak] = {
    "A100": Peak(312.0, 19.5, "NVIDIA A100 Tensor Core GPU datasheet (SXM and PCIe)"),
    "H100 PCIe": Peak(756.0, 51.0, "NVIDIA H100 Tensor Core GPU datasheet, H100 PCIe"),
    "H100 NVL": Peak(835.0, 60.0, "NVIDIA H100 Tensor Core GPU datasheet, H100 NVL"),
    "H100": Peak(989.0, 67.0, "NVIDIA H100 Tensor Core GPU datasheet, H100 SXM"),
    "H200 NVL": Peak(835.0, 60.0, "NVIDIA H200 Tensor Core GPU datasheet, H200 NVL"),
    "H200": Peak(989.0, 67.0, "NVIDIA H200 Tensor Core GPU datasheet, H200 SXM"),
    "L40S": Peak(362.0, 91.6, "NVIDIA L40S GPU datasheet"),
    "L4": Peak(121.0, 30.3, "NVIDIA L4 Tensor Core GPU datasheet"),
}


def device_name(device: torch.device) -> str:
    """What `peak_tflops` looks up: the CUDA device's name, or the device type (``cpu``)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return device.type


def peak_tflops(name: str, precision: str) -> float | None:
    """The dense peak of the GPU called ``name`` at ``precision`` (fp32, bf16 or fp16);
    None for a device the table does not hold (every CPU)."""
    for key in sorted(PEAKS, key=len, reverse=True):
        if key in name:
            peak = PEAKS[key]
            return peak.fp32 if precision == "fp32" else peak.bf16
    return None


def count_flops_per_sample(
    model: nn.Module, step: Callable[[], torch.Tensor], samples: int
) -> float:
    """FLOPs of one sample's forward and backward: ``model.flops_per_sample`` where the model
    gives it, else ``step()`` (the forward, returning the loss) and its backward counted.

    Side effects are undone: the RNG (CPU and CUDA) is forked, the buffers are restored and
    the gradients it made are dropped, so the run goes on as if it had not been called.
    """
    own = getattr(model, "flops_per_sample", None)
    if own is not None:
        return float(own)
    from torch.utils.flop_counter import FlopCounterMode

    buffers = {name: b.detach().clone() for name, b in model.named_buffers()}
    devices = [torch.cuda.current_device()] if torch.cuda.is_initialized() else []
    with (
        torch.random.fork_rng(devices=devices),
        torch.compiler.set_stance("force_eager"),  # the model's ops, not a compiled graph's
        FlopCounterMode(display=False) as counter,
    ):
        step().backward()
    with torch.no_grad():
        for name, b in model.named_buffers():
            if name in buffers:
                b.copy_(buffers[name])
    for p in model.parameters():
        p.grad = None
    return counter.get_total_flops() / max(samples, 1)
