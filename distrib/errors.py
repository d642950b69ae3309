"""Errors a user can fix by changing what they set.

Every user-facing failure is one line: what was set, what was found, and what is allowed. The
CLI prints ``str(error)`` and exits non-zero; it never prints a traceback for these.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class ConfigError(ValueError):
    """A configuration value (or file) that distrib cannot run with.

    ``key`` is the dotted config key (``trainer.epochs``) or a file path, so the one-line message
    always names the thing to change.
    """

    def __init__(
        self, key: str, value: Any = None, allowed: str = "", *, message: str = ""
    ) -> None:
        self.key = key
        self.value = value
        self.allowed = allowed
        if not message:
            message = f"{key}={value!r}: expected {allowed}" if allowed else f"{key}={value!r}"
        super().__init__(message)


ALLOWED: dict[str, str] = {}
"""What each checked key accepts, in its check's own words (``trainer.epochs``: ``an integer
>= 1``), recorded by every `check`: a value of the wrong type is refused in the same words."""


def check(ok: bool, key: str, value: Any, allowed: str) -> None:
    """Raise a `ConfigError` naming ``key`` unless ``ok``; the ``__post_init__`` helper."""
    ALLOWED[key] = allowed
    if not ok:
        raise ConfigError(key, value, allowed)


_explainers: list[Callable[[BaseException], BaseException | None]] = []


def add_explainer(fn: Callable[[BaseException], BaseException | None]) -> None:
    """Register ``fn``: given an error about to end the process, a clearer one, or None.

    The worker side registers what only it can know (`distrib.init`: which rank a timed-out
    collective waited for); the script runner (`distrib.launch.script`), which may not import
    the worker side, asks through `explain` before it reports a script's uncaught error.
    """
    if fn not in _explainers:
        _explainers.append(fn)


def explain(error: BaseException) -> BaseException:
    """The clearest account of ``error`` a registered explainer gives (``error`` itself if
    none does, or one fails: reporting must never hide the error)."""
    for fn in _explainers:
        try:
            better = fn(error)
        except Exception:
            continue
        if better is not None:
            return better
    return error
