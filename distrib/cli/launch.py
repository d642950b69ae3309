"""``python -m distrib.launch [options] (script.py | -m module) [args...]``: any torchrun-style
program on N workers, on this machine or on several.

    python -m distrib.launch --nproc 2 train.py --lr 0.1          # one machine, loopback only
    python -m distrib.launch --nproc 2 -m my_pkg.train            # a module, as python -m
    # two machines (run on each; the first one's address as endpoint):
    python -m distrib.launch --nnodes 2 --nproc 8 --rdzv-endpoint 10.0.0.1:29400 --rdzv-id exp1 \\
        train.py

Options take torchrun's names (``--nproc-per-node``, ``--node-rank``, ``--rdzv-endpoint``, ...;
underscores work too). Every worker sees the environment torchrun gives it, so a script that
never imports distrib runs unchanged. Exit status: 0; 1 with the failed rank's traceback and one
``distrib: error:`` line; 2 for bad options; 75 when the workers were signalled and saved a
checkpoint for a requeue; 128+N when signal N stopped them without one.
"""

from __future__ import annotations

import argparse
import sys

from distrib.errors import ConfigError
from distrib.launch.agent import REQUEUE_EXIT_CODE, Interrupted, RendezvousFailed, WorkerFailed
from distrib.launch.local import launch_script
from distrib.launch.topology import Topology


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m distrib.launch",
        description=__doc__.splitlines()[0],
        allow_abbrev=False,
    )

    def opt(*names: str, **kw: object) -> None:  # torchrun accepts a-b and a_b alike
        both = [*names, *("--" + n[2:].replace("-", "_") for n in names if "-" in n[2:])]
        p.add_argument(*both, **kw)  # type: ignore[arg-type]

    opt("--nproc", "--nproc-per-node", dest="nproc", type=int, default=1, help="workers per node")
    opt("--nnodes", type=int, default=1, help="nodes in the job (default 1)")
    opt("--node-rank", type=int, default=None, help="this node's rank: a static rendezvous")
    opt("--rdzv-endpoint", default="", help="host:port of the rendezvous (node 0)")
    opt("--rdzv-id", default="", help="the job's id, equal on every node")
    opt("--rdzv-timeout", type=int, default=300, help="seconds to wait for the other nodes")
    opt("--local-addr", default="", help="this node's address as the other nodes reach it")
    opt("--ifname", default="", help="network interface for gloo/NCCL sockets")
    opt("--max-restarts", type=int, default=0, help="restarts of the worker group on failure")
    s = p.add_argument_group("SLURM (--slurm: submit through submitit, one task per worker)")
    s.add_argument("--slurm", action="store_true", help="submit the job to SLURM")
    s.add_argument("--partition", default="", help="SLURM partition")
    s.add_argument("--time-min", type=int, default=60, help="time limit per allocation")
    s.add_argument("--gpus-per-node", type=int, default=0)
    s.add_argument("--cpus-per-task", type=int, default=1)
    s.add_argument("--mem-gb", type=float, default=0)
    s.add_argument("--account", default="")
    s.add_argument("--qos", default="")
    s.add_argument("--sbatch", action="append", default=[], metavar="KEY=VALUE",
                   help="any other sbatch option (repeatable)")  # fmt: skip
    s.add_argument("--wait", action="store_true", help="follow the job to its end")
    s.add_argument("--output-dir", default="", help="logs and rendezvous (default outputs/<time>)")
    p.add_argument("-m", dest="module", action="store_true", help="run a module, as python -m")
    p.add_argument("target", help="the script (or with -m, the module) each worker runs")
    p.add_argument("args", nargs=argparse.REMAINDER, help="arguments for it")
    return p


def main(argv: list[str] | None = None) -> int:
    from distrib.secrets import scrub_output

    parser = _parser()
    ns = parser.parse_args(argv)
    scrub_output(())  # the environment's secrets never reach what this command prints
    if ns.slurm:
        return _submit(parser, ns)
    try:
        topology = Topology(
            nproc_per_node=ns.nproc,
            nnodes=ns.nnodes,
            node_rank=ns.node_rank,
            rdzv_endpoint=ns.rdzv_endpoint,
            rdzv_id=ns.rdzv_id,
            rdzv_timeout_s=ns.rdzv_timeout,
            local_addr=ns.local_addr,
            ifname=ns.ifname,
            max_restarts=ns.max_restarts,
        )
    except ConfigError as e:
        parser.exit(2, f"distrib: error: {e}\n")
    try:
        launch_script(ns.target, ns.args, module=ns.module, topology=topology)
    except WorkerFailed as e:
        if e.exitcode == REQUEUE_EXIT_CODE:
            print(f"distrib: rank {e.rank} saved a checkpoint and asked for a requeue (75)")
            return REQUEUE_EXIT_CODE
        if e.traceback.strip():
            print(e.traceback.rstrip(), file=sys.stderr)
        print(f"distrib: error: {e} ({ns.target})", file=sys.stderr)
        return 1
    except RendezvousFailed as e:
        print(f"distrib: error: {e}", file=sys.stderr)
        return 1
    except Interrupted as e:
        print(f"distrib: {e}", file=sys.stderr)
        return REQUEUE_EXIT_CODE if e.requeue else 128 + e.signum
    return 0


def _submit(parser: argparse.ArgumentParser, ns: argparse.Namespace) -> int:
    """``--slurm``: the script runs in every SLURM task, after `distrib.distributed.slurm.join`."""
    import datetime
    from pathlib import Path

    from distrib.launch.slurm import SlurmOptions, run_job

    try:
        extra = dict(kv.split("=", 1) if "=" in kv else (kv, True) for kv in ns.sbatch)
        options = SlurmOptions(
            nodes=ns.nnodes,
            tasks_per_node=ns.nproc,
            gpus_per_node=ns.gpus_per_node,
            cpus_per_task=ns.cpus_per_task,
            mem_gb=ns.mem_gb,
            partition=ns.partition,
            time_min=ns.time_min,
            account=ns.account,
            qos=ns.qos,
            sbatch=extra,
        )
    except ConfigError as e:
        parser.exit(2, f"distrib: error: {e}\n")
    now = datetime.datetime.now().strftime("%Y-%m-%d/%H-%M-%S")
    run_dir = Path(ns.output_dir or f"outputs/{now}").resolve()
    from distrib.cli.slurm_tasks import script_task

    target = ns.target if ns.module else str(Path(ns.target).resolve())
    code, _ = run_job(script_task, (target, ns.args, ns.module, str(run_dir)), options, run_dir,
                      wait=ns.wait)  # fmt: skip
    return code


if __name__ == "__main__":
    sys.exit(main())
