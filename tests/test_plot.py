"""``python -m distrib plot``: a run's or a sweep's training curves, from metrics.jsonl."""

from __future__ import annotations

import sys
from pathlib import Path

from helpers import run_cli

from distrib.cli.plot import figure, runs
from distrib.loggers.jsonl import JsonlLogger

PY = sys.executable


def _run(directory: Path, lr: float, overrides: list[str] | None = None) -> None:
    log = JsonlLogger(directory / "metrics.jsonl")
    for step in (10, 20, 30):
        log.log({"epoch": 1, "loss": lr / step, "samples_per_s": 1000.0 + step}, step)
    log.log({"epoch": 1, "eval_loss": lr, "eval_acc": 0.5, "eval_total": 100}, 30)
    log.close()
    if overrides is not None:
        (directory / ".hydra").mkdir()
        (directory / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))


def test_a_run_directory_plots_loss_eval_metrics_and_throughput(tmp_path: Path):
    _run(tmp_path, 1.0)
    res = run_cli(PY, "-m", "distrib", "plot", str(tmp_path))
    assert res.returncode == 0, res.stderr
    out = tmp_path / "curves.png"
    assert res.stdout.strip() == (
        f"distrib: wrote {out} (loss, eval_acc, eval_loss, samples_per_s; 1 run(s))"
    )
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_sweep_directory_draws_one_line_per_point_labelled_by_its_overrides(tmp_path: Path):
    for i, lr in enumerate((0.1, 0.05)):
        (tmp_path / str(i)).mkdir()
        _run(tmp_path / str(i), lr, [f"optim.lr={lr}"])
    curves = runs(tmp_path)
    assert list(curves) == ["optim.lr=0.1", "optim.lr=0.05"]
    fig = figure(curves)
    loss = fig.axes[0]
    assert loss.get_title() == "loss"
    assert [line.get_label() for line in loss.get_lines()] == list(curves)
    assert list(loss.get_lines()[1].get_ydata()) == [0.05 / 10, 0.05 / 20, 0.05 / 30]


def test_a_directory_without_metrics_is_one_line(tmp_path: Path):
    res = run_cli(PY, "-m", "distrib", "plot", str(tmp_path))
    assert res.returncode == 2
    assert res.stderr.strip() == (
        f"distrib: error: {tmp_path}: no metrics.jsonl in it or in its sweep points"
    )
