"""Fixtures of the parallelism tests."""

from __future__ import annotations

import pytest
import torch.distributed as dist


@pytest.fixture
def fake_world():
    """`start(world, rank)`: this process becomes one rank of a fake world (collectives do nothing),
    enough to build meshes and check layouts without launching processes."""
    from torch.testing._internal.distributed.fake_pg import FakeStore

    def start(world: int, rank: int) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()
        dist.init_process_group("fake", store=FakeStore(), rank=rank, world_size=world)

    yield start
    if dist.is_initialized():
        dist.destroy_process_group()
