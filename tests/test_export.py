"""``python -m distrib export``: a checkpoint's model, loadable with torch alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import run_cli

from distrib.config import to_config
from distrib.export import load
from distrib.loop import fit

PY = sys.executable


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A digits run of a few steps (the default model and data), its checkpoint written."""
    out = tmp_path_factory.mktemp("trained") / "run"
    values = {
        "model": {"_target_": "distrib.models.SmallCNN", "width": 8},
        "data": {
            "train": {"_target_": "distrib.datasets.digits", "split": "train"},
            "eval": {"_target_": "distrib.datasets.digits", "split": "test"},
        },
        "optim": {"_target_": "torch.optim.AdamW", "_partial_": True, "lr": 3e-3},
        "trainer": {"max_steps": 3, "log_every": 100, "device": "cpu"},
        "logger": [],
    }
    fit(to_config(values), out)
    return out


LOADER = """
import sys
sys.modules["distrib"] = None  # distrib is installed in this venv: make any import of it fail
import torch
path, fmt = sys.argv[1], sys.argv[2]
m = torch.jit.load(path) if fmt == "torchscript" else torch.export.load(path).module()
x = torch.linspace(0, 1, 64).reshape(1, 1, 8, 8)
torch.save(m(x).detach(), sys.argv[3])
"""


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["torchscript", "exported"])
def test_an_exported_model_loads_without_distrib_and_gives_the_same_outputs(
    run_dir: Path, fmt: str, tmp_path: Path
):
    res = run_cli(PY, "-m", "distrib", "export", str(run_dir), "--format", fmt)
    assert res.returncode == 0, res.stderr[-3000:]
    ckpt = run_dir / "checkpoints" / (run_dir / "checkpoints" / "latest").read_text().strip()
    suffix = ".ts.pt" if fmt == "torchscript" else ".pt2"
    artifact = ckpt.with_name(ckpt.stem + suffix)
    meta = json.loads(Path(f"{artifact}.json").read_text())
    assert meta["input_shape"] == [1, 1, 8, 8] and meta["format"] == fmt
    import hashlib

    assert meta["checkpoint_sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    # a fresh interpreter that cannot import distrib: -I, no PYTHONPATH, elsewhere, and the
    # import blocked (the venv has distrib installed)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    (tmp_path / "load.py").write_text(LOADER)
    out = tmp_path / "out.pt"
    proc = subprocess.run(
        [PY, "-I", "load.py", str(artifact), fmt, str(out)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    model, _ = load(ckpt)
    expected = model(torch.linspace(0, 1, 64).reshape(1, 1, 8, 8)).detach()
    torch.testing.assert_close(torch.load(out), expected, atol=1e-6, rtol=0)


def test_a_bad_checkpoint_path_is_one_line_exit_2(tmp_path: Path):
    res = run_cli(PY, "-m", "distrib", "export", str(tmp_path / "nope.pt"))
    assert res.returncode == 2
    assert res.stderr.strip() == (
        f"distrib: error: {tmp_path / 'nope.pt'}: no such checkpoint file or run directory"
    )
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    res = run_cli(PY, "-m", "distrib", "export", str(junk))
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1
    assert res.stderr.startswith(f"distrib: error: {junk}")
    assert not list(tmp_path.glob("*.ts.pt*"))  # nothing half-written
