"""The `torchrun` command for one or many nodes: rendezvous settings from flags, else the environment.

Under SLURM, torchrun runs once per node; every node must name the same rendezvous endpoint and id, so
they come from what SLURM already gives every node (the first host of the allocation, the job id). Outside
SLURM the usual MASTER_ADDR / MASTER_PORT name the endpoint. One node without an endpoint is `--standalone`.
"""

from __future__ import annotations

import os
import re
import shlex
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

DEFAULT_PORT = 29500


class LaunchError(ValueError):
    """A launch that cannot be set up from the flags and environment given (the CLI exits 2)."""


@dataclass(frozen=True)
class Rendezvous:
    """Where and how the nodes of one run meet (torchrun's c10d rendezvous)."""

    nnodes: int
    nproc_per_node: int
    endpoint: str | None = None  # HOST:PORT; None on one node means --standalone
    rdzv_id: str | None = None
    node_rank: int | None = None

    @property
    def world_size(self) -> int:
        return self.nnodes * self.nproc_per_node


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list (`gpu[003-005,9],cpu1` -> `gpu003`), as `scontrol show hostnames`."""
    match = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist.strip())
    if not match or not match.group(1):
        raise LaunchError(f"cannot read the SLURM node list {nodelist!r}")
    prefix, ranges = match.group(1), match.group(2)
    return prefix + ranges.split(",")[0].split("-")[0] if ranges else prefix


def _int(value: str | None, what: str) -> int | None:
    if value in (None, ""):
        return None
    number = value.split("(")[0]  # SLURM writes repeated counts as "2(x3)"
    try:
        return int(number)
    except ValueError:
        raise LaunchError(f"{what} must be an integer, got {value!r}") from None


def resolve(nnodes: int | None = None, nproc_per_node: int | None = None, endpoint: str | None = None,
            rdzv_id: str | None = None, node_rank: int | None = None,
            env: Mapping[str, str] | None = None) -> Rendezvous:
    """Flags win; then SLURM's variables; then MASTER_ADDR/MASTER_PORT, NODE_RANK; then one node."""
    env = os.environ if env is None else env
    nnodes = nnodes or _int(env.get("SLURM_JOB_NUM_NODES") or env.get("SLURM_NNODES"), "SLURM_JOB_NUM_NODES") or 1
    nproc_per_node = nproc_per_node or _int(env.get("SLURM_GPUS_ON_NODE"), "SLURM_GPUS_ON_NODE") or 1
    if node_rank is None:
        node_rank = _int(env.get("SLURM_NODEID") or env.get("NODE_RANK"), "SLURM_NODEID / NODE_RANK")
    if endpoint is None and env.get("MASTER_ADDR"):
        endpoint = f"{env['MASTER_ADDR']}:{env.get('MASTER_PORT') or DEFAULT_PORT}"
    if endpoint is None and nnodes > 1 and env.get("SLURM_JOB_NODELIST"):
        endpoint = f"{first_host(env['SLURM_JOB_NODELIST'])}:{env.get('MASTER_PORT') or DEFAULT_PORT}"
    if endpoint is not None:
        endpoint = _checked_endpoint(endpoint)
    rdzv_id = rdzv_id or env.get("SLURM_JOB_ID") or None
    if nnodes > 1:
        if endpoint is None:
            raise LaunchError(f"{nnodes} nodes need a rendezvous endpoint: give --rdzv-endpoint HOST:PORT "
                              "(or set MASTER_ADDR, or run inside a SLURM allocation)")
        if rdzv_id is None:
            raise LaunchError(f"{nnodes} nodes need a rendezvous id shared by all of them: give --rdzv-id ID "
                              "(SLURM_JOB_ID is used inside a SLURM allocation)")
    return Rendezvous(nnodes, nproc_per_node, endpoint, rdzv_id, node_rank)


def _checked_endpoint(endpoint: str) -> str:
    host, sep, port = endpoint.rpartition(":")
    if not sep:
        return f"{endpoint}:{DEFAULT_PORT}"
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise LaunchError(f"--rdzv-endpoint must be HOST:PORT, got {endpoint!r}")
    return endpoint


def torchrun_executable() -> str:
    """The torchrun installed beside this Python (a virtual environment's), else the one on PATH."""
    beside = Path(sys.executable).with_name("torchrun")
    return str(beside) if beside.exists() else "torchrun"


def torchrun_command(rdzv: Rendezvous, train_args: list[str], executable: str = "torchrun") -> list[str]:
    """`torchrun ... -m l3m train TRAIN_ARGS`; `--max-restarts 0`: a run stopped on purpose is not restarted."""
    cmd = [executable, f"--nnodes={rdzv.nnodes}", f"--nproc-per-node={rdzv.nproc_per_node}"]
    if rdzv.nnodes == 1 and rdzv.endpoint is None:
        cmd.append("--standalone")
    else:
        cmd += ["--rdzv-backend=c10d", f"--rdzv-endpoint={rdzv.endpoint}"]
        if rdzv.rdzv_id:
            cmd.append(f"--rdzv-id={rdzv.rdzv_id}")
    if rdzv.node_rank is not None:
        cmd.append(f"--node-rank={rdzv.node_rank}")
    cmd += ["--max-restarts=0", "-m", "l3m", "train", *train_args]
    return cmd


def format_command(cmd: list[str]) -> str:
    return shlex.join(cmd)
