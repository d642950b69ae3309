"""distrib's version: its own module, so that what records it (checkpoints) needs no import
of the package's public API above it."""

__version__ = "0.1.0"
