from __future__ import annotations

import os

import pytest

from distrib.launch.__main__ import main as launch_main
from distrib.launch.local import LOOPBACK, WorkerFailed, launch, launch_config


def test_launch_config_is_single_node_on_loopback():
    cfg = launch_config(3, run_id="r1", max_restarts=2)
    assert (cfg.min_nodes, cfg.max_nodes, cfg.nproc_per_node) == (1, 1, 3)
    assert cfg.rdzv_endpoint == f"{LOOPBACK}:0" and cfg.local_addr == LOOPBACK
    assert cfg.rdzv_backend == "c10d" and cfg.start_method == "spawn"
    assert (cfg.run_id, cfg.max_restarts) == ("r1", 2)
    assert launch_config(1).run_id != launch_config(1).run_id


def report_rank() -> tuple[str, str, str]:
    return os.environ["RANK"], os.environ["WORLD_SIZE"], os.environ["MASTER_ADDR"]


def fail_on_rank_one() -> None:
    if os.environ["RANK"] == "1":
        raise ValueError("bad shard")


def test_launch_returns_every_rank_result_and_rendezvous_on_loopback():
    assert launch(report_rank, nproc=2) == {0: ("0", "2", LOOPBACK), 1: ("1", "2", LOOPBACK)}


def test_launch_failure_names_the_rank_with_traceback():
    with pytest.raises(WorkerFailed) as info:
        launch(fail_on_rank_one, nproc=2)
    assert info.value.rank == 1
    assert "ValueError: bad shard" in info.value.traceback
    assert str(info.value).startswith("worker rank 1 failed (exit code 1)")


def test_launch_cli_rejects_bad_nproc(capsys: pytest.CaptureFixture[str]):
    with pytest.raises(SystemExit) as info:
        launch_main(["--nproc", "0", "x.py"])
    assert info.value.code == 2
    assert "--nproc=0: expected an integer >= 1" in capsys.readouterr().err
