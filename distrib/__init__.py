"""distrib: take a PyTorch training job from one process to many.

For your own training script, five calls::

    import distrib

    ctx = distrib.init()                                   # rank, world, device, process group
    model = distrib.wrap(MyNet())                          # DDP when world > 1, bare model else
    train = distrib.loader(dataset, batch_size=256)        # global batch, sharded per rank
    for epoch in range(epochs):
        train.sampler.set_epoch(epoch)
        for x, y in train:
            ...
    acc = distrib.reduce_sum(torch.tensor([correct, total]))  # exact global numbers

then run it with ``python -m distrib.launch --nproc 2 my_script.py`` or under torchrun / SLURM.
For the batteries-included trainer: ``python -m distrib.train launcher.nproc=2``.
"""

from distrib.collectives import barrier, reduce_sum
from distrib.data import eval_loader, loader
from distrib.env import WorkerEnv, read_env
from distrib.errors import ConfigError
from distrib.process_group import Context, current, init, session, shutdown
from distrib.rng import seed_all
from distrib.wrap import DDPConfig, accumulate, autocast, clip_grad, unwrap, wrap

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "Context",
    "DDPConfig",
    "WorkerEnv",
    "accumulate",
    "autocast",
    "barrier",
    "clip_grad",
    "current",
    "eval_loader",
    "init",
    "loader",
    "read_env",
    "reduce_sum",
    "seed_all",
    "session",
    "shutdown",
    "unwrap",
    "wrap",
]
