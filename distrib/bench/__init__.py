"""Benchmarks, run with ``python -m distrib.bench [name]`` (``make bench``): every figure is a
ratio measured side by side in one run, never a timed unit test."""
