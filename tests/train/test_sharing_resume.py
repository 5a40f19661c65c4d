"""Shared weights (`share`, `share_layers`) survive the real checkpoint path: a run stopped after step 2
and resumed reaches the losses and weights of an uninterrupted run, with the shares intact."""

from __future__ import annotations

import pytest
import torch
from train_utils import final_weights, metrics

from l3m.train.api import train_main

pytestmark = pytest.mark.usefixtures("run_env")

PROGRAM = """l3m 1
data { train: DigitsImages(image_size = 8, batch_size = 8) -> image, label }
model m {
  preprocessor {
    conv1:   Conv2d(in_channels = 3, out_channels = 3, padding = same)  image -> x
    conv2:   Conv2d(in_channels = 3, out_channels = 3, padding = same, share = "conv1")  x -> x
    patches: PatchEmbed(dim = 16, patch = 4)  x -> x
  }
  trunk { blocks: Transformer(dim = 16, depth = 3, heads = 2, share_layers = true)  x -> x }
  postprocessor { pool: AvgPool()  x -> x }
  head { fc: Classifier(dim = 16, num_classes = 10)  x -> logits }
}
loss ce: ClassificationCE() logits, label -> loss
optimizer AdamW(lr = 3e-3)
train { steps = 4, log_every = 1, checkpoint_every = 2, keep = 0, dtype = fp32 }
log { wandb = "disabled" }
"""


def test_resume_with_shared_weights_matches_an_uninterrupted_run(tmp_path):
    program = tmp_path / "share.l3m"
    program.write_text(PROGRAM)
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert train_main(str(program), [], output=str(whole)) == 0
    assert train_main(str(program), ["train.steps=2"], output=str(parts)) == 0
    assert train_main(str(program), [], output=str(parts), resume=True) == 0
    ref = {r["step"]: r["loss"] for r in metrics(whole)}
    got = {r["step"]: r["loss"] for r in metrics(parts)}
    for step in (3, 4):
        assert got[step] == pytest.approx(ref[step], rel=1e-6)
    a, b = final_weights(whole), final_weights(parts)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k])
    assert torch.equal(b["m.preprocessor.conv1.weight"], b["m.preprocessor.conv2.weight"])
    layer0 = {k for k in b if k.startswith("m.trunk.blocks.layers.0.")}
    assert layer0 and all(torch.equal(b[k], b[k.replace("layers.0.", "layers.2.")]) for k in layer0)
