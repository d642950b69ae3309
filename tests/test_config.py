from __future__ import annotations

import pytest

import distrib
from distrib.cli.train import compose, preflight
from distrib.config import Config, check_targets, run_id, to_config


def test_defaults_compose_into_the_schema():
    cfg = preflight([])
    assert isinstance(cfg, Config)
    assert cfg.model["_target_"] == "distrib.models.SmallCNN"
    assert cfg.launcher.nproc == 1 and cfg.trainer.global_batch_size == 64


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optim.lr=abc", "optim.lr='abc': expected float (torch.optim.AdamW)"),
        ("trainer.epochs=-1", "trainer.epochs=-1: expected an integer >= 1"),
        # a value of the wrong type, in the words of the key's own range check
        ("trainer.epochs=three", "trainer.epochs='three': expected an integer >= 1"),
        ("trainer.deterministic=maybe", "trainer.deterministic='maybe': expected true or false"),
        ("trainer.seed=x", "trainer.seed='x': expected an integer"),
        ("trainer.foo=1", "trainer.foo: unknown key (known keys: epochs, max_steps,"),
        # +key into a schema node is refused as the plain key is, with the nearest known one
        ("+trainer.epoch=3", "trainer.epoch: unknown key; did you mean trainer.epochs? (known"),
        ("trainer.epoch=3", "trainer.epoch: unknown key; did you mean trainer.epochs? (known"),
        (
            "+trainer.checkpoint.evry_steps=3",
            "trainer.checkpoint.evry_steps: unknown key; did you mean "
            "trainer.checkpoint.every_steps? (known keys: every_steps, every_epoch, keep_last,",
        ),
        # a module that imports but lacks the name: what it defines, not "fix PYTHONPATH"
        (
            "model._target_=distrib.models.TinyGTP",
            "model._target_=distrib.models.TinyGTP: distrib.models has no TinyGTP; did you "
            "mean distrib.models.TinyGPT? (it defines: MLP, SmallCNN, TinyGPT)",
        ),
        # a misspelt argument: the nearest name, not "+model.hiden=..." (which fails next)
        (
            "model.widht=3",
            "model.widht: not an argument of distrib.models.SmallCNN; did you mean "
            "model.width? it takes: in_channels, num_classes, width",
        ),
        (
            "optim.lrr=0.1",
            "optim.lrr: not an argument of torch.optim.AdamW; did you mean optim.lr?",
        ),
        ("optim.amsgrad=true", "optim.amsgrad: unknown key; to add a new key use +optim.amsgrad"),
        (
            "+model.hiden=3",
            "model.hiden=3: expected an argument of distrib.models.SmallCNN: "
            "in_channels, num_classes, width",
        ),
        (
            "+task.task=1",
            "task.task=1: expected an argument of distrib.tasks.Classification: (none) (a "
            "task/*.yaml whose first line is not '# @package _global_'?)",
        ),
        (
            "+model.widt=3",
            "model.widt=3: expected an argument of distrib.models.SmallCNN: in_channels, "
            "num_classes, width (did you mean model.width?)",
        ),
        # the default model's keys left behind by a class override: say how to drop them
        (
            "model._target_=distrib.models.MLP",
            "model.in_channels=1: expected an argument of distrib.models.MLP: in_features, hidden, "
            "depth, num_classes, dropout (a key the new target does not take? drop it: "
            "~model.in_channels)",
        ),
        (
            "model._target_=nope.Net",
            "model._target_=nope.Net: cannot import it (ModuleNotFoundError: No module named "
            "'nope'); run from the directory that holds its package, add that directory to "
            "PYTHONPATH, or pip install -e your project",
        ),
        (
            "task._target_=distrib.tasks.Nope",
            "task._target_=distrib.tasks.Nope: distrib.tasks has no Nope (it defines: ",
        ),
        ("optim.lr=-1", "optim (torch.optim.AdamW): Invalid learning rate: -1"),
        ("launcher.nproc=0", "launcher.nproc=0: expected an integer >= 1"),
        ("trainer.precision=fp8", "trainer.precision='fp8': expected fp32, bf16, fp16"),
        ("model=nope", "Could not find 'model/nope' Available options in 'model': cnn mlp"),
        (
            "trainer.resume=/no/such.pt",
            "trainer.resume='/no/such.pt': expected auto, never or the path of an existing",
        ),
        (
            "trainer.checkpoint.keep_last=0",
            "trainer.checkpoint.keep_last=0: expected an integer >= 1",
        ),
        (
            "logger=[console,tensorboard]",
            "logger='tensorboard': expected a list of console, jsonl, wandb",
        ),
    ],
)
def test_bad_values_are_one_line_naming_the_key(override: str, message: str):
    with pytest.raises(distrib.ConfigError) as info:
        preflight([override])
    text = str(info.value)
    assert "\n" not in text
    assert message in text


def test_global_batch_must_divide_over_the_workers():
    preflight(["launcher.nproc=2", "trainer.global_batch_size=64", "trainer.grad_accum=4"])
    with pytest.raises(distrib.ConfigError, match="trainer.global_batch_size=66"):
        preflight(["launcher.nproc=2", "trainer.global_batch_size=66", "trainer.grad_accum=2"])


def test_user_classes_plug_in_by_target():
    cfg = to_config(compose(["model=mlp", "data=synthetic", "optim=sgd", "optim.lr=0.5"]))
    check_targets(cfg)
    assert cfg.model["_target_"] == "distrib.models.MLP" and cfg.optim["lr"] == 0.5
    assert cfg.data["train"]["size"] == 8192  # interpolations resolved


def test_run_id_is_shared_by_the_workers_of_one_job():
    tr = {"RANK": "1", "TORCHELASTIC_RUN_ID": "abc"}
    assert run_id(tr) == run_id({**tr, "RANK": "0"}) == "torchrun-abc"
    assert run_id({"SLURM_JOB_ID": "7", "SLURM_PROCID": "3"}) == "slurm-7"
    joined = {
        "SLURM_JOB_ID": "7",
        "SLURM_PROCID": "3",
        "RANK": "3",
        "TORCHELASTIC_RUN_ID": "slurm-7",
    }
    assert run_id(joined) == "slurm-7"  # after slurm.join: still the job's directory
    assert (
        run_id(
            {
                "SLURM_JOB_ID": "9",
                "SLURM_PROCID": "0",
                "SLURM_ARRAY_JOB_ID": "8",
                "SLURM_ARRAY_TASK_ID": "2",
            }
        )
        == "slurm-8_2"
    )
    assert "/" in run_id({})  # date/time for a lone process
