"""What may change between a checkpoint and the run that resumes from it.

A resume continues *the same training*: the model and the optimizer's kind are fixed by the
checkpoint, and so is the global batch (the data position is counted in global samples, and
the optimizer state was tuned to it) unless ``trainer.allow_batch_change=true``. Refused
changes are one line naming the key and both values. Everything else may change (epochs,
max_steps, logging, checkpoint policy, timeouts, workers...), and the optimizer's
hyper-parameters the user set anew (``optim.lr=0.1``) win over the restored optimizer state,
with a log line saying so -- a restored state must not silently undo what was asked for.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from distrib.errors import ConfigError
from distrib.secrets import is_secret_key

log = logging.getLogger("distrib.trainer.loop")


def check_compatible(
    saved: dict[str, Any] | None, current: dict[str, Any], path: Path, *, allow_batch: bool
) -> None:
    """Raise `ConfigError` when ``current`` changes what a resume cannot change."""
    if not saved:  # a checkpoint without its config (written by hand): nothing to compare
        return
    frozen = [("model", saved.get("model"), current.get("model"))]
    frozen.append(
        (
            "optim._target_",
            (saved.get("optim") or {}).get("_target_"),
            current["optim"].get("_target_"),
        )
    )
    if not allow_batch:
        before = (saved.get("trainer") or {}).get("global_batch_size")
        frozen.append(
            ("trainer.global_batch_size", before, current["trainer"]["global_batch_size"])
        )
    for key, old, new in frozen:
        diff = _first_difference(key, old, new)
        if diff is None:
            continue
        where, was, now = diff
        hint = (
            " (trainer.allow_batch_change=true accepts it)"
            if key == "trainer.global_batch_size"
            else " (trainer.resume=never starts over)"
        )
        raise ConfigError(
            where,
            message=f"{where} was {was!r} in {path.name}, now {now!r}: a resume cannot change "
            f"it{hint}",
        )


def _first_difference(key: str, old: Any, new: Any) -> tuple[str, Any, Any] | None:
    if isinstance(old, dict) and isinstance(new, dict):
        for k in sorted(set(old) | set(new)):
            if is_secret_key(k):  # saved redacted: nothing to compare
                continue
            found = _first_difference(f"{key}.{k}", old.get(k), new.get(k))
            if found is not None:
                return found
        return None
    if old is None and new is None:
        return None
    return None if old == new else (key, old, new)


def data_changes(saved: dict[str, Any] | None, current: dict[str, Any]) -> list[str]:
    """What changes what the remaining epochs see -- the training data's arguments, or the
    seed (the data order, every rank's random numbers after a reseed) -- as log lines: applied
    (a moved dataset, more data, a new seed may be meant), but never silently."""
    if not saved:
        return []
    lines = []
    for key, old, new in (
        ("data.train", (saved.get("data") or {}).get("train"), current["data"].get("train")),
        ("trainer.seed", (saved.get("trainer") or {}).get("seed"), current["trainer"]["seed"]),
    ):
        while (diff := _first_difference(key, old, new)) is not None:
            where, was, now = diff
            lines.append(
                f"{where} changed on resume: {was!r} -> {now!r} (the remaining epochs see "
                "other data or another order than the checkpoint's run would have)"
            )
            old, new = _without(old, where, key), _without(new, where, key)
    return lines


def _without(node: Any, where: str, key: str) -> Any:
    """``node`` (at ``key``) with the sub-key ``where`` removed, to find the next difference."""
    if where == key or not isinstance(node, dict):
        return None
    head, _, rest = where[len(key) + 1 :].partition(".")
    out = dict(node)
    if rest:
        out[head] = _without(out.get(head), where, f"{key}.{head}")
    else:
        out.pop(head, None)
    return out


def hyperparameter_changes(
    saved: dict[str, Any] | None, current: dict[str, Any]
) -> dict[str, tuple[Any, Any]]:
    """The optimizer arguments (``optim.*``) the user set to something new for this run."""
    before = (saved or {}).get("optim") or {}
    now = current.get("optim") or {}
    return {
        k: (before.get(k), v)
        for k, v in now.items()
        if not k.startswith("_") and k in before and before.get(k) != v
    }


def apply_hyperparameters(
    optimizer: Any, scheduler: Any, changes: dict[str, tuple[Any, Any]]
) -> None:
    """Put the new values into every param group (and the scheduler's base lr)."""
    for name, (old, new) in changes.items():
        value = tuple(new) if isinstance(new, list) else new
        for group in optimizer.param_groups:
            if name in group:
                group[name] = value
                if name == "lr" and "initial_lr" in group:
                    group["initial_lr"] = value
        if name == "lr" and scheduler is not None and hasattr(scheduler, "base_lrs"):
            scheduler.base_lrs = [value for _ in scheduler.base_lrs]
        log.warning("optim.%s changed on resume: %s -> %s (the new value wins)", name, old, new)
