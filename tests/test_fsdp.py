"""``trainer.strategy=fsdp``: FSDP2 trains as DDP and as one worker does, its sharded
checkpoints keep every promise of the whole-model ones, and a resume may change the world size
or the strategy."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import ROOT, run_cli, spawn, start, train_cli
from torch import nn

from distrib.config import to_config
from distrib.errors import ConfigError
from distrib.parallel.blocks import find_blocks
from distrib.parallel.fsdp import check_available
from distrib.trainer.loop import fit

PY = sys.executable


def _values(model: dict, data: dict, **trainer: object) -> dict:
    return {
        "model": model,
        "data": data,
        "optim": {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.05},
        "trainer": {"epochs": 2, "global_batch_size": 32, "log_every": 1, "seed": 3, **trainer},
    }


def _synthetic(split: str) -> dict:
    return {"_target_": "distrib.datasets.synthetic", "split": split, "size": 1000, "features": 16}


def _chars(split: str) -> dict:
    return {"_target_": "distrib.datasets.chars", "split": split, "context": 16, "size": 500}


MLP = {"_target_": "distrib.models.MLP", "in_features": 16, "hidden": 32, "depth": 2}
TINY_GPT = {"_target_": "distrib.models.TinyGPT", "context": 16, "dim": 32, "heads": 2}
GPT2 = {"_target_": "hf_gpt2.models.gpt2", "n_layer": 2, "n_embd": 32, "n_head": 2}
CASES = {
    "mlp": (MLP, {"train": _synthetic("train"), "eval": _synthetic("test")}, {}),
    "tiny_gpt": (
        TINY_GPT,
        {"train": _chars("train"), "eval": _chars("test")},
        {"task": {"_target_": "distrib.tasks.NextToken"}},
    ),
    "gpt2": (
        GPT2,
        {"train": _chars("train"), "eval": _chars("test")},
        {"task": {"_target_": "distrib.tasks.ModelLoss"}},
    ),
}


def _fit(values: dict) -> dict:
    return fit(to_config(values), None, return_weights=True)


def _losses(result: dict) -> list[float]:
    return [h["loss"] for h in result["history"] if "loss" in h]


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_fsdp_trains_as_ddp_and_as_one_worker(case: str, monkeypatch: pytest.MonkeyPatch):
    if case == "gpt2":
        pytest.importorskip("transformers")
        monkeypatch.syspath_prepend(str(ROOT / "examples"))  # spawned workers get sys.path
    model, data, extra = CASES[case]
    no_best = {"best_metric": None}  # eval_acc is the classifier's; LMs report eval_loss
    values = {**_values(model, data, max_steps=50, epochs=20, checkpoint=no_best), **extra}
    (one,) = spawn(_fit, values, world_size=1)
    ddp = spawn(_fit, values, world_size=2)
    fsdp = spawn(_fit, {**values, "trainer": {**values["trainer"], "strategy": "fsdp"}})
    base = _losses(one)
    assert len(base) == 50
    for other in (ddp[0], fsdp[0]):
        for a, b in zip(base, _losses(other), strict=True):
            assert abs(a - b) <= 1e-5 * abs(a), (case, base.index(a))
        for k, w in one["state_dict"].items():
            assert torch.allclose(other["state_dict"][k], w, atol=1e-4, rtol=0), k
    assert one["state_dict"].keys() == fsdp[0]["state_dict"].keys()  # the plain model's names


def _whole_into_shards(path: str) -> tuple[bool, bool]:
    """Each rank: a whole-model checkpoint (what 1 worker writes) restored into FSDP shards;
    is every parameter and every AdamW moment back, gathered whole?"""
    import distrib
    from distrib.models import MLP as Net
    from distrib.trainer.state import restore, sharded_state

    ctx = distrib.init()
    saved = torch.load(path, weights_only=True)
    model = distrib.wrap(Net(16, 32, 2), strategy="fsdp")
    optimizer = torch.optim.AdamW(model.parameters())
    ckpt = {**saved, "format_version": 1, "epoch": 0, "step": 0, "consumed": 0, "world_size": 1}
    restore(ckpt, Path(path), model=model, optimizer=optimizer, scheduler=None, ctx=ctx, seed=0)
    state = sharded_state(model, optimizer)
    saved = torch.load(path, weights_only=True)  # restore may have turned its tensors into shards
    names = list(saved["model"])
    weights = all(torch.equal(state["model"][n].full_tensor(), saved["model"][n]) for n in names)
    moments = all(
        torch.equal(state["optim"]["state"][n][k].full_tensor(), saved["optimizer"]["state"][i][k])
        for i, n in enumerate(n for n, _ in distrib.unwrap(model).named_parameters())
        for k in ("exp_avg", "exp_avg_sq")
    )
    return weights, moments


@pytest.mark.slow
def test_a_whole_model_checkpoint_restores_weights_and_optimizer_state_into_shards(tmp_path):
    from distrib.models import MLP as Net

    torch.manual_seed(0)
    model = Net(16, 32, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.randn(4, 16)).sum().backward()
    optimizer.step()
    path = tmp_path / "step-00000001.pt"
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, path)
    assert spawn(_whole_into_shards, str(path)) == [(True, True), (True, True)]


def _one_step_grads() -> dict[str, torch.Tensor]:
    """Each rank: the same model under DDP and under FSDP, one backward on this rank's half of
    one batch; FSDP's gradient shards gathered whole."""
    import distrib
    from distrib.models import MLP as Net

    ctx = distrib.init()
    torch.manual_seed(0)
    x, y = torch.randn(8, 16), torch.randint(0, 10, (8,))
    x, y = x.chunk(ctx.world_size)[ctx.rank], y.chunk(ctx.world_size)[ctx.rank]
    grads = {}
    for strategy in ("ddp", "fsdp"):
        torch.manual_seed(1)
        model = distrib.wrap(Net(16, 32, 2), strategy=strategy)
        nn.functional.cross_entropy(model(x), y).backward()
        for name, p in distrib.unwrap(model).named_parameters():
            g = p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad
            grads[f"{strategy}:{name}"] = g.detach().clone()
    return grads


@pytest.mark.slow
def test_fsdp_averages_gradients_as_ddp_does():
    # torch 2.7's FSDP2 on gloo summed the gradients (pytorch issue 162338): 2x DDP's
    for grads in spawn(_one_step_grads, world_size=2):
        names = [k[4:] for k in grads if k.startswith("ddp:")]
        assert names
        for name in names:
            assert torch.allclose(grads[f"fsdp:{name}"], grads[f"ddp:{name}"], atol=1e-7), name


def test_a_torch_without_a_working_fsdp2_is_refused_in_one_line():
    for old in ((2, 7), (2, 8)):
        with pytest.raises(ConfigError, match=r"trainer.strategy=fsdp needs torch >= 2.9"):
            check_available(old)
    check_available((2, 9))


def test_blocks_named_or_found():
    from distrib.models import MLP as Net
    from distrib.models import TinyGPT

    gpt = TinyGPT(context=8, dim=16, heads=2)
    assert [type(b).__name__ for b in find_blocks(gpt, [])] == ["TransformerEncoderLayer"] * 2
    assert [type(b).__name__ for b in find_blocks(Net(16, 32, 2), [])] == ["Linear"] * 3
    assert len(find_blocks(gpt, ["LayerNorm"])) == 5  # 2 per block and the final norm
    with pytest.raises(ConfigError) as e:
        find_blocks(gpt, ["GPT2Block"])
    assert str(e.value) == (
        "trainer.blocks=['GPT2Block']: no module of the model (TinyGPT) has that class; "
        "its classes: Dropout, Embedding, LayerNorm, Linear, ModuleList, MultiheadAttention, "
        "NonDynamicallyQuantizableLinear, TinyGPT, TransformerEncoder, TransformerEncoderLayer"
    )


@pytest.mark.parametrize(
    ("overrides", "line"),
    [
        (
            ["trainer.strategy=zero3"],
            "distrib: error: trainer.strategy='zero3': expected ddp or fsdp",
        ),
        (
            ["trainer.strategy=fsdp", "trainer.ddp.sync_batchnorm=true"],
            "distrib: error: trainer.ddp.sync_batchnorm=True: expected false under "
            "trainer.strategy=fsdp (FSDP2 has no SyncBatchNorm)",
        ),
    ],
)
def test_bad_strategy_settings_are_one_line_before_any_worker(
    tmp_path: Path, overrides: list[str], line: str
):
    res = run_cli(PY, "-m", "distrib.train", "launcher.nproc=2", *overrides, cwd=tmp_path)
    assert res.returncode == 2 and res.stderr.strip() == line, res.stderr[-2000:]
    assert not (tmp_path / "outputs").exists()


@pytest.mark.slow
def test_blocks_that_the_model_lacks_end_the_run_in_one_line_naming_its_classes(tmp_path: Path):
    res = train_cli(
        tmp_path / "run", "model=mlp", "data=synthetic", "trainer.strategy=fsdp",
        "trainer.blocks=[GPT2Block]", "trainer.epochs=1",
    )  # fmt: skip
    assert res.returncode == 1
    assert (
        res.stderr.strip()
        .splitlines()[-1]
        .endswith(
            "trainer.blocks=['GPT2Block']: no module of the model (MLP) has that class; its "
            "classes: Flatten, Linear, MLP, ReLU, Sequential"
        )
    ), res.stderr[-2000:]


# --- sharded checkpoints, end to end ---

RUN = [
    "model=mlp",
    "model.in_features=16",
    "+model.dropout=0.2",  # random numbers after every resume: every rank's RNG is restored
    "data.train._target_=fixtures.Recorded",
    "data.eval._target_=fixtures.Recorded",
    "trainer.strategy=fsdp",
    "optim=adamw",  # optimizer state, sharded with the parameters
    "trainer.global_batch_size=32",  # 16 steps an epoch, 16 samples per rank and step
    "trainer.log_every=4",
    "trainer.deterministic=true",
    "trainer.checkpoint.keep_last=10",
]


def train(run_dir: Path, *extra: str, nproc: int = 2, check: bool = True):
    res = train_cli(run_dir, *RUN, *extra, nproc=nproc)
    if check:
        assert res.returncode == 0, res.stderr[-3000:]
    return res


def _records(d: Path) -> list[int]:
    return [int(x) for p in d.glob("rank*.txt") for x in p.read_text().split()]


def _full(path: Path) -> dict:
    """A checkpoint's model and optimizer as one plain dict, whatever its kind."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    if path.suffix == ".dcp":
        out = path.parent / f"{path.name}.full.pt"
        dcp_to_torch_save(path, out)
        return torch.load(out, weights_only=True)
    return torch.load(path, weights_only=True)


@pytest.mark.slow
@pytest.mark.parametrize(("before", "after"), [(2, 1), (1, 2), (2, 3)])
def test_a_resume_at_another_world_size_sees_every_sample_once(
    tmp_path: Path, before: int, after: int
):
    run_dir, first, second = tmp_path / "run", tmp_path / "a", tmp_path / "b"
    first.mkdir(), second.mkdir()
    batch = "trainer.global_batch_size=48"  # 1, 2 and 3 workers: 10 steps of 512 samples
    # and evaluation in batches of 14: 3 ranks hold 43, 43 and 42 eval samples, 4 batches and 3,
    # so under FSDP the short rank must still join the 4th forward's gathers (or all hang)
    batch += " trainer.eval_batch_size=14"
    train(run_dir, *batch.split(), "trainer.max_steps=3", f"+data.train.record_dir={first}",
          nproc=before)  # fmt: skip
    kind = ".dcp" if before > 1 else ".pt"  # one worker holds the whole model
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == f"step-00000003{kind}"
    res = train(run_dir, *batch.split(), "trainer.epochs=1", f"+data.train.record_dir={second}",
                nproc=after)  # fmt: skip
    assert f"step-00000003{kind}: epoch 1, step 3, 144 samples" in res.stdout
    assert f"written by {before} worker(s)" in res.stdout
    seen = _records(first) + _records(second)
    assert len(seen) == len(set(seen)) == 480  # every sample of the epoch once (32 dropped)
    assert (run_dir / "checkpoints" / "latest").read_text().strip().startswith("step-00000010")


@pytest.mark.slow
def test_sigkill_of_a_worker_under_fsdp_restarts_and_ends_equal_to_an_uninterrupted_run(
    tmp_path: Path,
):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    train(straight, "trainer.epochs=2", "trainer.checkpoint.every_steps=5")
    res = train(
        killed,
        "trainer.epochs=2",
        "trainer.checkpoint.every_steps=5",
        "launcher.max_restarts=1",
        "+data.train.kill_at=200",
        "+data.train.kill_rank=1",
        "+data.train.kill_attempt=0",
    )  # fmt: skip  (rank 1's 200th sample: step 13 of 32, 16 samples per rank a step)
    assert "resumed from" in res.stdout and "step-00000010.dcp" in res.stdout, res.stdout[-2000:]
    a, b = (_full(d / "checkpoints" / "step-00000032.dcp") for d in (straight, killed))
    for key in a:
        for name, value in a[key].items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(value, b[key][name]), (key, name)


@pytest.mark.slow
def test_a_corrupt_shard_is_named_and_the_previous_checkpoint_resumes(tmp_path: Path):
    run_dir = tmp_path / "run"
    train(run_dir, "trainer.max_steps=6", "trainer.checkpoint.every_steps=3")
    newest = run_dir / "checkpoints" / "step-00000006.dcp"
    shard = newest / "__1_0.distcp"
    shard.write_bytes(shard.read_bytes()[:-100])  # truncated
    res = train(run_dir, "trainer.max_steps=9")
    assert f"{shard}: size mismatch" in res.stderr + res.stdout
    assert "step-00000003.dcp: epoch" in res.stdout  # the previous good one
    assert shard.exists()  # kept for a look, never overwritten


@pytest.mark.slow
def test_sigkill_during_a_sharded_save_leaves_the_previous_checkpoint_resumable(tmp_path: Path):
    # a model big enough that a save takes a while (~40 MB of parameters and AdamW state)
    run_dir = tmp_path / "run"
    cmd = [PY, "-m", "distrib.train", *RUN, "model.hidden=1024", "launcher.nproc=2",
           "trainer.checkpoint.every_steps=1", "trainer.epochs=1",
           f"hydra.run.dir={run_dir}"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT / "tests"), "WANDB_MODE": "disabled"}
    proc = start(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    ckpts = run_dir / "checkpoints"
    deadline = time.monotonic() + 120
    while not (list(ckpts.glob("step-*.dcp")) and list(ckpts.glob(".tmp-step-*.dcp"))):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.002)
    os.killpg(proc.pid, signal.SIGKILL)  # the launcher and both workers, mid-save
    proc.wait()
    committed = sorted(p.name for p in ckpts.glob("step-*.dcp"))
    res = train(run_dir, "model.hidden=1024", "trainer.max_steps=0", "trainer.epochs=1")
    resumed = res.stdout.split("resumed from ", 1)[1].split(":", 1)[0]
    assert Path(resumed).name in committed  # a committed one, verified
    assert not list(ckpts.glob(".tmp-*"))  # the killed save's leftovers are cleared


@pytest.mark.slow
def test_a_sharded_checkpoint_exports_to_one_file_plain_torch_loads(tmp_path: Path):
    run_dir = tmp_path / "run"
    train(run_dir, "trainer.max_steps=4")
    out = tmp_path / "model.pt"
    res = run_cli(PY, "-m", "distrib", "convert", str(run_dir), "--out", str(out))
    assert res.returncode == 0, res.stderr
    assert "step-00000004.dcp" in res.stdout
    # a process that cannot import distrib loads it with torch alone
    code = (
        "import sys, torch; sys.modules['distrib'] = None; "
        "sd = torch.load(sys.argv[1], weights_only=True); "
        "print(sorted(sd), sd['net.1.weight'].shape)"
    )
    loaded = subprocess.run([PY, "-c", code, str(out)], capture_output=True, text=True, timeout=60)
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.strip() == (
        "['net.1.bias', 'net.1.weight', 'net.4.bias', 'net.4.weight', 'net.7.bias', "
        "'net.7.weight'] torch.Size([256, 16])"
    )
    full = _full(run_dir / "checkpoints" / "step-00000004.dcp")["model"]
    sd = torch.load(out, weights_only=True)
    assert sd.keys() == full.keys() and all(torch.equal(sd[k], full[k]) for k in sd)


@pytest.mark.slow
def test_accumulation_under_fsdp_matches_the_full_batch_on_one_worker():
    # the non-final micro-steps skip the reduce-scatter (set_requires_gradient_sync(False));
    # the last one reduces the summed gradients: the same step as one full batch
    values = _values(MLP, CASES["mlp"][1], epochs=1)
    (full,) = spawn(_fit, values, world_size=1)
    accum = spawn(_fit, {**values, "trainer": {**values["trainer"], "strategy": "fsdp",
                                               "grad_accum": 2}})  # fmt: skip
    for a, b in zip(_losses(full), _losses(accum[0]), strict=True):
        assert abs(a - b) <= 1e-5 * abs(a)
