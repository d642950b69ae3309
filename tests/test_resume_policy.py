"""A resume may change the schedule and the logging, not the model, optimizer kind or batch."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
from helpers import spawn
from test_loop import small_run

from distrib.config import to_config
from distrib.trainer.loop import fit


def _fit_or_error(values: dict, run_dir: str) -> dict:
    try:
        out = fit(to_config(values), Path(run_dir))
    except Exception as e:  # noqa: BLE001 - the test reads the message
        return {"error": str(e)}
    log = (Path(run_dir) / "logs" / "rank0.log").read_text()
    return {"error": "", "history": out["history"], "log": log}


def _first_then(tmp_path: Path, change) -> dict:  # type: ignore[no-untyped-def]
    values = small_run(epochs=2, max_steps=10, log_every=5)
    assert spawn(_fit_or_error, values, str(tmp_path), world_size=1)[0]["error"] == ""
    again = copy.deepcopy(values)
    again["trainer"]["max_steps"] = 20
    change(again)
    return spawn(_fit_or_error, again, str(tmp_path), world_size=1)[0]


def test_a_new_learning_rate_wins_over_the_restored_optimizer_state(tmp_path: Path):
    # Seen before: optim.lr=0.1 on resume was logged as the old lr (the state restored it).
    res = _first_then(tmp_path, lambda v: v["optim"].update(lr=0.2))
    assert res["error"] == ""
    assert "optim.lr changed on resume: 0.05 -> 0.2 (the new value wins)" in res["log"]
    after = [h["lr"] for h in res["history"] if "lr" in h and h["step"] > 10]
    assert after and all(lr == 0.2 for lr in after)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda v: v["model"].update(hidden=16), "model.hidden was 32 in step-00000010.pt, now 16"),
        (lambda v: v.update(optim={"_target_": "torch.optim.AdamW", "_partial_": True}),
         "optim._target_ was 'torch.optim.SGD' in step-00000010.pt, now 'torch.optim.AdamW'"),
        (lambda v: v["trainer"].update(global_batch_size=64),
         "trainer.global_batch_size was 32 in step-00000010.pt, now 64: a resume cannot change "
         "it (trainer.allow_batch_change=true accepts it)"),
    ],
)  # fmt: skip
def test_a_change_a_resume_cannot_make_is_one_line_naming_the_key(tmp_path, change, message):
    # Seen before: a silent accept (batch), "resumed..." then KeyError: 'momentum' (optimizer),
    # a multi-line load_state_dict traceback that does not name the checkpoint (model).
    res = _first_then(tmp_path, change)
    assert message in res["error"], res["error"]
    assert "\n" not in res["error"]


def test_the_global_batch_may_change_when_the_user_opts_in(tmp_path: Path):
    res = _first_then(
        tmp_path, lambda v: v["trainer"].update(global_batch_size=64, allow_batch_change=True)
    )
    assert res["error"] == ""


def test_a_checkpoint_of_another_model_shape_names_the_file_and_the_first_mismatch(tmp_path):
    # Seen before: a multi-line load_state_dict traceback that does not name the checkpoint.
    import torch

    from distrib.distributed.process_group import current
    from distrib.errors import ConfigError
    from distrib.models import MLP
    from distrib.trainer.state import TrainState, capture, restore

    small, wide = MLP(16, 32), MLP(16, 64)
    opt = torch.optim.SGD(small.parameters(), lr=0.1)
    data = capture(model=small, optimizer=opt, scheduler=None, state=TrainState(),
                   ctx=current(), global_batch=32, config={})  # fmt: skip
    path = tmp_path / "step-00000010.pt"
    with pytest.raises(ConfigError) as err:
        restore(data, path, model=wide, optimizer=torch.optim.SGD(wide.parameters(), lr=0.1),
                scheduler=None, ctx=current(), seed=0)  # fmt: skip
    message = str(err.value)
    assert message.startswith(f"{path}: the model does not match it: size mismatch for net.1.")
    assert "\n" not in message


@pytest.mark.parametrize(
    ("saved", "now", "said"),
    [
        ({"in_features": 16}, {"in_features": 16, "dropout": 0.2}, "model.dropout"),  # added
        ({"in_features": 16, "dropout": 0.2}, {"in_features": 16}, "model.dropout"),  # removed
    ],
)
def test_a_resume_that_adds_or_removes_a_model_key_is_refused_naming_it(saved, now, said):
    from distrib.errors import ConfigError
    from distrib.trainer.resume_policy import check_compatible

    def config(model: dict) -> dict:
        return {
            "model": {"_target_": "distrib.models.MLP", **model},
            "optim": {"_target_": "torch.optim.SGD"},
            "trainer": {"global_batch_size": 32},
        }

    with pytest.raises(ConfigError) as e:
        check_compatible(config(saved), config(now), Path("step-00000010.pt"), allow_batch=False)
    assert str(e.value).startswith(f"{said} was "), str(e.value)
    assert "step-00000010.pt" in str(e.value) and "\n" not in str(e.value)
