"""The process group's side of a worker: its life (`process_group`), the few collectives a
script needs (`collectives`), and how SLURM tasks meet before it exists (`slurm`)."""
