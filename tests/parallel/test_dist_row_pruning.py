"""Row pruning (l3m.model.pruning) under FSDP2 on 2 processes (gloo, CPU): a ViT whose trunk computes
its last layer for the cls token alone, sharded over two ranks with activation checkpointing, trains
with the losses of one process that computes every token."""

from __future__ import annotations

import pytest
from dist_utils import VIT as VIT_TEMPLATE
from dist_utils import assert_same_losses, train_losses

pytestmark = pytest.mark.dist

VIT = VIT_TEMPLATE.format(trunk="", steps=4, post="    first: ClsPool() x -> x",
                          head="    fc: Classifier(dim = 16, num_classes = 10) x -> logits",
                          losses="loss ce: ClassificationCE() logits, label -> loss")


def test_pruned_vit_on_two_fsdp_ranks_trains_like_one_whole_process(tmp_path):
    program = tmp_path / "vit.l3m"
    program.write_text(VIT)
    whole = train_losses(program, tmp_path / "whole", ["train.prune_rows=false"])
    pruned = train_losses(program, tmp_path / "pruned", ["mesh.dp_shard=2", "train.activation_checkpointing=selective"],
                          nproc=2)
    assert_same_losses(whole, pruned, steps=4)
