"""``python -m distrib.train``, the documented command: its entry is `distrib.cli.train`."""

from distrib.cli.train import main

if __name__ == "__main__":
    main()
