#!/usr/bin/env bash
# The same entry under torchrun: the workers see torchrun's variables and train in place.
#   RUN=myrun launchers/torchrun.sh 2 trainer.epochs=3    # rerun the same line to resume
# Multi-node: set NNODES, MASTER_ADDR (node 0's address) and RUN on every node.
# RUN names the run directory outputs/$RUN (DISTRIB_RUN_ID): torchrun --standalone draws a new
# random rendezvous id on every launch, so without it a restarted job could not find its
# checkpoints.
set -euo pipefail
. "$(dirname "$0")/_python.sh"
nproc=${1:-2}; shift || true
export DISTRIB_RUN_ID="${RUN:-${DISTRIB_RUN_ID:-run-$(date +%Y%m%d-%H%M%S)}}"
echo "run directory: outputs/$DISTRIB_RUN_ID (RUN=$DISTRIB_RUN_ID to resume)" >&2
if [ -n "${NNODES:-}" ]; then
  exec "$PY" -m torch.distributed.run --nnodes="$NNODES" --nproc_per_node="$nproc" \
    --rdzv_backend=c10d --rdzv_endpoint="${MASTER_ADDR:?}:${MASTER_PORT:-29400}" \
    --rdzv_id="$DISTRIB_RUN_ID" -m distrib.train "$@"
fi
exec "$PY" -m torch.distributed.run --standalone --nproc_per_node="$nproc" -m distrib.train "$@"
