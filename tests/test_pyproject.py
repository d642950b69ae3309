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
