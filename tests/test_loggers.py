from __future__ import annotations

import io
import json
import math
import re
import sys
from pathlib import Path

import pytest
from helpers import run_cli
from tqdm import tqdm
from wandb_reader import read_history

from distrib.errors import ConfigError
from distrib.loggers import close_all, log_all, make_loggers
from distrib.loggers.console import ConsoleLogger
from distrib.loggers.jsonl import JsonlLogger, read_jsonl
from distrib.loggers.wandb import WandbLogger, wandb_mode

ROWS = [
    {"step": 10, "epoch": 0, "loss": 2.5, "lr": 0.1, "samples_per_s": 5400.25},
    {"step": 20, "epoch": 1, "loss": 1.25, "lr": 0.05, "samples_per_s": 5600.5},
    {"step": 30, "epoch": 2, "loss": 0.1234, "lr": 0.025, "samples_per_s": 5800.75},
]


def _make(names, tmp_path, **kw):
    args = {"run_dir": tmp_path, "config": {}, "is_main": True, "total_steps": 30, "group": None}
    return make_loggers(names, **{**args, **kw})


def test_unknown_logger_is_a_config_error_on_every_rank(tmp_path):
    for is_main in (True, False):
        with pytest.raises(ConfigError, match="logger='tensorboard': expected console, jsonl"):
            _make(["console", "tensorboard"], tmp_path, is_main=is_main)


def test_only_rank_zero_gets_loggers(tmp_path):
    assert _make(["console", "jsonl", "wandb"], tmp_path, is_main=False) == []
    loggers = _make(["jsonl", "console", "jsonl"], tmp_path)
    assert [type(lg) for lg in loggers] == [JsonlLogger, ConsoleLogger]
    close_all(loggers)


def test_wandb_is_imported_only_when_chosen(tmp_path):
    code = (
        "import sys, pathlib; from distrib.loggers import make_loggers; "
        "lg = make_loggers(['console', 'jsonl'], run_dir=pathlib.Path(sys.argv[1]), "
        "config={}, is_main=True, total_steps=None, group=None); "
        "print('wandb' in sys.modules)"
    )
    proc = run_cli(sys.executable, "-c", code, str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"


def test_console_without_tty_prints_plain_lines():
    out = io.StringIO()
    console = ConsoleLogger(total_steps=30, stream=out)
    for row in ROWS:
        console.log(row, row["step"])
    console.write("epoch 3 done")
    console.close()
    text = out.getvalue()
    assert "\r" not in text and "\x1b" not in text
    lines = text.splitlines()
    assert len(lines) == 4 and lines[-1] == "epoch 3 done"
    assert re.fullmatch(
        r"step 10/30  epoch 0  loss 2\.5  samples/s 5400\.2  lr 0\.1  eta \S+", lines[0]
    ), lines[0]
    assert lines[2].startswith("step 30/30  epoch 2  loss 0.1234  samples/s 5800.8  lr 0.025")


class _FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_console_on_a_tty_draws_a_tqdm_bar():
    out = _FakeTerminal()
    console = ConsoleLogger(total_steps=30, stream=out)
    assert isinstance(console._bar, tqdm)
    for row in ROWS:
        console.log(row, row["step"])
    assert console._bar.n == 30
    console.write("epoch 3 done")
    console.close()
    text = out.getvalue()
    assert "\r" in text and "30/30" in text and "loss 0.1234" in text
    assert "epoch 3 done\n" in text


def test_jsonl_round_trips_and_appends_on_resume(tmp_path):
    first = JsonlLogger(tmp_path / "metrics.jsonl")
    for row in ROWS[:2]:
        first.log(row, row["step"])
    # No close: a killed job. Every line is already on disk.
    assert read_jsonl(tmp_path / "metrics.jsonl") == ROWS[:2]
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 25, "lo')  # torn by the kill
    resumed = _make(["jsonl"], tmp_path, start_step=20)  # resumed from step 20
    log_all(resumed, {**ROWS[2], "bad": math.nan}, ROWS[2]["step"])
    close_all(resumed)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 4 and lines[2] == '{"step": 25, "lo'
    assert json.loads(lines[3]) == {**ROWS[2], "bad": None}
    assert read_jsonl(tmp_path / "metrics.jsonl") == [*ROWS[:2], {**ROWS[2], "bad": None}]
    first.close()


def test_wandb_mode_follows_the_environment():
    key = "k" * 40
    assert wandb_mode({}) == "offline"
    assert wandb_mode({"WANDB_API_KEY": key}) == "online"
    assert wandb_mode({"WANDB_API_KEY": key, "WANDB_MODE": "offline"}) == "offline"
    assert wandb_mode({"WANDB_MODE": "disabled"}) == "disabled"


@pytest.fixture
def wandb_offline(tmp_path, monkeypatch) -> Path:
    """Offline wandb with every wandb folder under ``tmp_path``; returns the run dir."""
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    for var in ("WANDB_DIR", "WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb_home" / var.lower()))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_RUN_ID", raising=False)
    return tmp_path / "run"


def _wandb_files(run_dir: Path) -> list[Path]:
    return sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb"))


def test_wandb_offline_history_and_resume(wandb_offline):
    run_dir = wandb_offline
    [logger] = _make(["wandb"], run_dir, config={"lr": 0.1}, group="sweep-a")
    for row in ROWS:
        logger.log(row, row["step"])
    logger.close()
    [path] = _wandb_files(run_dir)
    assert len(list(run_dir.glob("wandb/offline-run-*"))) == 1
    run_id = (run_dir / "wandb_run_id").read_text().strip()
    assert path.name == f"run-{run_id}.wandb"
    history = read_history(path)
    assert [{k: v for k, v in h.items() if not k.startswith("_")} for h in history] == [
        {k: v for k, v in row.items() if k != "step"} for row in ROWS
    ]
    assert [h["_step"] for h in history] == [10, 20, 30]

    resumed = WandbLogger(run_dir=run_dir, config={"lr": 0.1})
    resumed.log(ROWS[2], 40)
    resumed.close()
    assert resumed.run_id == run_id
    assert {p.name for p in _wandb_files(run_dir)} == {f"run-{run_id}.wandb"}


def _child_commands() -> list[str]:
    """The executables of this process's live children (from /proc)."""
    import os

    found = []
    for proc in Path("/proc").iterdir():
        try:
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if proc.name.isdigit() and ppid == os.getpid():
                found.append((proc / "cmdline").read_bytes().split(b"\0")[0].decode())
        except (OSError, ValueError, IndexError):
            continue
    return found


def test_wandb_close_returns_only_after_wandb_has_written_the_run(wandb_offline):
    # Seen in CI: right after close() the run's .wandb file held only its 7-byte header.
    # run.finish() returns when wandb's service process has received the run's end, not when
    # it has written it; close() must wait for that process to flush and exit.
    [logger] = _make(["wandb"], wandb_offline, config={"lr": 0.1})
    assert any("wandb-core" in c for c in _child_commands())  # what close() has to wait for
    logger.log(ROWS[0], 10)
    logger.close()
    assert not any("wandb-core" in c for c in _child_commands())
    [path] = _wandb_files(wandb_offline)
    assert [h["loss"] for h in read_history(path)] == [2.5]


def test_wandb_never_writes_the_api_key(wandb_offline, monkeypatch):
    sentinel = "SENTINEL-" + "0123456789abcdef" * 2
    monkeypatch.setenv("WANDB_API_KEY", sentinel)  # WANDB_MODE=offline still wins
    config = {"wandb": {"api_key": sentinel}, "note": f"key={sentinel}", "lr": 0.1}
    [logger] = _make(["wandb"], wandb_offline, config=config)
    logger.log(ROWS[0], 10)
    logger.close()
    files = [p for p in wandb_offline.rglob("*") if p.is_file()]
    assert _wandb_files(wandb_offline) and len(files) > 3
    for p in files:
        assert sentinel.encode() not in p.read_bytes(), p
    assert b"<redacted>" in _wandb_files(wandb_offline)[0].read_bytes()  # the config was stored


def test_a_logger_that_fails_is_reported_once_and_skipped_not_fatal(caplog):
    # Seen on the SLURM preemption test: SIGTERM killed wandb's service process, the next
    # wandb.log raised ConnectionResetError, and the preempted job never wrote its checkpoint.
    from distrib.loggers import log_all

    class Broken:
        calls = 0

        def log(self, metrics, step):  # type: ignore[no-untyped-def]
            Broken.calls += 1
            raise ConnectionResetError("Connection lost")

        def close(self) -> None:
            pass

    class Kept:
        rows: list = []

        def log(self, metrics, step):  # type: ignore[no-untyped-def]
            Kept.rows.append(step)

        def close(self) -> None:
            pass

    loggers = [Broken(), Kept()]
    with caplog.at_level("WARNING"):
        for step in (1, 2, 3):
            log_all(loggers, {"loss": 1.0}, step)
    assert Broken.calls == 1 and Kept.rows == [1, 2, 3]
    warned = [r.getMessage() for r in caplog.records if "Broken failed" in r.getMessage()]
    expected = "Broken failed (ConnectionResetError: Connection lost); no more metrics go there"
    assert warned == [expected + " in this run"]
