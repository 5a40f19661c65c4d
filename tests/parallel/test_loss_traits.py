"""A loss of the user's own gets the distributed wiring a built-in gets, from its traits: the process
group it reduces over (`group_over`), and a refusal of context parallelism that says why."""

from __future__ import annotations

import pytest
from torch import nn

from l3m.config import MeshConfig
from l3m.dist import build_mesh, parallelize_criterion


class TokenMean(nn.Module):
    group_over = "tokens"
    context_parallel = "local"

    def __init__(self):
        super().__init__()
        self.group = None


class SampleGather(TokenMean):
    group_over = "samples"


class WholeDocs(TokenMean):
    context_parallel = "whole"
    context_parallel_note = "it ranks whole documents"


def test_group_over_sets_the_group(fake_world):
    fake_world(8, 3)
    crit = nn.ModuleDict({"mean": TokenMean(), "gather": SampleGather(), "plain": nn.Identity()})
    parallelize_criterion(crit, build_mesh(MeshConfig(dp_shard=2, cp=2, tp=2)))
    assert crit["mean"].group.size() == 4  # data x context parallel: every rank with other tokens
    assert crit["gather"].group.size() == 2  # data parallel only: the ranks with other samples
    assert not hasattr(crit["plain"], "group")


def test_a_whole_sequence_loss_is_refused_with_its_reason(fake_world):
    fake_world(2, 0)
    with pytest.raises(ValueError, match=r"loss 'docs' \(WholeDocs\) needs them whole: it ranks whole documents"):
        parallelize_criterion(nn.ModuleDict({"docs": WholeDocs()}), build_mesh(MeshConfig(dp_shard=1, cp=2)))
    fake_world(2, 0)
    parallelize_criterion(nn.ModuleDict({"docs": WholeDocs()}), build_mesh(MeshConfig(dp_shard=2)))  # no cp: fine
