"""Errors a user can fix by changing what they set.

Every user-facing failure is one line: what was set, what was found, and what is allowed. The
CLI prints ``str(error)`` and exits non-zero; it never prints a traceback for these.
"""

from __future__ import annotations

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
