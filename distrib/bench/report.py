"""The scaling benchmark's outputs: a markdown table, results.json and scaling.png.

matplotlib is optional (``pip install 'distrib[bench]'``) and imported here only, with the
Agg backend: the benchmark runs on headless machines, and without matplotlib it still
writes the table and the JSON.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

_COLUMNS = (
    ("samples_per_s", "samples/s", "{:,.0f}"),
    ("step_ms_median", "step ms (median)", "{:.2f}"),
    ("step_ms_p90", "step ms (p90)", "{:.2f}"),
    ("launch_to_first_step_s", "launch to 1st step s", "{:.2f}"),
    ("peak_mib", "peak MiB", "{:,.0f}"),
    ("first_step_loss", "1st-step loss", "{:.7f}"),
    ("scaling_eff", "scaling eff", "{:.2f}"),
    ("tflops_per_s", "TFLOP/s", "{:.3g}"),
    ("mfu", "MFU", "{:.1%}"),
)


def _fmt(value: Any, spec: str = "{:.3f}") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return spec.format(value)


def markdown(result: dict[str, Any]) -> str:
    """Per-way numbers, the derived ratios, and time to accuracy, as markdown tables."""
    c = result["config"]
    n = c["workers"]
    lines = [
        f"## Scaling: {n} workers vs 1 -- {c['device']}, {c['cores']} cores, torch {c['torch']}, "
        f"{c.get('precision', 'fp32')}",
        f"median of {c['repeats']} interleaved repeats after a warm-up; peak memory per worker "
        "(RSS, or CUDA max allocated); TFLOP/s of all workers, MFU per worker (a GPU of known "
        "peak only)",
        "",
        "| workload | way | workers | " + " | ".join(h for _, h, _ in _COLUMNS) + " |",
        "|---|---|---" + "|---" * len(_COLUMNS) + "|",
    ]
    for name, wl in result["workloads"].items():
        for way, row in wl["ways"].items():
            head = f"| {name} | {way} | {row['workers']} |"
            why = row.get("skipped") or row.get("error")
            if why:
                label = "skipped" if "skipped" in row else "failed"
                lines.append(
                    f"{head} {label}: {why.splitlines()[0]} |" + " |" * (len(_COLUMNS) - 1)
                )
                continue
            cells = [_fmt(row.get(key), spec) for key, _, spec in _COLUMNS]
            lines.append(f"{head} " + " | ".join(cells) + " |")
    lines += [
        "",
        f"| workload | scaling eff distrib | scaling eff raw DDP | distrib {n} / raw DDP {n} "
        f"step time | trainer 1 / plain step time | compiled 1 / trainer 1 step time "
        f"| distrib {n} / torchrun launch to 1st step | 1st-step loss spread |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, wl in result["workloads"].items():
        d = wl["derived"]
        cells = [
            _fmt(d["scaling_eff_distrib"], "{:.2f}"),
            _fmt(d["scaling_eff_raw_ddp"], "{:.2f}"),
            _ratio(d, "distrib_over_raw_ddp_step_time"),
            _ratio(d, "trainer1_over_plain_step_time"),
            _ratio(d, "compiled_over_eager_step_time"),
            _ratio(d, "distrib_over_torchrun_launch"),
            _fmt(d["first_step_loss_spread"], "{:.1e}"),
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append(
        "\nratios: of the medians, then (in brackets) the lowest and highest ratio of two runs "
        "of one repeat"
    )
    lines += _tta_lines(result.get("time_to_accuracy"))
    return "\n".join(lines)


def _ratio(derived: dict[str, Any], name: str) -> str:
    """``1.06 [0.93, 1.19]``: the ratio of medians and its per-repeat range."""
    text = _fmt(derived.get(name), "{:.2f}")
    span = derived.get(f"{name}_range")
    if text == "-" or not span or span[0] == span[1]:
        return text
    return f"{text} [{span[0]:.2f}, {span[1]:.2f}]"


def _tta_lines(tta: dict[str, Any] | None) -> list[str]:
    if not tta:
        return []
    first = next((r for r in tta.values() if "error" not in r), {})
    lines = [
        "",
        f"| time to {first.get('target', 0.97):.0%} test accuracy (digits, cnn) | workers | "
        f"wall s | {first.get('resource', 'core-seconds')} | epochs run | final acc | "
        "wall s of each run |",
        "|---|---|---|---|---|---|---|",
    ]
    for way, r in tta.items():
        if "error" in r:
            lines.append(f"| {way} | {r['workers']} | failed: {r['error'].splitlines()[0]} |||||")
            continue
        runs = ", ".join(_fmt(t, "{:.2f}") for t in r["wall_s_runs"])
        lines.append(
            f"| {way} | {r['workers']} | {_fmt(r['wall_s'], '{:.2f}')} | "
            f"{_fmt(r['resource_s'], '{:.1f}')} | {r['epochs']} | "
            f"{_fmt(r['final_acc'], '{:.3f}')} | {runs} |"
        )
    return lines


def write(result: dict[str, Any], table: str, out: Path) -> None:
    """results.json, results.md and (where matplotlib is installed) scaling.png in ``out``."""
    (out / "results.json").write_text(json.dumps(_strict(result), indent=2) + "\n")
    (out / "results.md").write_text(table + "\n")
    try:
        plot(result, out / "scaling.png")
    except ImportError:
        print(
            "distrib.bench scaling: no scaling.png: matplotlib is not installed "
            "(pip install 'distrib[bench]')",
            file=sys.stderr,
        )


class _Lines:
    """What a progress bar says, as plain lines: a log file gets no carriage returns."""

    def __init__(self, total: int) -> None:
        self.total, self.done, self.what = total, 0, ""

    def set_description(self, what: str) -> None:
        self.what = what

    def update(self, n: int = 1) -> None:
        self.done += n
        print(f"distrib.bench: {self.done}/{self.total} {self.what}", file=sys.stderr, flush=True)

    def __enter__(self) -> _Lines:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def progress(total: int) -> Any:
    """A tqdm bar on a terminal; plain lines when stderr is a file or a pipe (``> log``)."""
    if sys.stderr.isatty():
        from tqdm import tqdm

        return tqdm(total=total, file=sys.stderr, unit="run", dynamic_ncols=True)
    return _Lines(total)


def _spread_line(ax: Any, rows: list[dict[str, Any]], style: str, color: str, label: str) -> None:
    """Medians joined by a line, each with a bar from the lowest to the highest repeat."""
    xs = [r["workers"] for r in rows]
    ys = [r["samples_per_s"] for r in rows]
    runs = [[run["samples_per_s"] for run in r.get("runs", []) if "samples_per_s" in run] or [y]
            for r, y in zip(rows, ys, strict=True)]  # fmt: skip
    low = [y - min(v) for y, v in zip(ys, runs, strict=True)]
    high = [max(v) - y for y, v in zip(ys, runs, strict=True)]
    ax.errorbar(xs, ys, yerr=[low, high], fmt=style, color=color, label=label, capsize=3)


def _strict(value: Any) -> Any:
    """NaN (a number that was not measured) as null: JSON has no NaN."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict(v) for v in value]
    return value


def plot(result: dict[str, Any], path: Path) -> None:
    """``scaling.png``: see `figure`."""
    import matplotlib.pyplot as plt

    fig = figure(result)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def figure(result: dict[str, Any]) -> Any:
    """Left: throughput against workers, per workload and family. Right: test accuracy
    against wall time for the time-to-accuracy runs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5.6))
    # A line joins launched runs of one kind only; the single-process baselines are markers of
    # their own (the trainer in process is not "distrib at 1 worker": it pays no launch).
    styles = {"distrib": "-o", "torch": "--s", "fabric": ":^", "accelerate": ":v"}
    labels = {"distrib": "distrib N", "torch": "raw DDP N", "fabric": "Fabric N",
              "accelerate": "Accelerate N"}  # fmt: skip
    singles = {"plain": ("x", "plain loop"), "trainer 1": ("+", "trainer in process"),
               "compiled 1": ("*", "trainer in process, compiled")}  # fmt: skip
    for i, (name, wl) in enumerate(result["workloads"].items()):
        color = f"C{i}"
        for family, style in styles.items():
            rows = [r for way, r in wl["ways"].items() if r["family"] == family
                    and way not in singles and "samples_per_s" in r]  # fmt: skip
            if rows:
                rows.sort(key=lambda r: r["workers"])
                _spread_line(left, rows, style, color, f"{name}: {labels[family]}")
        for way, (marker, label) in singles.items():
            row = wl["ways"].get(way)
            if row and "samples_per_s" in row:
                _spread_line(left, [row], marker, color, f"{name}: {label}")
    left.set(xlabel="workers", ylabel="samples/s", yscale="log", title="throughput vs workers")
    left.set_xticks(
        sorted({r["workers"] for wl in result["workloads"].values() for r in wl["ways"].values()})
    )
    # outside the axes: over the lines it hid the points it names
    left.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2)
    left.text(0.01, 0.01, "bars: lowest to highest of the repeats", fontsize=7,
              transform=left.transAxes)  # fmt: skip
    tta = {k: r for k, r in (result.get("time_to_accuracy") or {}).items() if "error" not in r}
    for way, r in tta.items():
        if r["curve"]:
            xs, ys = zip(*r["curve"], strict=True)
            right.plot(xs, ys, "-o", label=f"{way} ({_fmt(r['wall_s'], '{:.1f}')} s)")
    if tta:
        target = next(iter(tta.values()))["target"]
        right.axhline(target, color="grey", linestyle=":", label=f"target {target:.0%}")
    right.set(
        xlabel="wall seconds since start", ylabel="test accuracy", title="time to accuracy (digits)"
    )
    if tta:
        right.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2)
    fig.tight_layout()
    return fig
