#!/bin/bash

# Parameters
#SBATCH --account=proj
#SBATCH --constraint=a100
#SBATCH --cpus-per-task=8
#SBATCH --error=/shared/runs/exp/slurm/%j/%j_0_log.err
#SBATCH --gpus-per-node=4
#SBATCH --job-name=distrib
#SBATCH --mem=65536MB
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=4
#SBATCH --open-mode=append
#SBATCH --output=/shared/runs/exp/slurm/%j/%j_0_log.out
#SBATCH --partition=gpu
#SBATCH --qos=high
#SBATCH --requeue
#SBATCH --signal=USR2@120
#SBATCH --time=240
#SBATCH --wckey=submitit

# command
export SUBMITIT_EXECUTOR=slurm
srun --unbuffered --output /shared/runs/exp/slurm/%j/%j_%t_log.out --error /shared/runs/exp/slurm/%j/%j_%t_log.err python3 -u -m submitit.core._submit /shared/runs/exp/slurm/%j
