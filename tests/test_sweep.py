"""The table a hydra multirun ends with: `distrib.sweep` on a fake sweep dir, then for real."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest
from helpers import run_cli

from distrib.cli.sweep import NO_METRICS, summarize, write_summary
from distrib.loggers.jsonl import read_jsonl

TRAIN_ROW = {"step": 10, "epoch": 0, "loss": 2.5, "lr": 0.1}


def _job(sweep: Path, num: int, overrides: list[str], rows: list[dict] | None) -> Path:
    job = sweep / str(num)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    if rows is not None:
        (job / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return job


def _eval(step: int, acc: float, loss: float) -> dict:
    return {"step": step, "epoch": 0.0, "eval_loss": loss, "eval_acc": acc, "eval_total": 100.0}


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    sweep = tmp_path / "sweep"
    rows = [TRAIN_ROW, _eval(10, 0.5, 1.5), {**TRAIN_ROW, "step": 20}, _eval(20, 0.75, 0.5)]
    _job(sweep, 0, ["optim.lr=0.1", "launcher.nproc=2"], [*rows, {**TRAIN_ROW, "step": 30}])
    _job(sweep, 1, ["optim.lr=0.05", "launcher.nproc=2"], None)  # failed before logging
    (sweep / "multirun.yaml").write_text("hydra: {}\n")  # a file, not a job
    return sweep


def test_summarize_takes_each_jobs_last_eval_row_and_marks_a_job_without_metrics(sweep: Path):
    assert summarize(sweep) == [
        {
            "job": "0",
            "overrides": "optim.lr=0.1 launcher.nproc=2",
            "step": 20,
            "eval_acc": 0.75,
            "eval_loss": 0.5,
            "eval_total": 100.0,
        },
        {"job": "1", "overrides": "optim.lr=0.05 launcher.nproc=2", "step": None},
    ]


def test_a_job_with_train_rows_only_or_a_torn_file_has_no_metrics(tmp_path: Path):
    _job(tmp_path, 0, ["optim.lr=1"], [TRAIN_ROW])
    _job(tmp_path, 1, ["optim.lr=2"], [])
    (tmp_path / "1" / "metrics.jsonl").write_text('{"step": 3, "eval_lo')
    assert [r["step"] for r in summarize(tmp_path)] == [None, None]


def test_jobs_sort_numerically(tmp_path: Path):
    for num in (10, 2, 1):
        _job(tmp_path, num, [f"seed={num}"], [_eval(num, 0.1, 1.0)])
    assert [r["job"] for r in summarize(tmp_path)] == ["1", "2", "10"]


def test_write_summary_writes_markdown_and_csv_and_returns_the_table(sweep: Path):
    table = write_summary(sweep)
    assert (sweep / "summary.md").read_text() == table
    lines = table.splitlines()
    assert lines[0] == "| job | overrides | step | eval_acc | eval_loss | eval_total |"
    assert lines[2] == "| 0 | optim.lr=0.1 launcher.nproc=2 | 20 | 0.75 | 0.5 | 100 |"
    assert lines[3] == f"| 1 | optim.lr=0.05 launcher.nproc=2 | {NO_METRICS} |  |  |  |"
    with (sweep / "summary.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["overrides"] for r in rows] == [
        "optim.lr=0.1 launcher.nproc=2",
        "optim.lr=0.05 launcher.nproc=2",
    ]
    assert rows[0]["eval_acc"] == "0.75" and rows[1]["step"] == NO_METRICS
    assert not list(sweep.glob(".*tmp*"))  # the temporary files were renamed into place


def test_an_empty_sweep_dir_gives_a_header_only_table(tmp_path: Path):
    assert write_summary(tmp_path).splitlines()[0] == "| job | overrides | step |"


@pytest.mark.slow
def test_a_multirun_sweep_ends_with_a_summary_of_each_points_final_metrics(tmp_path: Path):
    sweep = tmp_path / "sweep"
    res = run_cli(
        sys.executable,
        "-m",
        "distrib.train",
        "-m",
        "optim.lr=0.1,0.05",
        "launcher.nproc=2",
        "model=mlp",
        "data=synthetic",
        # 480 samples: 384 train = exactly 6 steps of 64, so the one epoch (and its eval row)
        # ends at max_steps. A run stopped by max_steps mid-epoch logs no eval row.
        "data.size=480",
        "trainer.epochs=1",
        "trainer.max_steps=6",
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
        timeout=240,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    assert jobs == ["0", "1"]  # one dir per sweep point, none per rank
    assert not (tmp_path / "outputs").exists() and not (tmp_path / "multirun").exists()
    assert all((sweep / j / "metrics.jsonl").exists() for j in jobs)
    table = (sweep / "summary.md").read_text()
    assert table in res.stdout
    rows = summarize(sweep)
    assert [r["overrides"].split()[0] for r in rows] == ["optim.lr=0.1", "optim.lr=0.05"]
    with (sweep / "summary.csv").open() as f:
        assert [r["overrides"] for r in csv.DictReader(f)] == [r["overrides"] for r in rows]
    for row in rows:
        last_eval = [r for r in read_jsonl(sweep / row["job"] / "metrics.jsonl") if "eval_acc" in r]
        expected = {k: v for k, v in last_eval[-1].items() if k.startswith("eval_")}
        assert row["step"] == last_eval[-1]["step"] == 6
        assert {k: v for k, v in row.items() if k.startswith("eval_")} == expected
    assert rows[0]["eval_loss"] != rows[1]["eval_loss"]  # different lr, different model


def test_the_table_again_from_the_command_and_its_old_name(sweep: Path):
    # `python -m distrib sweep DIR` is the command; `python -m distrib.sweep DIR` (distrib 0.1's
    # name, in scripts) and the hydra callback `distrib.sweep.SweepSummary` keep working
    new = run_cli(sys.executable, "-m", "distrib", "sweep", str(sweep))
    old = run_cli(sys.executable, "-m", "distrib.sweep", str(sweep))
    assert new.returncode == old.returncode == 0, new.stderr + old.stderr
    assert new.stdout == old.stdout == write_summary(sweep)
    from distrib.sweep import SweepSummary

    assert SweepSummary.__module__ == "distrib.cli.sweep"
    bad = run_cli(sys.executable, "-m", "distrib", "sweep", str(sweep / "nope"))
    assert bad.returncode == 2 and bad.stderr.strip() == "usage: python -m distrib sweep SWEEP_DIR"
