"""The worker side inside a SLURM job: tasks meet through the run directory, never by port rule.

No cluster here: each spawned worker gets the variables an ``srun`` task sees. The real-cluster
tests (submission, preemption, requeue) are in ``test_launch_slurm.py``.
"""

from __future__ import annotations

import functools
import os
import threading
from datetime import timedelta
from pathlib import Path

import pytest
import torch
from helpers import spawn

from distrib.distributed import slurm
from distrib.env import read_env


def srun_env(job: str, directory: str, rank: int, world: int, port: int) -> dict[str, str]:
    """What task ``rank`` of an ``srun -n world`` step of job ``job`` sees (plus where to meet)."""
    return {
        "SLURM_JOB_ID": job,
        "SLURM_STEP_ID": "0",
        "SLURM_PROCID": str(rank),
        "SLURM_NTASKS": str(world),
        "SLURM_LOCALID": str(rank),
        "SLURM_NODEID": "0",
        "SLURM_TASKS_PER_NODE": str(world),
        "SLURM_JOB_NODELIST": "localhost",
        "DISTRIB_RENDEZVOUS_DIR": directory,
    }


def _sum_ranks() -> dict:
    import distrib

    ctx = distrib.init()
    total = distrib.reduce_sum(torch.tensor([float(ctx.rank + 1)]))
    return {"sum": float(total), "world": ctx.world_size, **{k: os.environ[k] for k in TORCHRUN}}


# every variable torchrun gives a worker (torch.distributed.run's docs): a torchrun-style
# program must find each of them after `join`
TORCHRUN = (
    "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "ROLE_RANK",
    "ROLE_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID",
    "TORCHELASTIC_RESTART_COUNT", "TORCHELASTIC_MAX_RESTARTS", "OMP_NUM_THREADS",
)  # fmt: skip


def test_srun_tasks_meet_through_the_directory_and_see_torchruns_variables(tmp_path: Path):
    env = functools.partial(srun_env, "4242", str(tmp_path))
    results = spawn(_sum_ranks, world_size=2, make_env=env)
    assert [r["sum"] for r in results] == [3.0, 3.0]
    assert [r["RANK"] for r in results] == ["0", "1"]
    assert results[0]["MASTER_PORT"] == results[1]["MASTER_PORT"] != "0"
    assert results[0]["TORCHELASTIC_RUN_ID"] == "slurm-4242"
    assert (tmp_path / "rendezvous-4242.0.0").is_file()
    for rank, seen in enumerate(results):  # the rest of torchrun's variables, right
        assert (seen["LOCAL_WORLD_SIZE"], seen["GROUP_RANK"]) == ("2", "0")
        assert (seen["ROLE_RANK"], seen["ROLE_WORLD_SIZE"]) == (str(rank), "2")
        assert (seen["TORCHELASTIC_RESTART_COUNT"], seen["TORCHELASTIC_MAX_RESTARTS"]) == ("0", "0")


def test_jobs_10000_ids_apart_on_one_node_each_train_in_their_own_group(tmp_path: Path):
    # Seen before: the port was 20000 + job id % 10000, so jobs 5 and 10005 shared it and one
    # job's rank 1 joined the other's store. Both jobs run at once, meeting in one directory.
    results: dict[str, list] = {}

    def job(job_id: str) -> None:
        env = functools.partial(srun_env, job_id, str(tmp_path))
        results[job_id] = spawn(_sum_ranks, world_size=2, make_env=env, timeout=120)

    threads = [threading.Thread(target=job, args=(j,)) for j in ("5", "10005")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert set(results) == {"5", "10005"}
    for job_id, ranks in results.items():
        assert [r["sum"] for r in ranks] == [3.0, 3.0], job_id
        assert {r["TORCHELASTIC_RUN_ID"] for r in ranks} == {f"slurm-{job_id}"}
    assert results["5"][0]["MASTER_PORT"] != results["10005"][0]["MASTER_PORT"]


def test_a_file_pointing_at_another_jobs_store_is_never_joined(tmp_path: Path):
    from torch.distributed import TCPStore

    other = TCPStore("127.0.0.1", 0, 2, True, timedelta(seconds=5), wait_for_workers=False)
    other.set("distrib/job", "99.0.0")
    path = tmp_path / "rendezvous-7.0.0"
    path.write_text(f"127.0.0.1:{other.port}\n")  # stale, or a reused port
    with pytest.raises(slurm.RendezvousError) as err:
        slurm._meet(path, "7.0.0", rank=1, world=2, timeout_s=2)
    message = str(err.value)
    assert "store of another job (99.0.0, not 7.0.0)" in message and str(path) in message


def test_no_rank_0_within_the_timeout_is_one_line_naming_the_file(tmp_path: Path):
    with pytest.raises(slurm.RendezvousError, match="rendezvous-8.0.0: no file yet"):
        slurm._meet(tmp_path / "rendezvous-8.0.0", "8.0.0", rank=1, world=2, timeout_s=1)


def test_job_key_differs_per_job_array_task_step_and_requeue():
    base = {"SLURM_JOB_ID": "12", "SLURM_STEP_ID": "0"}
    keys = {
        slurm.job_key(base),
        slurm.job_key({**base, "SLURM_RESTART_COUNT": "1"}),
        slurm.job_key({**base, "SLURM_STEP_ID": "1"}),
        slurm.job_key({**base, "SLURM_ARRAY_JOB_ID": "11", "SLURM_ARRAY_TASK_ID": "1"}),
        slurm.job_key({"SLURM_JOB_ID": "10012", "SLURM_STEP_ID": "0"}),
    }
    assert len(keys) == 5


def test_join_leaves_a_job_script_that_chose_its_port_alone(tmp_path: Path):
    env = {**srun_env("3", str(tmp_path), 1, 2, 0), "MASTER_PORT": "29999"}
    assert slurm.join(environ=env) is None
    assert "RANK" not in env and read_env(env).master_port == 29999


def test_the_requeue_exit_code_is_the_trainers():
    from distrib.cli import slurm_tasks
    from distrib.trainer import preemption

    assert slurm_tasks.REQUEUE_EXIT_CODE == preemption.REQUEUE_EXIT_CODE == 75
