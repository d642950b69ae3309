"""A ``_target_`` must build the kind of thing its key needs, checked before any worker starts."""

from __future__ import annotations

import pytest

from distrib.cli.train import preflight
from distrib.errors import ConfigError


@pytest.mark.parametrize(
    "overrides, message",
    [
        # seen before: passed preflight; only hydra's own blocklist stopped it in the worker
        (["model._target_=os.system"], "model._target_='os.system': expected an nn.Module"),
        (["data.train._target_=subprocess.call"], "'subprocess.call': expected a Dataset"),
        (["optim._target_=os.system"], "optim._target_='os.system': expected a torch.optim"),
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
