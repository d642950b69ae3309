#!/usr/bin/env bash
# The same entry under torchrun: the workers see torchrun's variables and train in place.
#   launchers/torchrun.sh 2 trainer.epochs=3
# Multi-node: set NNODES, NODE_RANK and MASTER_ADDR (first node's address) on every node.
set -euo pipefail
nproc=${1:-2}; shift || true
if [ -n "${NNODES:-}" ]; then
  exec torchrun --nnodes="$NNODES" --node_rank="${NODE_RANK:?}" --nproc_per_node="$nproc" \
    --rdzv_backend=c10d --rdzv_endpoint="${MASTER_ADDR:?}:${MASTER_PORT:-29500}" \
    --rdzv_id="${RDZV_ID:-distrib}" -m distrib.train "$@"
fi
exec torchrun --standalone --nproc_per_node="$nproc" -m distrib.train "$@"
