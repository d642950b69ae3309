"""A ``_target_`` must build the kind of thing its key needs, checked before any worker starts."""

from __future__ import annotations

import pytest

from distrib.cli.train import preflight
from distrib.errors import ConfigError


@pytest.mark.parametrize(
    "overrides, message",
    [
        # seen before: passed preflight; only hydra's own blocklist stopped it in the worker
        (["model._target_=os.system"], "model._target_=os.system: refused: it loads or runs"),
        (["data.train._target_=subprocess.call"], "data.train._target_=subprocess.call: refused"),
        (["optim._target_=os.system"], "optim._target_=os.system: refused: it loads or runs"),
        (["task._target_=distrib.models.MLP"], "task._target_='distrib.models.MLP': expected a"),
        (["model._target_=distrib.datasets.synthetic"], "expected an nn.Module subclass"),
        (["data.eval._target_=distrib.models.MLP"], "'distrib.models.MLP': expected a Dataset"),
        (["+scheduler._target_=torch.optim.SGD", "+scheduler._partial_=true"],
         "scheduler._target_='torch.optim.SGD': expected an LR scheduler"),
    ],
)  # fmt: skip
def test_a_target_of_the_wrong_kind_is_one_line_naming_the_key(overrides, message):
    with pytest.raises(ConfigError) as err:
        preflight(overrides)
    assert message in str(err.value)


@pytest.mark.parametrize(
    "overrides",
    [
        [],
        ["model=mlp", "data=synthetic", "optim=sgd"],
        ["~model", "+model._target_=fixtures.model_failing_on_rank"],  # annotated -> nn.Module
        ["data.train._target_=fixtures.token_dataset"],  # an unannotated dataset factory
        ["+scheduler._target_=torch.optim.lr_scheduler.StepLR", "+scheduler._partial_=true",
         "+scheduler.step_size=3"],
    ],
)  # fmt: skip
def test_users_own_classes_and_factories_pass(overrides):
    preflight(overrides)


def _every_denied() -> list[str]:
    from distrib.config.targets import DENIED_MODULES, DENIED_NAMES

    return [*DENIED_NAMES, *(f"{m}.anything" for m in DENIED_MODULES)]


@pytest.mark.parametrize("target", _every_denied())
@pytest.mark.parametrize("key", ["model", "data.train", "optim", "task"])
def test_every_denied_target_is_refused_under_every_key_without_importing_it(key, target):
    from distrib.config.targets import refuse_denied

    node = {"_target_": target}
    with pytest.raises(ConfigError) as err:
        refuse_denied({"wrapper": {"inner": node}} if key == "task" else node, key)
    assert f"._target_={target}: refused: it loads or runs code" in str(err.value)


def test_a_denied_target_nested_in_an_argument_is_refused_too():
    with pytest.raises(ConfigError, match=r"model\.inner\._target_=torch\.load: refused"):
        preflight(["+model.inner._target_=torch.load", "+model.inner.f=x"])


PAYLOAD = """
import os, pickle, sys
class Payload:
    def __reduce__(self):
        return (os.system, (f"touch {sys.argv[2]}",))
pickle.dump(Payload(), open(sys.argv[1], "wb"))
"""


def payload(tmp_path):  # type: ignore[no-untyped-def]
    """A pickle that, loaded without weights_only, creates the marker file."""
    import subprocess
    import sys

    path, marker = tmp_path / "payload.bin", tmp_path / "marker"
    subprocess.run([sys.executable, "-c", PAYLOAD, str(path), str(marker)], check=True)
    return path, marker


def test_a_task_that_would_unpickle_a_payload_never_runs_it(tmp_path):
    import sys

    from helpers import run_cli

    path, marker = payload(tmp_path)
    res = run_cli(sys.executable, "-m", "distrib.train", "task._target_=torch.load",
                  f"+task.f={path}", "+task.weights_only=false", "launcher.nproc=2",
                  cwd=tmp_path)  # fmt: skip
    assert res.returncode == 2
    assert res.stderr.strip() == (
        "distrib: error: task._target_=torch.load: refused: it loads or runs code "
        "(a _target_ names a model, dataset, task, optimizer or scheduler)"
    )
    assert not marker.exists()
