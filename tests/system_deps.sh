#!/usr/bin/env bash
# Install the system packages the system tests need, when missing. Idempotent; prints nothing
# when everything is already there. Run as root (CI does): sudo tests/system_deps.sh
#   iproute2: `ip netns` for tests/netns.py (two hosts on one machine).
#   slurm-wlm, munge, slurmdbd, mariadb-server: the SLURM cluster of tests/slurm/cluster.sh.
set -euo pipefail

missing=()

# need COMMAND PACKAGE: install PACKAGE unless COMMAND is already found.
need() {
    if ! command -v "$1" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$1" ] && [ ! -x "/sbin/$1" ]; then
        missing+=("$2")
    fi
}

need ip iproute2
# the local SLURM cluster (tests/slurm/cluster.sh): daemons, accounting (sacct, job states)
need slurmctld slurm-wlm
need munged munge
need slurmdbd slurmdbd
need mariadbd mariadb-server

[ "${#missing[@]}" -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
    echo "system_deps.sh: missing ${missing[*]}; run as root to install them" >&2
    exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "system_deps.sh: missing ${missing[*]}; no apt-get here, install them by hand" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}"
