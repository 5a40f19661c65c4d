"""Context parallelism under torchrun (2 processes, gloo, CPU) for a model with blocks that need the
whole sequence: a ViT whose patch embedding, cls token and pooling run on the gathered sequence (17
tokens, padded to 18 for two ranks) trains like one process. (The causal LLM, sharded zigzag, is
`test_dist_train.py`'s "cp" mesh.)"""

from __future__ import annotations

import pytest
from dist_utils import VIT as VIT_TEMPLATE
from dist_utils import assert_same_losses, train_losses

pytestmark = pytest.mark.dist

VIT = VIT_TEMPLATE.format(
    trunk=", attn = Attention(pos = Rope2d())", steps=5,
    post="    avg:   AvgPool() x -> a\n    first: ClsPool() x -> c",
    head="    fa: Classifier(dim = 16, num_classes = 10) a -> logits\n"
         "    fc: Classifier(dim = 16, num_classes = 10) c -> logits_cls",
    losses="loss ce:  ClassificationCE() logits, label -> loss\nloss ce2: ClassificationCE() logits_cls, label -> loss_cls")


def test_vit_with_cls_token_and_pooling_trains_like_one_process(tmp_path):
    program = tmp_path / "vit.l3m"
    program.write_text(VIT)
    single = train_losses(program, tmp_path / "single", [])
    cp = train_losses(program, tmp_path / "cp", ["mesh.cp=2"], nproc=2)
    assert_same_losses(single, cp, steps=5)
