"""The models, data and step clock every way of ``python -m distrib.bench scaling`` shares.

No import of distrib here, on purpose: the plain loop and the raw-DDP script use this module
too, and a comparison with "no library" only means something if they run no library code.
The trainer reaches the same builders through ``_target_`` strings, so all ways train the
same model, from the same seed, on the same data, in the same order.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import math
import os
import resource
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

PRECISIONS = ("fp32", "bf16", "fp16")
"""The trainer's ``trainer.precision`` values (fp16 only where the device has a scaler: CUDA)."""

LOG_EVERY = 10
"""The plain and raw loops read the loss back every 10 steps, as the trainer logs by default."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class Workload:
    """One workload: a model, synthetic data, a global batch and how many steps to time."""

    name: str
    """compute, comm or launch (the ``--workload`` choices)."""
    model: dict[str, Any]
    """Keyword arguments of `build_model`."""
    input_shape: tuple[int, ...]
    """Shape of one sample."""
    global_batch: int
    """Samples per optimizer step over all workers (split evenly between them)."""
    warmup_steps: int
    """Steps run before the timed ones (at least 1: the first timed step needs a start)."""
    steps: int
    """Timed optimizer steps."""
    lr: float = 1e-3
    seed: int = 0
    precision: str = "fp32"
    """fp32, bf16: the forward under bf16 autocast in every way (the trainer's
    ``trainer.precision=bf16``), or fp16: fp16 autocast and a gradient scaler (CUDA)."""

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(
                f"workload {self.name}: precision={self.precision!r}: {', '.join(PRECISIONS)}"
            )
        if self.warmup_steps < 1 or self.steps < 1:
            raise ValueError(
                f"workload {self.name}: warmup_steps={self.warmup_steps} and "
                f"steps={self.steps}: expected integers >= 1"
            )

    @property
    def total_steps(self) -> int:
        return self.warmup_steps + self.steps

    @property
    def train_size(self) -> int:
        """Exactly one epoch of samples: no way reaches an epoch boundary (or an eval)."""
        return self.global_batch * self.total_steps

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Workload:
        return cls(**{**d, "input_shape": tuple(d["input_shape"])})


def workloads(tiny: bool = False) -> dict[str, Workload]:
    """The workloads; ``tiny`` shrinks them until the whole benchmark is a smoke test.

    compute: a CNN on 3x32x32 images, compute-bound (0.3M parameters, ~1.5 GFLOP per step).
    comm: an MLP with 42 MB of parameters and little compute per byte: gradient all-reduce
    bound. launch: a tiny MLP for a few steps, dominated by start-up. wide: the GPU workload
    of issue 9 (an MLP 512 -> 4096 x 4, batch 512: ~0.2 TFLOP per step), where a host that
    waits for the device shows; chosen by name, or by ``all`` on a GPU.
    """
    side, hidden, batch = (8, 256, 16) if tiny else (32, 2048, 64)
    warm, steps = (1, 3) if tiny else (3, 20)
    return {
        "compute": Workload(
            name="compute",
            model={"kind": "cnn", "in_shape": [3, side, side]},
            input_shape=(3, side, side),
            global_batch=batch,
            warmup_steps=warm,
            steps=steps,
        ),
        "comm": Workload(
            name="comm",
            model={"kind": "mlp", "in_shape": [1024], "hidden": hidden, "depth": 3},
            input_shape=(1024,),
            global_batch=batch // 2,
            warmup_steps=warm,
            steps=steps // 2,
        ),
        "launch": Workload(
            name="launch",
            model={"kind": "mlp", "in_shape": [64], "hidden": 64, "depth": 1},
            input_shape=(64,),
            global_batch=batch,
            warmup_steps=1,
            steps=2 if tiny else 5,
        ),
        "wide": Workload(
            name="wide",
            model={"kind": "mlp", "in_shape": [512], "hidden": 64 if tiny else 4096, "depth": 4},
            input_shape=(512,),
            global_batch=batch if tiny else 512,
            warmup_steps=warm if tiny else 10,
            steps=steps if tiny else 200,
        ),
    }


class Net(nn.Sequential):
    """`nn.Sequential` with a forward of its own (the same loop): dynamo does not compile torch's
    own ``Sequential.forward``, so the ``compiled`` way would otherwise compile nothing. Every
    way builds this class, so every way runs the same Python."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self:
            x = layer(x)
        return x


def build_model(
    kind: str, in_shape: list[int], hidden: int = 128, depth: int = 2, num_classes: int = 10
) -> nn.Module:
    """``cnn``: two conv+pool blocks and two linear layers; ``mlp``: ``depth`` x ``hidden``."""
    if kind == "cnn":
        c, h, w = in_shape
        return Net(
            nn.Conv2d(c, 16, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(32 * (h // 4) * (w // 4), hidden),
            nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )
    if kind == "mlp":
        layers: list[nn.Module] = [nn.Flatten()]
        width = math.prod(in_shape)
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        return Net(*layers, nn.Linear(width, num_classes))
    raise ValueError(f"model kind={kind!r}: expected cnn or mlp")


def dataset(
    input_shape: list[int], size: int, seed: int = 0, num_classes: int = 10
) -> TensorDataset:
    """Gaussian samples labelled by a fixed random linear teacher: learnable, no files, and
    bit-identical in every process that asks for the same arguments."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(size, *input_shape, generator=g)
    teacher = torch.randn(math.prod(input_shape), num_classes, generator=g)
    return TensorDataset(x, (x.flatten(1) @ teacher).argmax(dim=1))


def epoch_order(n: int, seed: int, epoch: int = 0) -> list[int]:
    """The epoch's sample order, as DistributedSampler (and distrib's sampler) draw it."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch)).tolist()


def train_steps(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    device: torch.device,
    clock: StepClock,
    *,
    steps: int,
    backward: Callable[[torch.Tensor], None] = torch.Tensor.backward,
    precision: str = "fp32",
) -> float:
    """The hand-written training loop of the plain and raw ways; returns the first step's loss.

    ``backward`` is where Fabric and Accelerate put their own (``fabric.backward``)."""
    first = math.nan
    # fp16: the loss scaled, the step unscaled (and skipped on an overflow), as the trainer does
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
    for i, (x, y) in enumerate(itertools.islice(batches, steps)):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with autocast(device, precision):
            loss = F.cross_entropy(model(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        if scaler is None:
            backward(loss)
            optimizer.step()
        else:
            backward(scaler.scale(loss))
            scaler.step(optimizer)
            scaler.update()
        clock.tick()
        if i % LOG_EVERY == 0:  # what a script prints now and then: the only host wait
            value = loss.item()
            first = value if i == 0 else first
    return first


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 or fp16 autocast as the trainer applies it (the forward and loss only), or
    nothing."""
    if precision in ("bf16", "fp16"):
        dtype = torch.bfloat16 if precision == "bf16" else torch.float16
        return torch.autocast(device_type=device.type, dtype=dtype)
    return contextlib.nullcontext()


class StepClock:
    """When each optimizer step ended, the same way for every way.

    On a GPU the marks are CUDA events: a host sync per step would slow down exactly the
    loops that avoid one. The first step alone is synchronised, for its wall time (seconds
    since the epoch, comparable across the processes of one machine).
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cuda = device.type == "cuda"
        self.marks: list[Any] = []
        self.first_wall: float | None = None

    def tick(self) -> None:
        if self.first_wall is None:
            if self.cuda:
                torch.cuda.synchronize(self.device)
            self.first_wall = time.time()
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append(event)
        else:
            self.marks.append(time.perf_counter())

    def step_times(self) -> list[float]:
        """Seconds between consecutive step ends: entry i is step i + 2 (1-based)."""
        if self.cuda:
            torch.cuda.synchronize(self.device)
            return [a.elapsed_time(b) / 1e3 for a, b in itertools.pairwise(self.marks)]
        return [b - a for a, b in itertools.pairwise(self.marks)]

    def summary(self, warmup_steps: int) -> dict[str, Any]:
        """This rank's measurement: the steps after ``warmup_steps`` and its first step."""
        return {
            "first_wall": self.first_wall,
            "step_s": self.step_times()[warmup_steps - 1 :],
            "peak_mib": peak_memory_mib(self.device),
        }


def cores() -> int:
    """The cores this process may use (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


def threads_for(local_workers: int) -> int:
    """Cores / local workers: the share distrib gives each worker (`threads_per_worker`)."""
    return max(1, cores() // max(1, local_workers))


def device_for(local_rank: int) -> torch.device:
    """cuda:<local_rank> when there is a GPU, else the CPU: what distrib picks by default."""
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak: CUDA's allocator peak, or the process's RSS high-water mark (Linux)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    with contextlib.suppress(OSError):  # "5" resets VmHWM (Linux >= 4.0); elsewhere the
        Path("/proc/self/clear_refs").write_text("5")  # peak counts from process start


def peak_memory_mib(device: torch.device) -> float:
    """CUDA max allocated on a GPU, else peak RSS since `reset_peak_memory`, in MiB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**10
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10
