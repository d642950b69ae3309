"""The commands a new user copies -- the launchers and the README's -- work on a fresh clone:
the launchers without an activated venv, the README's after its one `. .venv/bin/activate`."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ROOT

from distrib.cli.train import preflight

FAST = ["trainer.epochs=1", "trainer.max_steps=3", "trainer.log_every=100"]
VENV = Path(sys.executable).parent.parent


def bare_env(**extra: str) -> dict[str, str]:
    """A shell as a new user opens it: no venv on PATH, no VIRTUAL_ENV."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["PATH"] = "/usr/local/bin:/usr/bin:/bin"
    env["WANDB_MODE"] = "disabled"
    if not (ROOT / ".venv" / "bin" / "python").exists():  # tests run from another env
        env["PYTHON"] = sys.executable
    return {**env, **extra}


def sh(command: str, cwd: Path, **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", "-c", command], cwd=cwd, env=bare_env(**extra), capture_output=True,
        text=True, timeout=180, stdin=subprocess.DEVNULL,
    )  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("script", ["local.sh", "torchrun.sh"])
def test_the_launchers_work_without_activating_the_venv(tmp_path: Path, script: str):
    res = sh(f"{ROOT}/launchers/{script} 2 {' '.join(FAST)}", tmp_path, RUN="fresh")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "training on 2 worker(s)" in res.stdout
    assert "final evaluation:" in res.stdout


def readme_block(heading: str) -> list[str]:
    """The command lines of the first bash block under ``heading`` in README.md."""
    text = (ROOT / "README.md").read_text()
    section = text.split(heading, 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block, heading
    lines = [ln.split("  #", 1)[0].strip() for ln in block.group(1).splitlines()]
    return [ln for ln in lines if ln and not ln.startswith("#")]


def test_the_readme_says_to_activate_the_venv_before_its_commands():
    text = (ROOT / "README.md").read_text()
    activate = text.index(". .venv/bin/activate")
    assert activate < text.index("python -m distrib.train")


@pytest.mark.slow
def test_the_readme_trainer_commands_run_as_written_after_activating(tmp_path: Path):
    """The first line and the torchrun line run for real, after the README's activation (what
    a fresh clone lacked: torch and torchrun on PATH); every other line's overrides must pass
    the checks a run starts with, so no line in the README names a key or value that fails."""
    commands = readme_block("### The trainer (hydra)")
    assert len(commands) >= 6 and commands[0] == "python -m distrib.train"
    activate = f". {VENV}/bin/activate"  # the README's `. .venv/bin/activate`, from here
    real = [c for c in commands if c == commands[0] or c.startswith("torchrun ")]
    assert len(real) == 2
    for command in real:
        res = sh(f"{activate} && {command} {' '.join(FAST)}", tmp_path)
        assert res.returncode == 0, (command, res.stderr[-3000:])
        assert "final evaluation:" in res.stdout, command
    for command in commands:
        if command in real:
            continue
        assert command.startswith("python -m distrib.train "), command
        words = [w for w in command.split()[3:] if w != "-m"]
        preflight([w.split(",")[0] for w in words])  # a sweep: its first point
