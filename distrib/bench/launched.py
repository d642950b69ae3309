"""``python -m distrib.bench.launched REQUEST OUT``: the "distrib N" way, started as a user
starts the trainer: a fresh launcher process that imports what it needs and launches.

Timed from before this interpreter starts, as the raw-DDP way is timed from before torchrun
starts. Launched from the benchmark's own process instead, it would skip the launcher's
start-up that torchrun pays, and its workers would be forked from a process that has trained
the other ways already: both flatter distrib.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    request, out = (Path(a) for a in argv)
    job = json.loads(request.read_text())
    from distrib.bench.ways import trainer_worker
    from distrib.launch.local import launch

    args = (job["cfg"], job["log_path"], job["warmup_steps"])
    results = launch(trainer_worker, args, nproc=job["nproc"])
    out.write_text(json.dumps([results[r] for r in sorted(results)]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
