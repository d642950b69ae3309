"""``python -m distrib plot RUN_DIR|SWEEP_DIR [--out FILE]``: the training curves as a PNG.

One panel per quantity against the step: the training loss, each evaluation metric, and the
throughput (samples/s); a sweep directory (hydra multirun: one run directory per point) draws
one line per point, labelled by its overrides. It reads ``metrics.jsonl`` (whose steps only grow,
even across resumes) and writes ``curves.png`` in the directory, or ``--out``; the path is
printed. Needs matplotlib (``pip install 'distrib[bench]'``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

from distrib.loggers.jsonl import read_jsonl

METRICS = "metrics.jsonl"


def runs(directory: Path) -> dict[str, list[dict[str, Any]]]:
    """``{label: rows}``: the run itself, or each point of a sweep (its overrides as label)."""
    if (directory / METRICS).exists():
        return {directory.name: read_jsonl(directory / METRICS)}
    out = {}
    for point in sorted(directory.glob(f"*/{METRICS}"), key=lambda p: _order(p.parent)):
        overrides = point.parent / ".hydra" / "overrides.yaml"
        said = yaml.safe_load(overrides.read_text()) if overrides.exists() else None
        out[" ".join(said or []) or point.parent.name] = read_jsonl(point)
    return out


def _order(job: Path) -> tuple[int, str]:
    return (int(job.name), "") if job.name.isdigit() else (sys.maxsize, job.name)


def panels(curves: dict[str, list[dict[str, Any]]]) -> list[str]:
    """What to draw: the loss, every eval metric any run logged, the throughput."""
    keys = {k for rows in curves.values() for row in rows for k in row}
    evals = sorted(
        k for k in keys if k.startswith("eval_") and not k.endswith(("_total", "_correct"))
    )
    return [k for k in ("loss", *evals, "samples_per_s") if k in keys]


def figure(curves: dict[str, list[dict[str, Any]]]) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = panels(curves)
    cols = min(3, len(names))
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.6 * rows), squeeze=False)
    for ax, key in zip(axes.flat, names, strict=False):
        for label, points in curves.items():
            xy = [(r["step"], r[key]) for r in points if r.get(key) is not None and "step" in r]
            if xy:
                xs, ys = zip(*xy, strict=True)
                ax.plot(xs, ys, "-" if len(xy) > 1 else "o", label=label)
        ax.set(title=key, xlabel="step")
        if key == "loss":
            ax.set_yscale("log")
    for ax in list(axes.flat)[len(names) :]:
        ax.remove()
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(3, len(labels)), fontsize=8)
    fig.tight_layout(rect=(0, 0.06 + 0.02 * (len(labels) // 3), 1, 1))
    return fig


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m distrib plot", description=__doc__.split("\n")[0])
    p.add_argument("directory", type=Path, help="a run directory or a sweep directory")
    p.add_argument("--out", type=Path, help="default: <directory>/curves.png")
    args = p.parse_args(argv)
    curves = {k: v for k, v in runs(args.directory).items() if v} if args.directory.is_dir() else {}
    if not curves:
        print(f"distrib: error: {args.directory}: no {METRICS} in it or in its sweep points",
              file=sys.stderr)  # fmt: skip
        return 2
    try:
        fig = figure(curves)
    except ImportError:
        print(
            "distrib: error: plot needs matplotlib: pip install 'distrib[bench]'", file=sys.stderr
        )
        return 2
    out = args.out or args.directory / "curves.png"
    fig.savefig(out, dpi=110)
    print(f"distrib: wrote {out} ({', '.join(panels(curves))}; {len(curves)} run(s))")
    return 0
