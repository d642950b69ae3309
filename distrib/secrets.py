"""Keep secrets out of what a run writes: configs sent to trackers, log files, metric files.

Two kinds of secret are caught. A value stored under a key that *looks* secret (``api_key``,
``hf_token``, ``db_password`` ...) is replaced wholesale; and the value of any secret-looking
environment variable (``WANDB_API_KEY``, ``HF_TOKEN`` ...) is cut out of every string it
appears in, wherever it was copied to (an interpolated URL, a command line, an error message).

Example::

    redact({"wandb": {"api_key": "abc..."}, "url": f"https://x:{os.environ['HF_TOKEN']}@hub"})
    # {"wandb": {"api_key": "<redacted>"}, "url": "https://x:<redacted>@hub"}

    handler.addFilter(RedactingFilter())   # scrub log records on their way out
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Iterable, Mapping
from typing import Any

REDACTED = "<redacted>"

MIN_SECRET_LEN = 8
"""Environment values shorter than this are not scrubbed: ``TOKEN=1`` must not erase every "1"."""

# ``token`` is not followed by ``s``/``iz``: ``max_tokens`` and ``tokenizer`` are ML settings,
# not secrets, while ``hf_token`` and ``access_token_v2`` are.
_SECRET_KEY = re.compile(
    r"api[-_]?key|token(?!s|iz)|secret|passw(?:or)?d|credential", re.IGNORECASE
)


def is_secret_key(key: object) -> bool:
    """Whether a config key or environment variable name looks like it holds a secret."""
    return bool(_SECRET_KEY.search(str(key)))


def secret_values(environ: Mapping[str, str] | None = None) -> set[str]:
    """The values of secret-looking environment variables, for scrubbing arbitrary text.

    Values shorter than `MIN_SECRET_LEN` are left out so that a flag like ``USE_TOKEN=1`` does
    not turn every ``1`` into ``<redacted>``.
    """
    env = os.environ if environ is None else environ
    return {v for k, v in env.items() if is_secret_key(k) and len(v.strip()) >= MIN_SECRET_LEN}


def config_secrets(obj: Any) -> set[str]:
    """The values under secret-looking keys of a nested config (``hf_token: hf_...``): the
    strings to scrub from files that copy the config or the command line as text."""
    found: set[str] = set()
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            if is_secret_key(k) and isinstance(v, str | int) and len(str(v)) >= MIN_SECRET_LEN:
                found.add(str(v))
            else:
                found |= config_secrets(v)
    elif isinstance(obj, list | tuple):
        for v in obj:
            found |= config_secrets(v)
    return found


def scrub_files(paths: Iterable[Any], secrets: Iterable[str]) -> None:
    """Rewrite each existing file with the secrets cut out (atomically; untouched if clean).

    For what hydra writes before any of our code runs: ``.hydra/config.yaml``,
    ``hydra.yaml`` and ``overrides.yaml`` hold the command line's values verbatim.
    """
    from pathlib import Path

    secrets = set(secrets)
    for path in map(Path, paths):
        try:
            text = path.read_text()
        except OSError:
            continue
        clean = scrub(text, secrets)
        if clean != text:
            tmp = path.with_name(path.name + ".redacting")
            tmp.write_text(clean)
            os.replace(tmp, path)


def scrub(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every occurrence of every secret replaced by `REDACTED`."""
    # Longest first, so a secret that contains a shorter one is removed whole.
    for value in sorted(secrets, key=len, reverse=True):
        if value in text:
            text = text.replace(value, REDACTED)
    return text


def redact(obj: Any, *, environ: Mapping[str, str] | None = None) -> Any:
    """A copy of a nested dict/list config with secrets replaced by ``"<redacted>"``.

    Values under secret-looking keys are replaced (unless empty: ``api_key: null`` stays
    ``None``, so the reader can still tell it was unset); strings anywhere that contain the value
    of a secret-looking environment variable have that value cut out. Tuples stay tuples;
    mappings become plain dicts; other values are returned as they are.
    """
    return _redact(obj, secret_values(environ))


def _redact(obj: Any, secrets: set[str]) -> Any:
    if isinstance(obj, Mapping):
        return {
            k: _redact_value(v, secrets) if is_secret_key(k) else _redact(v, secrets)
            for k, v in obj.items()
        }
    if isinstance(obj, list | tuple):
        items = [_redact(v, secrets) for v in obj]
        if hasattr(obj, "_fields"):  # a namedtuple takes its fields positionally
            return type(obj)(*items)
        return type(obj)(items)
    if isinstance(obj, str):
        return scrub(obj, secrets)
    return obj


def _redact_value(value: Any, secrets: set[str]) -> Any:
    if value is None or value == "":
        return value
    return REDACTED


class RedactingFilter(logging.Filter):
    """A `logging.Filter` that cuts secret environment values out of records (and tracebacks).

    Attach it to *handlers* (``handler.addFilter(RedactingFilter())``): a filter on a logger
    does not see records that propagate up from child loggers. The values are read once, when
    the filter is created.
    """

    def __init__(self, environ: Mapping[str, str] | None = None, *, extra: Iterable[str] = ()):
        super().__init__()
        self.secrets = secret_values(environ) | {s for s in extra if len(s) >= MIN_SECRET_LEN}

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        message = record.getMessage()
        scrubbed = scrub(message, self.secrets)
        if scrubbed != message:
            record.msg, record.args = scrubbed, None
        if record.exc_info and not record.exc_text:
            # The formatter reuses a cached ``exc_text``: fill it, scrubbed, before it does.
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = scrub(record.exc_text, self.secrets)
        return True


class ScrubbedStream:
    """A text stream that cuts ``secrets`` out of everything written through it: what a
    command prints (a worker's traceback, the final error line) reaches a terminal or a SLURM
    log as the run's own files do, redacted. Line-buffered, so a secret split across two
    ``write`` calls is still caught within its line."""

    def __init__(self, stream: Any, secrets: Iterable[str]) -> None:
        self._stream = stream
        self._secrets = {s for s in secrets if len(s) >= MIN_SECRET_LEN}
        self._pending = ""

    def write(self, text: str) -> int:
        self._pending += text
        if "\n" in self._pending:
            done, _, self._pending = self._pending.rpartition("\n")
            self._stream.write(scrub(done + "\n", self._secrets))
        return len(text)

    def flush(self) -> None:
        if self._pending:
            self._stream.write(scrub(self._pending, self._secrets))
            self._pending = ""
        self._stream.flush()

    def __getattr__(self, name: str) -> Any:  # isatty, fileno, encoding, ...
        return getattr(self._stream, name)


def scrub_output(secrets: Iterable[str]) -> None:
    """From now on, redact ``secrets`` (and the environment's) from this process's stdout and
    stderr (the Python-level streams: what this process prints)."""
    found = set(secrets) | secret_values()
    if not found:
        return
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if isinstance(stream, ScrubbedStream):
            stream._secrets |= {s for s in found if len(s) >= MIN_SECRET_LEN}
        else:
            setattr(sys, name, ScrubbedStream(stream, found))
