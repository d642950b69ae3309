#!/usr/bin/env bash
# A plain sbatch script for the trainer, for clusters where you write your own:
#   sbatch launchers/sbatch_template.sh trainer.epochs=30 model=mlp
# One task per worker (GPU); every task runs the same command and trains in place. Rank 0
# picks a free port and the others find it in the run directory outputs/slurm-<job id>, which
# a requeued job keeps: it resumes there. USR1 two minutes before the time limit, or SIGTERM on
# preemption, makes every rank save; rank 0 then requeues the job (--requeue).
#SBATCH --job-name=distrib
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=2
#SBATCH --cpus-per-task=4
#SBATCH --time=60
#SBATCH --signal=USR1@120
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=slurm-%j.out
##SBATCH --gpus-per-node=2
##SBATCH --partition=gpu
set -euo pipefail
# sbatch runs a copy of this script from the submit directory: use its .venv if it has one
PY=python; [ -x .venv/bin/python ] && PY=.venv/bin/python
srun --kill-on-bad-exit=0 "$PY" -m distrib.train "$@"
