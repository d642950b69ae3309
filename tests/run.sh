#!/usr/bin/env bash
# `make test`: the whole suite, in two groups run side by side, then the SLURM cluster stopped.
#   - the SLURM group (-m slurm): jobs on the local cluster (tests/slurm/cluster.sh, started
#     here when this machine can run it); mostly waiting on the scheduler, so it overlaps well;
#     with it the tests marked waits (a timeout or a sleep is most of their time)
#   - everything else
# Extra arguments go to both pytest runs. Exit status: non-zero if either group failed.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
TMP=${TMPDIR:-/tmp}/distrib-tests
mkdir -p "$TMP"

started=0
stop_cluster() { [ "$started" = 1 ] && bash tests/slurm/cluster.sh stop >/dev/null 2>&1; }
trap stop_cluster EXIT

slurm_status=0
if [ "$(id -u)" = 0 ]; then
    if out=$(bash tests/slurm/cluster.sh start --nodes 2 --preempt --cpus 8 2>&1); then
        started=1
        eval "$(grep '^export SLURM_CONF=' <<<"$out")"
    else
        echo "$out" >&2
        echo "run.sh: the local SLURM cluster did not start; its tests will say why" >&2
    fi
fi

# beside it, the tests that mostly wait out a timeout or a sleep (-m waits): little CPU either;
# and the guide's commands (-m docs): the SLURM group leaves the CPU idle most of its time
# --durations: the slowest tests and their times, so the 15-minute budget stays visible
"$PY" -m pytest -q -m "slurm or waits or docs" --basetemp="$TMP/slurm" -p no:cacheprovider \
    --durations=10 "$@" \
    >"$TMP/slurm.log" 2>&1 &
slurm_pid=$!
"$PY" -m pytest -q -m "not slurm and not waits and not docs" --basetemp="$TMP/main" --durations=25 "$@"
main_status=$?
wait "$slurm_pid" || slurm_status=$?
echo "=== SLURM group (tests/test_launch_slurm.py on the local cluster), the waiting tests, the guide's commands"
cat "$TMP/slurm.log"
# pytest exits 5 when a group selected no test (e.g. a file filter outside it): not a failure
[ "$slurm_status" = 5 ] && slurm_status=0
[ "$main_status" = 5 ] && main_status=0
exit $(( main_status != 0 || slurm_status != 0 ))
