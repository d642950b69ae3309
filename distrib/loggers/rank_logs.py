"""Per-rank logging: rank 0 speaks on the console, every rank writes ``logs/rank<k>.log``.

Other ranks print only warnings and errors (prefixed with their rank), so a 2-worker run reads
like a 1-worker run, and a rank's own story is in its file when something goes wrong.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from distrib.secrets import RedactingFilter

_HANDLER_TAG = "_distrib_handler"


def setup_logging(run_dir: Path | None, rank: int) -> logging.Logger:
    """Configure the ``distrib`` logger for this rank; calling it again replaces the handlers."""
    logger = logging.getLogger("distrib")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    for h in [h for h in logger.handlers if getattr(h, _HANDLER_TAG, False)]:
        logger.removeHandler(h)
        h.close()
    console = _TqdmHandler(sys.stdout) if rank == 0 else logging.StreamHandler(sys.stderr)
    console.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    console.setFormatter(
        logging.Formatter("%(message)s" if rank == 0 else f"[rank {rank}] %(message)s")
    )
    handlers: list[logging.Handler] = [console]
    if run_dir is not None:
        (run_dir / "logs").mkdir(parents=True, exist_ok=True)
        file = logging.FileHandler(run_dir / "logs" / f"rank{rank}.log")
        file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        handlers.append(file)
    redacting = RedactingFilter()  # secrets from the environment never reach a log line
    for h in handlers:
        setattr(h, _HANDLER_TAG, True)
        h.addFilter(redacting)
        logger.addHandler(h)
    return logger


class _TqdmHandler(logging.StreamHandler):
    """Writes through ``tqdm.write`` so lines land above a live progress bar, not inside it."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=self.stream)
            self.flush()
        except Exception:
            self.handleError(record)
