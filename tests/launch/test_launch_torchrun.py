"""The torchrun command `l3m launch` builds, from flags and from the environment a cluster gives."""

from __future__ import annotations

import pytest

from l3m.launch.torchrun import LaunchError, first_host, resolve, torchrun_command

TRAIN = ["prog.l3m", "train.steps=3"]


def command(env=None, **flags) -> list[str]:
    return torchrun_command(resolve(env=env or {}, **flags), TRAIN)


def test_one_node_is_standalone():
    assert command(nproc_per_node=4) == [
        "torchrun", "--nnodes=1", "--nproc-per-node=4", "--standalone", "--max-restarts=0",
        "-m", "l3m", "train", "prog.l3m", "train.steps=3"]


def test_nothing_given_is_one_process():
    assert command()[1:4] == ["--nnodes=1", "--nproc-per-node=1", "--standalone"]


def test_multi_node_from_flags():
    cmd = command(nnodes=2, nproc_per_node=8, endpoint="head:29400", rdzv_id="exp1", node_rank=1)
    assert cmd[:8] == ["torchrun", "--nnodes=2", "--nproc-per-node=8", "--rdzv-backend=c10d",
                       "--rdzv-endpoint=head:29400", "--rdzv-id=exp1", "--node-rank=1", "--max-restarts=0"]
    assert cmd[8:] == ["-m", "l3m", "train", *TRAIN]


def test_endpoint_without_port_gets_the_default_port():
    assert "--rdzv-endpoint=head:29500" in command(nnodes=2, endpoint="head", rdzv_id="x")


def test_master_addr_and_port_from_the_environment():
    env = {"MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "1234", "NODE_RANK": "3"}
    cmd = command(env, nnodes=4, nproc_per_node=2, rdzv_id="r")
    assert "--rdzv-endpoint=10.0.0.1:1234" in cmd and "--node-rank=3" in cmd and "--standalone" not in cmd


def test_slurm_allocation_gives_everything():
    env = {"SLURM_JOB_NUM_NODES": "2", "SLURM_GPUS_ON_NODE": "8", "SLURM_JOB_NODELIST": "gpu[007-008]",
           "SLURM_JOB_ID": "4242", "SLURM_NODEID": "1"}
    cmd = command(env)
    assert cmd[1:7] == ["--nnodes=2", "--nproc-per-node=8", "--rdzv-backend=c10d",
                        "--rdzv-endpoint=gpu007:29500", "--rdzv-id=4242", "--node-rank=1"]


def test_flags_win_over_the_environment():
    env = {"SLURM_JOB_NUM_NODES": "2", "SLURM_GPUS_ON_NODE": "8", "SLURM_JOB_NODELIST": "gpu[007-008]",
           "SLURM_JOB_ID": "4242", "MASTER_PORT": "7000"}
    cmd = command(env, nnodes=3, nproc_per_node=2, endpoint="other:1", rdzv_id="mine", node_rank=0)
    assert cmd[1:7] == ["--nnodes=3", "--nproc-per-node=2", "--rdzv-backend=c10d", "--rdzv-endpoint=other:1",
                        "--rdzv-id=mine", "--node-rank=0"]


def test_slurm_master_port_is_used_for_the_first_host():
    env = {"SLURM_NNODES": "2", "SLURM_JOB_NODELIST": "a1,b2", "SLURM_JOB_ID": "9", "MASTER_PORT": "6000"}
    assert "--rdzv-endpoint=a1:6000" in command(env)


@pytest.mark.parametrize(("nodelist", "host"), [
    ("gpu[003-005,9],cpu1", "gpu003"), ("node17", "node17"), ("n[1,4]", "n1"), ("a-b[01-02]", "a-b01"),
])
def test_first_host_of_a_node_list(nodelist, host):
    assert first_host(nodelist) == host


@pytest.mark.parametrize(("flags", "env", "words"), [
    ({"nnodes": 2}, {}, "rendezvous endpoint"),
    ({"nnodes": 2, "endpoint": "h:1"}, {}, "rendezvous id"),
    ({"nnodes": 2, "endpoint": "h:port", "rdzv_id": "x"}, {}, "HOST:PORT"),
    ({}, {"SLURM_JOB_NUM_NODES": "two"}, "integer"),
])
def test_what_cannot_launch(flags, env, words):
    with pytest.raises(LaunchError, match=words):
        resolve(env=env, **flags)
