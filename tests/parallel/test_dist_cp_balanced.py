"""Context parallelism under torchrun (2 processes, gloo, CPU) for a model with blocks that need the
whole sequence: a ViT whose patch embedding, cls token and pooling run on the gathered sequence (17
tokens, padded to 18 for two ranks) trains like one process. (The causal LLM, sharded zigzag, is
`test_dist_train.py`'s "cp" mesh.)"""

from __future__ import annotations

import pytest
from dist_utils import run

from l3m.train.logging import read_metrics

pytestmark = pytest.mark.dist

VIT = """l3m 1
data { train: DigitsImages(image_size = 16, batch_size = 8) -> image, label }
model vit {
  preprocessor {
    patch: PatchEmbed(dim = 16, patch = 4, in_chans = 3) image -> x
    cls:   ClsToken(dim = 16)                             x -> x
    pos:   PosEmbed(dim = 16, num = 17)                   x -> x
  }
  trunk { blocks: Transformer(dim = 16, depth = 2, heads = 2, attn = Attention(pos = Rope2d())) x -> x }
  postprocessor {
    avg:   AvgPool() x -> a
    first: ClsPool() x -> c
  }
  head {
    fa: Classifier(dim = 16, num_classes = 10) a -> logits
    fc: Classifier(dim = 16, num_classes = 10) c -> logits_cls
  }
}
loss ce:  ClassificationCE() logits, label -> loss
loss ce2: ClassificationCE() logits_cls, label -> loss_cls
optimizer AdamW(lr = 1e-2)
train { steps = 5, log_every = 1, checkpoint_every = 0, keep = 0 }
log { wandb = "disabled", console = "plain" }
"""


def test_vit_with_cls_token_and_pooling_trains_like_one_process(tmp_path):
    program = tmp_path / "vit.l3m"
    program.write_text(VIT)
    losses = {}
    for name, nproc, extra in (("single", 1, []), ("cp", 2, ["mesh.cp=2"])):
        out = tmp_path / name
        proc = run(["-m", "l3m", "train", str(program), "--output", str(out), *extra], nproc=nproc)
        assert proc.returncode == 0, f"{name}:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
        losses[name] = {r["step"]: r["loss"] for r in read_metrics(out / "metrics.jsonl") if r["split"] == "train"}
    assert sorted(losses["single"]) == sorted(losses["cp"]) == [1, 2, 3, 4, 5]
    for step, want in losses["single"].items():
        assert losses["cp"][step] == pytest.approx(want, rel=1e-5), step
