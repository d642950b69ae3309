from __future__ import annotations

import pytest

from distrib.env import WorkerEnv, expand_tasks_per_node, is_worker, read_env


def test_lone_process_is_rank_zero_of_one():
    env = read_env({})
    assert env == WorkerEnv()
    assert env.is_main and not env.is_distributed and env.source == "single"


def test_torchrun_variables():
    env = read_env(
        {
            "RANK": "3",
            "WORLD_SIZE": "4",
            "LOCAL_RANK": "1",
            "LOCAL_WORLD_SIZE": "2",
            "GROUP_RANK": "1",
            "MASTER_ADDR": "10.0.0.5",
            "MASTER_PORT": "1234",
            "SLURM_PROCID": "0",
            "SLURM_NTASKS": "1",
            "SLURM_STEP_ID": "0",  # torchrun inside SLURM
        }
    )
    assert (env.rank, env.world_size, env.local_rank, env.local_world_size, env.node_rank) == (
        3,
        4,
        1,
        2,
        1,
    )
    assert (env.master_addr, env.master_port, env.source) == ("10.0.0.5", 1234, "torchrun")
    assert not env.is_main


def _slurm(**extra: str) -> dict[str, str]:
    base = {
        "SLURM_JOB_ID": "4242",
        "SLURM_STEP_ID": "0",
        "SLURM_PROCID": "5",
        "SLURM_NTASKS": "6",
        "SLURM_LOCALID": "1",
        "SLURM_NODEID": "2",
        "SLURM_TASKS_PER_NODE": "2(x3)",
        "SLURM_JOB_NODELIST": "gpu[07-09]",
    }
    return {**base, **extra}


def test_slurm_variables_and_compressed_nodelist():
    env = read_env(_slurm())
    assert (env.rank, env.world_size, env.local_rank, env.local_world_size, env.node_rank) == (
        5,
        6,
        1,
        2,
        2,
    )
    assert env.master_addr == "gpu07"
    assert env.master_port == 0  # not from the job id: distributed.slurm.join settles it
    assert env.source == "slurm"


def test_slurm_nodelist_with_several_groups_and_explicit_port():
    env = read_env(_slurm(SLURM_JOB_NODELIST="node[01-04,7],login1", MASTER_PORT="29999"))
    assert env.master_addr == "node01" and env.master_port == 29999


def test_slurm_uneven_tasks_per_node():
    assert expand_tasks_per_node("2(x3),1") == [2, 2, 2, 1]
    env = read_env(
        _slurm(
            SLURM_TASKS_PER_NODE="2(x2),1",
            SLURM_NODEID="2",
            SLURM_NTASKS="5",
            SLURM_PROCID="4",
            SLURM_LOCALID="0",
        )
    )
    assert env.local_world_size == 1
    with pytest.raises(ValueError, match="SLURM_TASKS_PER_NODE"):
        expand_tasks_per_node("2(y3)")


def test_slurm_batch_script_is_not_a_worker():
    batch = _slurm()
    del batch["SLURM_STEP_ID"]
    assert read_env(batch).source == "single"
    assert not is_worker(batch)


def test_is_worker():
    assert is_worker({"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0"})
    assert is_worker(_slurm())
    assert not is_worker(_slurm(SLURM_NTASKS="1"))  # a one-task step may still launch locally
    assert not is_worker({})
