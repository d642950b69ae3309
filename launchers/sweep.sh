#!/usr/bin/env bash
# A hydra sweep: each point a multi-worker run; summary.md in the sweep directory at the end.
#   launchers/sweep.sh optim.lr=0.1,0.05,0.01                      # here, one point at a time
#   SLURM=1 launchers/sweep.sh optim.lr=0.1,0.05,0.01              # each point a SLURM job
set -euo pipefail
. "$(dirname "$0")/_python.sh"
if [ -n "${SLURM:-}" ]; then
  exec "$PY" -m distrib.train -m hydra/launcher=submitit_slurm \
      hydra.launcher.tasks_per_node="${NPROC:-2}" hydra.launcher.timeout_min="${TIME_MIN:-60}" "$@"
fi
exec "$PY" -m distrib.train -m launcher.nproc="${NPROC:-2}" "$@"
