"""The commands, above both the launch side and the worker side.

- ``python -m distrib.train`` -> `distrib.cli.train` (hydra entry: check, launch or train);
- ``python -m distrib.launch`` -> `distrib.cli.launch` (any torchrun-style script);
- ``python -m distrib env | export | sweep`` -> `distrib.cli.env`, `.export`, `.sweep`;
- what ``launcher=slurm`` runs in each SLURM task -> `distrib.cli.slurm_tasks`.
"""
