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

then run it with ``python -m distrib.launch --nproc 2 my_script.py`` or under torchrun / SLURM;
from a Jupyter notebook, put the same lines in a function and call
``distrib.notebook_launch(train, nproc=2)``.
For the batteries-included trainer: ``python -m distrib.train launcher.nproc=2``.
"""

from collections.abc import Callable
from typing import Any

from distrib.data import eval_loader, loader
from distrib.distributed import process_group
from distrib.distributed.collectives import barrier, reduce_sum
from distrib.distributed.process_group import Context, current, init, session, shutdown
from distrib.env import WorkerEnv, read_env
from distrib.errors import ConfigError
from distrib.parallel.ddp import DDPConfig
from distrib.parallel.fsdp import FSDPConfig
from distrib.parallel.precision import autocast
from distrib.parallel.strategy import accumulate, clip_grad, unwrap, wrap
from distrib.rng import seed_all
from distrib.version import __version__

__all__ = [
    "__version__",
    "ConfigError",
    "Context",
    "DDPConfig",
    "FSDPConfig",
    "WorkerEnv",
    "accumulate",
    "autocast",
    "barrier",
    "clip_grad",
    "current",
    "eval_loader",
    "init",
    "loader",
    "notebook_launch",
    "read_env",
    "reduce_sum",
    "seed_all",
    "session",
    "shutdown",
    "unwrap",
    "wrap",
]


def notebook_launch(
    fn: Callable[..., Any], *args: Any, nproc: int = 2, **options: Any
) -> dict[int, Any]:
    """Run ``fn(*args)`` on ``nproc`` local workers from a Jupyter notebook; ``{rank: result}``.

    Example, in a cell::

        def train(epochs):
            ctx = distrib.init()
            model = distrib.wrap(MyNet())
            ...
            distrib.shutdown()
            return losses

        losses = distrib.notebook_launch(train, 5, nproc=2)[0]  # rank 0's losses

    A notebook cannot run ``python -m distrib.launch``, and its functions cannot be imported
    by a fresh interpreter, so the workers are forked from the kernel: CUDA must not have been
    used in the kernel itself (restart it and call this first), and ``fn`` joins the job with
    ``distrib.init()`` as any worker does. A worker's error is raised here as `RuntimeError`
    naming its rank, with its traceback as a note; interrupting the cell stops every worker.
    ``options``: ``max_restarts``, ``failure_grace_s``, ``signal_grace_s`` (after an interrupt,
    seconds before SIGKILL). How and why: `distrib.launch.notebook`.
    """
    if process_group._current is not None:  # every forked worker would think it is rank 0 of 1
        raise RuntimeError(
            "distrib.init() was already called in this kernel, and forked workers would inherit "
            "its context: call distrib.shutdown() first, and call distrib.init() only inside fn"
        )
    # Imported here, not at the top: the worker side (this package) never imports the launch side.
    from distrib.launch.notebook import notebook_launch as launch

    return launch(fn, *args, nproc=nproc, **options)
