"""Every test starts from the same environment and leaves no process group, and no process
it started, behind."""

from __future__ import annotations

import logging
import os

import helpers
import pytest


@pytest.fixture(autouse=True)
def _no_process_left():
    """Whatever a test started through `helpers.start` (or `run_cli`) dies with the test."""
    yield
    helpers.kill_started()


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
