"""Packaging metadata that installs without warnings."""

from __future__ import annotations

import re

import pytest
from helpers import ROOT

tomllib = pytest.importorskip("tomllib")  # Python 3.11+


def test_the_license_is_an_spdx_string_with_a_setuptools_that_reads_it():
    # A {text = ...} table draws a setuptools deprecation warning on every install (PEP 639).
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert meta["project"]["license"] == "MIT"
    (setuptools,) = [r for r in meta["build-system"]["requires"] if r.startswith("setuptools")]
    assert int(re.search(r">=(\d+)", setuptools).group(1)) >= 77
    assert not any(c.startswith("License ::") for c in meta["project"].get("classifiers", []))


def test_a_hung_test_fails_with_its_traceback_under_the_suites_settings(tmp_path):
    # make test must never run into CI's 90 minutes: pytest-timeout (in the test extra) ends a
    # hung test with its stack; the suite's limit is generous (its slowest test takes ~2 min).
    import subprocess
    import sys

    ini = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    assert 600 <= int(ini["timeout"]) <= 1800
    (tmp_path / "test_hang.py").write_text("import time\n\ndef test_hang():\n    time.sleep(60)\n")
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-c", str(ROOT / "pyproject.toml"), "--rootdir",
         str(tmp_path), "-o", "timeout=2", "-p", "no:cacheprovider", str(tmp_path)],
        capture_output=True, text=True, timeout=50,
    )  # fmt: skip
    assert done.returncode == 1, done.stdout[-2000:]
    assert "Timeout" in done.stdout and "time.sleep(60)" in done.stdout, done.stdout[-2000:]
