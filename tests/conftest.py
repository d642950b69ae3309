"""Every test starts from the same environment and leaves no process group behind."""

from __future__ import annotations

import logging
import os

import pytest


@pytest.fixture(autouse=True)
def _restore_environment():
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)
    import distrib

    distrib.shutdown()


@pytest.fixture
def warnings_logged():
    """Warning lines of ``distrib.checkpoint``, captured even if ``distrib`` stops propagation."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("distrib.checkpoint")
    logger.addHandler(handler)
    yield records
    logger.removeHandler(handler)
