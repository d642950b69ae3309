"""How distrib scales, and what it costs, against hand-written torch on the same workload.

    python -m distrib.bench scaling                      # all workloads, N = GPUs (CPU: 2)
    python -m distrib.bench scaling --workload comm --workers 4 --repeats 5
    python -m distrib.bench scaling --tiny --out /tmp/b  # a smoke test (tests/test_bench.py)

Each workload (compute-bound CNN, all-reduce-bound MLP, start-up-bound tiny MLP; see
workloads.py) runs every way of `ways`: a plain single-process loop, the trainer on 1
worker, the trainer on N launched workers, raw torch DDP under torchrun (and Fabric or
Accelerate where installed). Every way trains the same model from the same seed on the same
samples in the same order: their first-step losses, recorded in each way's warm-up run, agree.
After that warm-up the ways run round-robin (the order rotated each repeat), and each number
is the median over repeats, with TFLOP/s (FLOPs per sample counted once, `flops_per_sample`)
and, on a GPU whose peak `distrib.trainer.flops` knows, MFU. ``compiled 1`` (the trainer with
``trainer.compile.enable=true``) runs only when named: ``--ways trainer,compiled`` gives
compiled / eager step time. Then time to 97% on digits, 1 vs N workers. The markdown table
goes to stdout; results.json, results.md and scaling.png to the run directory.

On a CPU machine the N workers split the same cores (cores / N threads each), so N workers
can roughly match one, not beat it: the ideal scaling efficiency there is about 1/N, and the
ratios of distrib to raw DDP are the point.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as _dt
import platform
import statistics
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from distrib.bench import report, tta
from distrib.bench import workloads as w
from distrib.bench.report import progress
from distrib.bench.ways import Way, measure, ways
from distrib.trainer import flops as fl

OPTIONAL = ("fabric", "accelerate")
"""Families whose failure is reported without failing the benchmark (not ours to fix)."""


def parse(argv: list[str]) -> argparse.Namespace:
    gpus = torch.cuda.device_count()
    p = argparse.ArgumentParser(
        prog="python -m distrib.bench scaling",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--workload",
        action="append",
        choices=[*w.workloads(), "all"],
        help="repeatable; default: all",
    )
    p.add_argument(
        "--ways",
        default="",
        help="comma-separated name prefixes, e.g. plain,trainer or trainer,compiled "
        "(default: every way but compiled)",
    )
    p.add_argument("--workers", type=int, default=gpus or 2, help="N (default: GPUs, or 2)")
    p.add_argument("--repeats", type=int, default=None, help="timed runs per way (default 3)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per run (per workload)")
    p.add_argument("--tta-epochs", type=int, default=None, help="digits epochs (default 8)")
    p.add_argument("--no-tta", action="store_true", help="skip time-to-accuracy")
    p.add_argument("--out", type=Path, default=None, help="default: bench_runs/<timestamp>")
    p.add_argument("--tiny", action="store_true", help="a very small config, for tests")
    p.add_argument(
        "--precision",
        choices=w.PRECISIONS,
        default="fp32",
        help="every way alike (fp16: autocast and a gradient scaler, on a GPU)",
    )
    args = p.parse_args(argv)
    if args.repeats is None:
        args.repeats = 1 if args.tiny else 3
    if args.tta_epochs is None:
        args.tta_epochs = 2 if args.tiny else 8
    for name in ("workers", "repeats", "steps", "tta_epochs"):
        value = getattr(args, name)
        if value is not None and value < 1:
            p.error(f"--{name.replace('_', '-')}={value}: expected an integer >= 1")
    return args


def selected(args: argparse.Namespace) -> list[w.Workload]:
    specs = w.workloads(args.tiny)
    names = args.workload or ["all"]
    gpu = torch.cuda.is_available()
    default = [n for n in specs if n != "wide" or gpu]  # wide: ~0.2 TFLOP a step, for GPUs
    chosen = default if "all" in names else list(dict.fromkeys(names))
    changes: dict[str, Any] = {"precision": args.precision}
    if args.steps is not None:
        changes["steps"] = args.steps
    return [dataclasses.replace(specs[n], **changes) for n in chosen]


def bench_workload(
    spec: w.Workload, all_ways: list[Way], repeats: int, logs: Path, bar: tqdm
) -> dict[str, Any]:
    """Warm-up (first-step loss) then ``repeats`` round-robin timed runs of every way."""
    out: dict[str, dict[str, Any]] = {}
    live = [(way, way.runner) for way in all_ways if way.runner is not None]
    for way in all_ways:
        out[way.name] = {"workers": way.workers, "family": way.family, "runs": []}
        if way.skipped:
            out[way.name]["skipped"] = way.skipped
    for i in range(-1, repeats):  # -1: the warm-up
        k = max(i, 0) % len(live)  # rotate, so no way always runs right after the same one
        for way, runner in live[k:] + live[:k]:
            row = out[way.name]
            if "error" in row:
                continue
            bar.set_description(f"{spec.name}: {way.name} ({'warm-up' if i < 0 else i + 1})")
            steps = spec.warmup_steps + 1 if i < 0 else spec.total_steps
            try:
                run = runner(spec, steps, logs, i < 0)
            except Exception as e:  # a broken way is reported; the others still run
                row["error"] = f"{type(e).__name__}: {e}".strip()
                bar.update(repeats - i)
                continue
            m = measure(run, spec.global_batch)
            if i < 0:
                row["first_step_loss"] = m["first_loss"]
            else:
                row["runs"].append({key: v for key, v in m.items() if key != "first_loss"})
            bar.update()
    for row in out.values():
        if row["runs"]:
            row.update({k: statistics.median(r[k] for r in row["runs"]) for k in row["runs"][0]})
    _efficiency(out, all_ways)
    flops = flops_per_sample(spec)
    gpu = torch.cuda.is_available()
    peak = fl.peak_tflops(torch.cuda.get_device_name(0), spec.precision) if gpu else None
    _throughput(out, flops, peak)
    return {
        "spec": spec.to_dict(),
        "flops_per_sample": flops,
        "peak_tflops": peak,
        "ways": out,
        "derived": derived(out, all_ways),
    }


def flops_per_sample(spec: w.Workload) -> float:
    """One sample's forward + backward FLOPs of the workload's model (`FlopCounterMode`, via
    `distrib.trainer.flops`), counted eagerly on the CPU on a few samples: the same count in
    every way and precision (a compiled graph does the same matmuls)."""
    torch.manual_seed(spec.seed)
    model = w.build_model(**spec.model)
    data = w.dataset(list(spec.input_shape), 4, seed=spec.seed)
    x, y = data.tensors
    return fl.count_flops_per_sample(model, lambda: F.cross_entropy(model(x), y), len(x))


def _throughput(out: dict[str, dict[str, Any]], flops: float, peak: float | None) -> None:
    """Each way's ``tflops_per_s`` (the median samples/s x FLOPs per sample: over all its
    workers) and, where the device's peak is known (a GPU in `distrib.trainer.flops.PEAKS`;
    never a CPU), ``mfu`` = that over ``workers x peak``."""
    for row in out.values():
        if "samples_per_s" not in row:
            continue
        row["tflops_per_s"] = row["samples_per_s"] * flops / 1e12
        if peak:
            row["mfu"] = row["tflops_per_s"] / (row["workers"] * peak)


def _efficiency(out: dict[str, dict[str, Any]], all_ways: list[Way]) -> None:
    """throughput(N) / (N x throughput(1)), every way against the SAME single-process
    baseline: the faster of the plain loop and the trainer. A family's own baseline would let
    a slow 1-worker way flatter its N-worker way (and a fast one penalise it)."""
    singles = [out.get(n, {}).get("samples_per_s") for n in ("plain", "trainer 1")]
    singles = [v for v in singles if v is not None]
    if not singles:
        return
    base = max(singles)
    for way in all_ways:
        row = out[way.name]
        if way.workers > 1 and "samples_per_s" in row:
            row["scaling_eff"] = row["samples_per_s"] / (way.workers * base)


def derived(out: dict[str, dict[str, Any]], all_ways: list[Way]) -> dict[str, Any]:
    """The ratios the targets are stated in: of the medians, and ``_range``: the lowest and
    highest ratio of two runs of one repeat (neighbours in time), how far the machine's noise
    moves it."""
    n = max(way.workers for way in all_ways)
    none: dict[str, Any] = {"runs": []}  # a way not run (``--ways``)

    def ratio(a: str, b: str, key: str) -> float | None:
        x, y = out.get(a, none), out.get(b, none)
        if key in x and key in y:
            return x[key] / y[key]
        return None

    def spread(a: str, b: str, key: str) -> list[float] | None:
        pairs = zip(out.get(a, none)["runs"], out.get(b, none)["runs"], strict=False)
        ratios = [x[key] / y[key] for x, y in pairs if y[key]]
        return [min(ratios), max(ratios)] if ratios else None

    losses = [r["first_step_loss"] for r in out.values() if "first_step_loss" in r]
    pairs = {
        "distrib_over_raw_ddp_step_time": (f"distrib {n}", f"raw DDP {n}", "step_ms_median"),
        "trainer1_over_plain_step_time": ("trainer 1", "plain", "step_ms_median"),
        "compiled_over_eager_step_time": ("compiled 1", "trainer 1", "step_ms_median"),
        "distrib_over_torchrun_launch": (f"distrib {n}", f"raw DDP {n}", "launch_to_first_step_s"),
    }
    result: dict[str, Any] = {
        "scaling_eff_distrib": out.get(f"distrib {n}", none).get("scaling_eff"),
        "scaling_eff_raw_ddp": out.get(f"raw DDP {n}", none).get("scaling_eff"),
    }
    for name, (a, b, key) in pairs.items():
        result[name] = ratio(a, b, key)
        result[f"{name}_range"] = spread(a, b, key)
    result["first_step_loss_spread"] = max(losses) - min(losses) if losses else None
    return result


def bench_tta(n: int, epochs: int, repeats: int, logs: Path, bar: tqdm) -> dict[str, Any]:
    """Time to accuracy at 1 and n workers, interleaved; the median run of each by wall time."""
    from distrib.datasets import digits

    digits("train")  # the warm-up: sklearn imported, its files in the page cache
    sizes = (1, n) if n > 1 else (1,)  # one GPU: nothing to compare the trainer with
    runs: dict[int, list[dict[str, Any]]] = {size: [] for size in sizes}
    errors: dict[int, str] = {}
    for i in range(repeats):
        for nproc in sizes if i % 2 == 0 else sizes[::-1]:
            bar.set_description(f"time to accuracy: {nproc} worker(s) ({i + 1})")
            if nproc not in errors:
                try:
                    runs[nproc].append(tta.summarize(tta.run(nproc, epochs, logs), nproc))
                except Exception as e:  # reported in the table; the other size still runs
                    errors[nproc] = f"{type(e).__name__}: {e}".strip()
            bar.update()
    out: dict[str, Any] = {}
    for nproc, done in runs.items():
        name = "trainer 1" if nproc == 1 else f"distrib {nproc}"
        if nproc in errors:
            out[name] = {"workers": nproc, "error": errors[nproc]}
            continue
        ordered = sorted(done, key=lambda r: (not r["reached"], r["wall_s"]))
        median = ordered[(len(ordered) - 1) // 2]
        out[name] = {**median, "wall_s_runs": [r["wall_s"] for r in done]}
    return out


def chosen_ways(args: argparse.Namespace) -> list[Way]:
    """The ways ``--ways`` names (by prefix); without it, every way that runs by default."""
    all_ways = ways(args.workers)
    if not args.ways:
        return [way for way in all_ways if way.default]
    prefixes = tuple(p.strip() for p in args.ways.split(",") if p.strip())
    return [way for way in all_ways if way.name.startswith(prefixes)]


def run(args: argparse.Namespace) -> dict[str, Any]:
    specs = selected(args)
    all_ways = chosen_ways(args)
    live = sum(way.runner is not None for way in all_ways)
    tta_runs = 0 if args.no_tta else (2 if args.workers > 1 else 1) * args.repeats
    total = len(specs) * live * (args.repeats + 1) + tta_runs
    logs = args.out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"config": _config(args), "workloads": {}}
    with progress(total) as bar:
        for spec in specs:
            result["workloads"][spec.name] = bench_workload(spec, all_ways, args.repeats, logs, bar)
        if not args.no_tta:
            result["time_to_accuracy"] = bench_tta(
                args.workers, args.tta_epochs, args.repeats, logs, bar
            )
    return result


def _config(args: argparse.Namespace) -> dict[str, Any]:
    gpu = torch.cuda.is_available()
    return {
        "workers": args.workers,
        "repeats": args.repeats,
        "tiny": args.tiny,
        "precision": args.precision,
        "device": torch.cuda.get_device_name(0) if gpu else _cpu_name(),
        "cores": w.cores(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date": _dt.datetime.now().isoformat(timespec="seconds"),
    }


def _cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return "CPU " + line.split(":", 1)[1].strip()
    return f"CPU {platform.processor() or platform.machine()}".strip()


def main(argv: list[str]) -> int:
    args = parse(argv)
    stamp = _dt.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    args.out = args.out or Path("bench_runs") / stamp
    args.out.mkdir(parents=True, exist_ok=True)
    result = run(args)
    table = report.markdown(result)
    print(table)
    report.write(result, table, args.out)
    print(f"\nscaling benchmark: results in {args.out}/ (results.json, results.md, scaling.png)")
    failed = False
    for name, wl in result["workloads"].items():
        for way, row in wl["ways"].items():
            if "error" in row:
                print(f"distrib.bench scaling: {name}: {way}: {row['error']}", file=sys.stderr)
                failed = failed or row["family"] not in OPTIONAL
    for way, row in result.get("time_to_accuracy", {}).items():
        if "error" in row:
            print(
                f"distrib.bench scaling: time to accuracy: {way}: {row['error']}", file=sys.stderr
            )
            failed = True
    return 1 if failed else 0
