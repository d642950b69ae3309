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
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import (
    ConfigAttributeError,
    ConfigKeyError,
    OmegaConfBaseException,
    ValidationError,
)

from distrib.config.schema import Config
from distrib.config.targets import unknown_argument
from distrib.errors import ALLOWED, ConfigError


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
        _refuse_unknown_keys(cfg)
        obj = OmegaConf.to_object(cfg)
    except ConfigError:
        raise
    except OmegaConfBaseException as e:
        if isinstance(e.__cause__, ConfigError):
            raise e.__cause__ from None
        raise describe(e) from None
    assert isinstance(obj, Config)
    return obj


def _refuse_unknown_keys(node: DictConfig, prefix: str = "") -> None:
    """A key the schema does not have, in a schema node: ``+trainer.epoch=3`` is added by
    hydra's ``+`` even into a typed node, and would be stored and ignored; refuse it as
    ``trainer.epoch=3`` is. (``_target_`` nodes are free-form: their keys are checked against
    the target's signature instead.)"""
    kind = OmegaConf.get_type(node)
    known = [f.name for f in fields(kind)] if hasattr(kind, "__dataclass_fields__") else None
    for key in node:
        name = f"{prefix}{key}"
        if known is not None and key not in known:
            raise ConfigError(name, message=unknown_key(name, known))
        child = node._get_node(key)
        if isinstance(child, DictConfig) and hasattr(
            OmegaConf.get_type(child), "__dataclass_fields__"
        ):
            _refuse_unknown_keys(child, f"{name}.")


_TYPES = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string"}


def _field_type(cause: Any, key: str) -> str:
    """The schema's type of ``key`` (its dataclass field's annotation), as a name."""
    kind = getattr(cause, "object_type", None)
    name = key.rpartition(".")[2]
    for f in fields(kind) if hasattr(kind, "__dataclass_fields__") else ():
        if f.name == name:
            return f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    return getattr(getattr(cause, "ref_type", None), "__name__", "value")


def _allowed(key: str, kind: str) -> str:
    """What ``key`` accepts, in the words of its own range check (``an integer >= 1``) when the
    schema has one, else its type's: ``trainer.epochs='three'`` is refused as ``=-1`` is."""
    if key not in ALLOWED:
        Config()  # every default runs its __post_init__ checks, recording their words
    return ALLOWED.get(key) or _TYPES.get(kind, f"a value of type {kind}")


def unknown_key(key: str, known: list[str]) -> str:
    """``trainer.epoch: unknown key; did you mean trainer.epochs? (known keys: ...)``."""
    import difflib

    parent, _, name = key.rpartition(".")
    near = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    hint = f"; did you mean {parent + '.' if parent else ''}{near[0]}?" if near else ""
    return f"{key}: unknown key{hint} (known keys: {', '.join(known)})"


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
            known = [f.name for f in fields(obj)] if hasattr(obj, "__dataclass_fields__") else []
            parent = getattr(cause, "parent_node", None)
            if not known and isinstance(parent, DictConfig) and "_target_" in parent:
                node = OmegaConf.to_container(parent, resolve=False)
                said = unknown_argument(key.rpartition(".")[0], node, key.rpartition(".")[2])
                if said:
                    return ConfigError(key, message=said)
            if known:
                return ConfigError(key, message=unknown_key(key, known))
            return ConfigError(key, message=f"{key}: unknown key; to add a new key use +{key}=...")
        if isinstance(cause, ValidationError) and getattr(cause, "value", None) is not None:
            return ConfigError(key, cause.value, _allowed(key, _field_type(cause, key)))
        return ConfigError(key, message=f"{key}: {first}")
    text = str(e).split("\nConfig search path", 1)[0]  # hydra appends its whole search path
    return ConfigError("config", message=" ".join(text.replace("\t", " ").split()))
