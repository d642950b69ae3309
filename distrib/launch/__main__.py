"""``python -m distrib.launch``: the command's body is `distrib.cli.launch`, which sits above
both sides (a ``--slurm`` task runs the worker side's rendezvous); this package stays the
launch side alone."""

from distrib.bounded import leave
from distrib.cli.launch import main

if __name__ == "__main__":
    leave(main())
