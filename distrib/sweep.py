"""``python -m distrib.sweep DIR`` and the hydra callback ``distrib.sweep.SweepSummary``: the
names configs and scripts written for distrib 0.1 use; the code is `distrib.cli.sweep`."""

import sys

from distrib.cli.sweep import SweepSummary, main

__all__ = ["SweepSummary", "main"]

if __name__ == "__main__":
    sys.exit(main())
