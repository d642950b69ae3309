"""The launch side's pure part: options checked in one line, torch's LaunchConfig built right."""

from __future__ import annotations

import pytest

from distrib.errors import ConfigError
from distrib.launch.topology import LOOPBACK, Topology, launch_config, split_endpoint, worker_env


def test_one_node_rendezvous_on_loopback_with_a_free_port():
    cfg = launch_config(Topology(nproc_per_node=3, max_restarts=2), run_id="r1")
    assert (cfg.min_nodes, cfg.max_nodes, cfg.nproc_per_node) == (1, 1, 3)
    assert cfg.rdzv_endpoint == f"{LOOPBACK}:0" and cfg.local_addr == LOOPBACK
    assert cfg.rdzv_backend == "distrib-loopback" and cfg.start_method == "spawn"
    assert (cfg.run_id, cfg.max_restarts) == ("r1", 2)
    assert launch_config(Topology()).run_id != launch_config(Topology()).run_id


def test_several_nodes_use_c10d_and_say_who_hosts_when_local_addr_is_given():
    topo = Topology(nnodes=2, rdzv_endpoint="10.1.0.1:29400", rdzv_id="exp", local_addr="10.1.0.1")
    cfg = launch_config(topo)
    assert (cfg.rdzv_backend, cfg.rdzv_endpoint, cfg.run_id) == (
        "distrib-c10d",
        "10.1.0.1:29400",
        "exp",
    )
    assert (cfg.min_nodes, cfg.max_nodes, cfg.local_addr) == (2, 2, "10.1.0.1")
    assert cfg.rdzv_configs["is_host"] is True
    other = launch_config(Topology(nnodes=2, rdzv_endpoint="10.1.0.1:29400", local_addr="10.1.0.2"))
    assert other.rdzv_configs["is_host"] is False
    assert "is_host" not in launch_config(Topology(nnodes=2, rdzv_endpoint="h:1")).rdzv_configs


def test_node_rank_means_a_static_rendezvous():
    cfg = launch_config(Topology(nnodes=2, node_rank=1, rdzv_endpoint="h:29500"))
    assert cfg.rdzv_backend == "static" and cfg.rdzv_configs["rank"] == 1


@pytest.mark.parametrize(
    ("kwargs", "option"),
    [
        ({"nnodes": 0}, "--nnodes=0"),
        ({"nproc_per_node": 0}, "--nproc-per-node=0"),
        ({"nnodes": 2}, "--rdzv-endpoint=''"),
        ({"nnodes": 2, "rdzv_endpoint": "10.0.0.1"}, "--rdzv-endpoint='10.0.0.1'"),
        ({"nnodes": 2, "rdzv_endpoint": "10.0.0.1:x"}, "--rdzv-endpoint='10.0.0.1:x'"),
        ({"nnodes": 2, "rdzv_endpoint": "h:1", "node_rank": 2}, "--node-rank=2"),
        ({"max_restarts": -1}, "--max-restarts=-1"),
    ],
)
def test_bad_options_are_one_line_naming_the_option(kwargs: dict, option: str):
    with pytest.raises(ConfigError) as info:
        Topology(**kwargs)
    message = str(info.value)
    assert message.startswith(option + ": expected") and "\n" not in message


def test_endpoint_parsing():
    assert split_endpoint("node1:29400") == ("node1", 29400)
    assert split_endpoint("[::1]:5") == ("::1", 5)


def test_workers_get_a_core_share_and_the_interface_to_bind(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    env = worker_env(Topology(nproc_per_node=4, ifname="eth1"), cores=16)
    assert env == {
        "OMP_NUM_THREADS": "4",
        "GLOO_SOCKET_IFNAME": "eth1",
        "NCCL_SOCKET_IFNAME": "eth1",
    }
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # the user's choice wins
    # one node: loopback, so a single-node job is reachable from nowhere (unless told)
    assert worker_env(Topology(nproc_per_node=4), cores=16) == {
        "GLOO_SOCKET_IFNAME": "lo",
        "NCCL_SOCKET_IFNAME": "lo",
    }
    monkeypatch.setenv("GLOO_SOCKET_IFNAME", "eth0")
    assert worker_env(Topology(nproc_per_node=4), cores=16) == {"NCCL_SOCKET_IFNAME": "lo"}
    assert "GLOO_SOCKET_IFNAME" not in worker_env(Topology(nnodes=2, rdzv_endpoint="h:1"))


def test_every_node_names_the_job_alike_without_an_rdzv_id():
    topo = Topology(nnodes=2, node_rank=0, rdzv_endpoint="h:1")
    assert launch_config(topo).run_id == launch_config(topo).run_id == "none"  # torchrun's


def test_a_shared_secret_makes_the_multi_node_rendezvous_key_unguessable():
    from distrib.launch.topology import secret_run_id

    assert secret_run_id("exp1", {}) == "exp1"  # no secret: the name alone (torchrun's way)
    keyed = secret_run_id("exp1", {"DISTRIB_RDZV_SECRET": "s3cr3t"})
    assert keyed.startswith("exp1-") and len(keyed) == len("exp1-") + 16
    assert keyed == secret_run_id("exp1", {"DISTRIB_RDZV_SECRET": "s3cr3t"})  # every node alike
    assert keyed != secret_run_id("exp1", {"DISTRIB_RDZV_SECRET": "other"})
