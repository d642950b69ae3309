#!/usr/bin/env bash
# Submit the trainer to SLURM (submitit): N tasks = N workers per node, and follow the job.
#   launchers/slurm.sh 4 launcher.gpus_per_node=4 launcher.partition=gpu launcher.time_min=240
#   NODES=2 launchers/slurm.sh 8 launcher.gpus_per_node=8
set -euo pipefail
. "$(dirname "$0")/_python.sh"
nproc=${1:-2}; shift || true
exec "$PY" -m distrib.train launcher=slurm launcher.nproc="$nproc" \
    launcher.nnodes="${NODES:-1}" launcher.wait=true "$@"
