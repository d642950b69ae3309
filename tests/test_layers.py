"""The package's layers, as `pyproject.toml`'s import-linter contracts state them.

`make lint` runs ``lint-imports`` too; here it is part of `make test`, and the contracts are
shown to bite: an import planted from the launch side into the trainer breaks them.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from helpers import ROOT

LINT = str(Path(sys.executable).parent / "lint-imports")


def _lint(where: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [LINT, "--no-cache"], cwd=where, capture_output=True, text=True, timeout=120,
        env={"PATH": str(Path(sys.executable).parent), "PYTHONPATH": str(where)},
    )  # fmt: skip


def test_every_contract_is_kept():
    done = _lint(ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout
    for name in ("the launch side never imports the worker side", "rooms import downwards only",
                 "no import cycle between sibling modules or packages"):  # fmt: skip
        assert name in done.stdout


def _planted(tmp_path: Path, module: str, line: str) -> subprocess.CompletedProcess:
    shutil.copytree(
        ROOT / "distrib", tmp_path / "distrib", ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    with open(tmp_path / module, "a") as f:
        f.write(f"\n{line}  # planted\n")
    return _lint(tmp_path)


def test_an_import_of_the_trainer_from_the_launch_side_breaks_the_contract(tmp_path: Path):
    done = _planted(tmp_path, "distrib/launch/agent.py", "from distrib.trainer import loop")
    assert done.returncode == 1, done.stdout[-3000:]
    assert "the launch side never imports the worker side BROKEN" in done.stdout
    assert "distrib.launch.agent -> distrib.trainer.loop" in done.stdout


def test_an_import_from_the_ground_floor_upwards_breaks_the_layers(tmp_path: Path):
    done = _planted(tmp_path, "distrib/errors.py", "import distrib.distributed.process_group")
    assert done.returncode == 1, done.stdout[-3000:]
    assert "rooms import downwards only BROKEN" in done.stdout


def test_a_cycle_between_two_rooms_breaks_the_contract(tmp_path: Path):
    # the old circle: the SLURM rendezvous importing the training loop
    done = _planted(tmp_path, "distrib/distributed/slurm.py", "from distrib.trainer import loop")
    assert done.returncode == 1, done.stdout[-3000:]
    assert "no import cycle between sibling modules or packages, at any depth BROKEN" in done.stdout
