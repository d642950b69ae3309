#!/usr/bin/env bash
# N workers on this machine through torch's elastic agent (rendezvous on 127.0.0.1).
#   launchers/local.sh 2 trainer.epochs=3 model=mlp data=synthetic
set -euo pipefail
. "$(dirname "$0")/_python.sh"
nproc=${1:-2}; shift || true
exec "$PY" -m distrib.train launcher=local launcher.nproc="$nproc" "$@"
