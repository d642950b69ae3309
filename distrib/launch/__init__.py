"""The launch side: starts workers and hands them an environment. It never creates a process
group or touches CUDA; the workers do that (``distrib.distributed.process_group``)."""
