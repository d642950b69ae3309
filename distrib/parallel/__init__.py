"""How the model runs over the workers: the parallel strategy and the precision.

- `distrib.parallel.ddp`: DistributedDataParallel (``trainer.ddp.*``), accumulation, clipping.
- `distrib.parallel.precision`: ``trainer.precision`` (fp32, bf16 autocast, fp16 with a scaler).
"""
