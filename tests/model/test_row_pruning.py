"""Row pruning (l3m.model.pruning): a trunk read only by a pooling block computes its last layer for
the pooled tokens alone in training, with the loss and every gradient of the full computation; what
the program shows decides it, and `l3m plan` says so."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from helpers import ROOT

import l3m
from l3m.model.pruning import plan_row_pruning
from l3m.train.session import Runtime, build_session

VIT = str(ROOT / "examples" / "vit_digits.l3m")
CLIP = str(ROOT / "examples" / "clip_digits.l3m")


def trunk_widths(model, paths: list[str]) -> dict[str, int]:
    """Tokens in each trunk's output on the next forward (a hook on each)."""
    seen: dict[str, int] = {}
    for p in paths:
        model.get_submodule(p).register_forward_hook(
            lambda m, a, out, p=p: seen.__setitem__(p, out[0].shape[1])
        )
    return seen


def one_step(path: str, overrides: list[str], batch=None):
    """Loss, gradients and trunk widths of one training forward and backward."""
    s = build_session(l3m.load(path, overrides), Runtime(), command="train")
    batch = batch if batch is not None else next(s.train_loader)
    widths = trunk_widths(s.model, [p for p in s.model.schedule if p.endswith("trunk.blocks")])
    loss = s.criterion(s.model(dict(batch)))[0]
    loss.backward()
    grads = {n: p.grad.clone() for n, p in s.model.named_parameters()}
    s.close()
    return loss.detach(), grads, dict(widths), batch


def assert_same(a, b):
    torch.testing.assert_close(a[0], b[0], rtol=1e-5, atol=1e-6)
    assert a[1].keys() == b[1].keys()
    for name in a[1]:
        torch.testing.assert_close(a[1][name], b[1][name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize(
    "extra", [[], ["vit.depth=1"], ["train.activation_checkpointing=full"]]
)
def test_vit_computes_the_cls_row_alone_with_the_same_loss_and_gradients(extra):
    pruned = one_step(VIT, extra)
    full = one_step(VIT, [*extra, "train.prune_rows=false"], pruned[3])
    assert pruned[2] == {"vit.trunk.blocks": 1} and full[2] == {"vit.trunk.blocks": 17}
    assert_same(pruned, full)


def test_clip_text_tower_computes_each_captions_end_alone_causally():
    s = build_session(l3m.load(CLIP), Runtime(), command="train")
    batch = dict(next(s.train_loader))
    s.close()
    text = batch["text"].clone()
    text[0] = 5  # no EOS at all: pooled at position 0
    text[1] = 5
    text[1, -1] = 2  # EOS on the last position only
    batch["text"] = text
    pruned = one_step(CLIP, [], batch)
    full = one_step(CLIP, ["train.prune_rows=false"], batch)
    assert pruned[2] == {"clip.image.trunk.blocks": 1, "clip.text.trunk.blocks": 1}
    assert full[2] == {"clip.image.trunk.blocks": 17, "clip.text.trunk.blocks": 16}
    assert_same(pruned, full)


def test_evaluation_computes_every_row():
    s = build_session(l3m.load(VIT), Runtime(), command="train")
    batch = next(s.train_loader)
    widths = trunk_widths(s.model, ["vit.trunk.blocks"])
    s.model.eval()
    with torch.no_grad():
        logits = s.model(dict(batch))["logits"]
    assert widths == {"vit.trunk.blocks": 17}
    s.model.train()
    with torch.no_grad():
        torch.testing.assert_close(s.model(dict(batch))["logits"], logits, rtol=1e-5, atol=1e-6)
    assert widths == {"vit.trunk.blocks": 1}
    s.close()


def trunks(path: str, overrides: list[str] = ()) -> list[str]:
    return [p.trunk for p in plan_row_pruning(l3m.load(path, list(overrides)).program)]


VIT_PROGRAM = """l3m 1
data {{ train: Synthetic(kind = image, image_size = 8, num_classes = 3, batch_size = 2, length = 4) -> image, label }}
model vit {{
  preprocessor {{
    patches: PatchEmbed(dim = 8, patch = 4)  image -> x
    cls:     ClsToken(dim = 8)                x -> x
  }}
  trunk {{ blocks: Transformer(dim = 8, depth = {depth}, heads = 2{trunk})  x -> x }}
  postprocessor {{
    pool: ClsPool()  x -> {pooled}{other}
  }}
  head {{ fc: Classifier(dim = 8, num_classes = 3)  {pooled} -> logits }}
}}
loss ce: ClassificationCE()  logits, label -> loss
optimizer AdamW(lr = 1e-3)
train {{ steps = 1 }}
{mesh}
"""


def vit_program(tmp_path, *, trunk="", depth=2, pooled="x", other="", mesh=""):
    path = tmp_path / f"v{abs(hash((trunk, depth, pooled, other, mesh)))}.l3m"
    path.write_text(VIT_PROGRAM.format(trunk=trunk, depth=depth, pooled=pooled, other=other, mesh=mesh))
    return str(path)


def test_the_program_decides(tmp_path):
    assert trunks(VIT) == ["vit.trunk.blocks"]
    assert trunks(CLIP) == ["clip.image.trunk.blocks", "clip.text.trunk.blocks"]
    assert trunks(VIT, ["train.prune_rows=false"]) == []
    assert trunks(str(ROOT / "examples" / "llama_tiny.l3m")) == []  # an LM head reads every token
    assert trunks(vit_program(tmp_path)) == ["vit.trunk.blocks"]
    # another reader of the trunk's output, which keeps every token
    assert trunks(vit_program(tmp_path, pooled="cls_x", other="\n    avg: AvgPool()  x -> feats")) == []
    # layers that return hidden states or end in a MoE layer (whose balancing terms count every token)
    assert trunks(vit_program(tmp_path, trunk=", return_hidden = 1")) == []
    moe = ", mlp = swiglu, multiple_of = 8, moe_every = 2"
    assert trunks(vit_program(tmp_path, trunk=moe)) == []
    assert trunks(vit_program(tmp_path, trunk=moe.replace("2", "3"), depth=3)) == []
    assert trunks(vit_program(tmp_path, trunk=moe, depth=3)) == ["vit.trunk.blocks"]  # a dense last layer
    # a sequence split over ranks, or heads over ranks
    assert trunks(vit_program(tmp_path, mesh="mesh { cp = 2 }")) == []
    assert trunks(vit_program(tmp_path, mesh="mesh { tp = 2 }")) == []


def test_plan_says_so_as_typed():
    def plan(*overrides):
        return subprocess.run([sys.executable, "-m", "l3m", "plan", VIT, *overrides], capture_output=True, text=True,
                              cwd=ROOT, timeout=300, env=dict(os.environ, NO_COLOR="1"))

    on, off, typo = plan(), plan("train.prune_rows=false"), plan("train.prune_rows=maybe")
    assert on.returncode == 0 and off.returncode == 0, on.stderr + off.stderr
    line = "pruned: vit.trunk.blocks's last layer computes only the tokens vit.postprocessor.pool reads"
    assert line in on.stdout and "pruned:" not in off.stdout
    assert typo.returncode == 1 and "error[" in typo.stderr + typo.stdout and "Traceback" not in typo.stderr
