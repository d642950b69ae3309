"""From hydra's composed values to a checked `Config`, and hydra's errors to our one line.

The CLI registers the schema (`register`) before composing; `to_config` validates what hydra
composed (every ``__post_init__`` runs); `describe` turns any hydra/OmegaConf error into a
`ConfigError` naming the key and what is allowed. This is the only worker-side module that
imports hydra's config store.
"""

from __future__ import annotations

import datetime as _dt
import os
import typing
from dataclasses import fields

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from distrib.config.schema import Config
from distrib.config.targets import unknown_argument
from distrib.errors import ConfigError


def run_id(environ: typing.Mapping[str, str] | None = None, *, rdzv_id: str | None = None) -> str:
    """The run directory's name, equal on every worker of one job without them talking.

    ``DISTRIB_RUN_ID`` wins (set it to rerun a job into its directory and resume, whatever
    launched it); then the launcher's ``rdzv_id`` (multi-node jobs: equal on every node);
    torchrun workers share ``TORCHELASTIC_RUN_ID`` (``--rdzv-id``; ``--standalone`` makes a
    random one, so pass ``DISTRIB_RUN_ID`` or ``hydra.run.dir`` to resume), SLURM tasks their
    job id (stable across requeues); a lone process takes the time.
    """
    environ = os.environ if environ is None else environ
    if environ.get("DISTRIB_RUN_ID"):
        return environ["DISTRIB_RUN_ID"]
    if rdzv_id and rdzv_id not in ("None", "null"):
        return rdzv_id
    rdzv = environ.get("TORCHELASTIC_RUN_ID", "none")
    if rdzv.startswith("slurm-"):  # a SLURM task after `distributed.slurm.join`: the job's name
        return rdzv
    if "RANK" in environ and rdzv not in ("", "none"):
        return f"torchrun-{rdzv}"
    if "SLURM_JOB_ID" in environ and "SLURM_PROCID" in environ:
        array = environ.get("SLURM_ARRAY_JOB_ID")
        if array:
            return f"slurm-{array}_{environ.get('SLURM_ARRAY_TASK_ID', '0')}"
        return f"slurm-{environ['SLURM_JOB_ID']}"
    return _dt.datetime.now().strftime("%Y-%m-%d/%H-%M-%S")


def register() -> None:
    """Register the schema and resolvers with hydra; the CLI calls this before composing."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="distrib_schema", node=Config)
    OmegaConf.register_new_resolver(
        "distrib_run_id", lambda rdzv_id=None: run_id(rdzv_id=rdzv_id), replace=True
    )


def to_config(cfg: DictConfig | dict) -> Config:
    """Composed values -> a validated `Config`; any problem becomes one `ConfigError`."""
    try:
        if not isinstance(cfg, DictConfig) or OmegaConf.get_type(cfg) is not Config:
            cfg = OmegaConf.merge(OmegaConf.structured(Config), cfg)
        obj = OmegaConf.to_object(cfg)
    except ConfigError:
        raise
    except OmegaConfBaseException as e:
        if isinstance(e.__cause__, ConfigError):
            raise e.__cause__ from None
        raise describe(e) from None
    assert isinstance(obj, Config)
    return obj


def describe(e: BaseException) -> ConfigError:
    """Turn a hydra/OmegaConf error into one line that names the key and what is allowed."""
    cause: BaseException = e
    while cause.__cause__ is not None and not isinstance(cause, OmegaConfBaseException):
        cause = cause.__cause__
    if isinstance(cause, ConfigError):
        return cause
    if isinstance(cause, OmegaConfBaseException):
        key = getattr(cause, "full_key", None) or "config"
        first = str(getattr(cause, "msg", cause)).splitlines()[0]
        if isinstance(cause, (ConfigKeyError, ConfigAttributeError)):
            obj = getattr(cause, "object_type", None)
            known = (
                ", ".join(f.name for f in fields(obj))
                if hasattr(obj, "__dataclass_fields__")
                else ""
            )
            parent = getattr(cause, "parent_node", None)
            if not known and isinstance(parent, DictConfig) and "_target_" in parent:
                node = OmegaConf.to_container(parent, resolve=False)
                said = unknown_argument(key.rpartition(".")[0], node, key.rpartition(".")[2])
                if said:
                    return ConfigError(key, message=said)
            hint = f"; known keys: {known}" if known else f"; to add a new key use +{key}=..."
            return ConfigError(key, message=f"{key}: unknown key{hint}")
        return ConfigError(key, message=f"{key}: {first}")
    text = str(e).split("\nConfig search path", 1)[0]  # hydra appends its whole search path
    return ConfigError("config", message=" ".join(text.replace("\t", " ").split()))
