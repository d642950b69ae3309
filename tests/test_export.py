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

from distrib.cli.export import main
from distrib.config import build, to_config
from distrib.trainer.loop import fit

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
x = torch.linspace(0, 1, 5 * 64).reshape(5, 1, 8, 8)
torch.save([m(x[:1]).detach(), m(x).detach()], sys.argv[3])  # any batch size, not only 1
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
    # the reference, rebuilt here without distrib.cli.export: a bug there cannot cancel out
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    model = build(state["config"]["model"])
    model.load_state_dict(state["model"])
    x = torch.linspace(0, 1, 5 * 64).reshape(5, 1, 8, 8)
    one, five = torch.load(out)
    torch.testing.assert_close(one, model.eval()(x[:1]).detach(), atol=1e-6, rtol=0)
    torch.testing.assert_close(five, model.eval()(x).detach(), atol=1e-6, rtol=0)


def test_a_run_directory_exports_its_best_checkpoint_unless_told_the_latest(
    run_dir: Path, tmp_path: Path
):
    from distrib.checkpoint import Checkpointer

    src = run_dir / "checkpoints" / (run_dir / "checkpoints" / "latest").read_text().strip()
    state = torch.load(src, weights_only=True)
    ckpts = Checkpointer(tmp_path / "run" / "checkpoints", keep_last=3, best_metric="eval_acc")
    for step, acc in ((1, 0.5), (2, 0.9), (3, 0.7)):  # the best is not the newest
        ckpts.save(state, step=step, epoch=step, metrics={"eval_acc": acc})
    for which, name, why in (
        ([], "step-00000002.pt", "the best by eval_acc (max): 0.9"),
        (["--which", "latest"], "step-00000003.pt", "the newest good checkpoint"),
    ):
        out = tmp_path / f"{name}.pt"
        res = run_cli(PY, "-m", "distrib", "convert", str(tmp_path / "run"), "--out", str(out),
                      *which)  # fmt: skip
        assert res.returncode == 0, res.stderr
        assert res.stdout.strip().endswith(f"checkpoints/{name}: {why})"), res.stdout


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


class Branchy(torch.nn.Module):
    """Data-dependent control flow: torch.export refuses it (TorchScript's trace takes a branch)."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x) if x.sum() > 0 else -self.linear(x)


def test_a_model_torch_cannot_export_is_torchs_first_line_and_the_other_format(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    ckpt = tmp_path / "step-1.pt"
    config = {"model": {"_target_": f"{__name__}.Branchy"}}
    torch.save({"model": Branchy().state_dict(), "config": config}, ckpt)
    assert main([str(ckpt), "--format", "exported", "--example-input-shape", "1,4"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("distrib: error: exported export failed: Could not guard on data-")
    assert err.endswith("; try --format torchscript") and len(err.splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-1.pt"]  # nothing half-written


def test_what_is_not_a_distrib_checkpoint_or_shape_is_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    weights = tmp_path / "weights.pt"
    torch.save({"model": Branchy().state_dict()}, weights)  # no config: not from distrib
    assert main([str(weights)]) == 2
    assert capsys.readouterr().err == (
        f"distrib: error: {weights}: not a distrib checkpoint (no model config and weights)\n"
    )
    wrong = tmp_path / "wrong.pt"
    config = {"model": {"_target_": "distrib.models.SmallCNN", "width": 8}}
    torch.save({"model": Branchy().state_dict(), "config": config}, wrong)
    assert main([str(wrong)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"distrib: error: {wrong}: its model does not rebuild here: ")
    assert len(err.splitlines()) == 1
    assert main([str(weights), "--example-input-shape", "1,x"]) == 2
    assert "--example-input-shape 1,x: expected sizes >= 1" in capsys.readouterr().err


def test_a_checkpoint_whose_config_names_a_loader_is_refused_and_its_payload_never_runs(
    run_dir: Path, tmp_path: Path
):
    from test_targets import payload

    from distrib.checkpoint import Checkpointer

    path, marker = payload(tmp_path)
    src = run_dir / "checkpoints" / (run_dir / "checkpoints" / "latest").read_text().strip()
    state = torch.load(src, weights_only=True)
    evil = {"_target_": "torch.load", "f": str(path), "weights_only": False}
    for key in ("model", "data"):  # the model, or the eval set export takes a sample of
        config = dict(state["config"])
        config[key] = evil if key == "model" else {"train": evil, "eval": evil}
        ckpts = Checkpointer(tmp_path / key / "checkpoints", keep_last=1)
        ckpts.save({**state, "config": config}, step=1, epoch=1)
        res = run_cli(PY, "-m", "distrib", "export", str(tmp_path / key))
        assert res.returncode == 2, res.stderr
        said = res.stderr.strip()
        assert said.startswith("distrib: error: ") and "\n" not in said, said
        where = "model" if key == "model" else "data.eval"
        assert f"{where}._target_=torch.load: refused: it loads or runs code" in said
        assert not marker.exists()
