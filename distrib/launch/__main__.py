"""``python -m distrib.launch --nproc 2 script.py [args...]``: run your own script on N workers.

Like ``torchrun --standalone --nproc_per_node=N``, through the same elastic agent, with the
rendezvous on loopback. The script calls ``distrib.init()`` and finds its rank there.
"""

from __future__ import annotations

import argparse
import sys

from distrib.launch.local import WorkerFailed, launch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m distrib.launch", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--nproc", type=int, default=2, help="workers on this machine (default 2)")
    parser.add_argument("--max-restarts", type=int, default=0, help="restarts of the worker group")
    parser.add_argument("script", help="the Python script each worker runs")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="arguments for the script")
    ns = parser.parse_args(argv)
    if ns.nproc < 1:
        parser.error(f"--nproc={ns.nproc}: expected an integer >= 1")
    try:
        launch(
            sys.executable,
            ("-u", ns.script, *ns.args),
            nproc=ns.nproc,
            max_restarts=ns.max_restarts,
        )
    except WorkerFailed as e:
        print(f"distrib: error: {e} running {ns.script}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
