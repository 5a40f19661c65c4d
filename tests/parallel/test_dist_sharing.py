"""Weight sharing under data parallelism (torchrun, 2 processes, gloo, CPU): a block that shares another
block's parameters (`share`), a Transformer whose layers share one set of weights (`share_layers`) and a
synchronised BatchNorm train exactly like one process on the same global batch, with FSDP2 (plus
activation checkpointing) and with replication; the checkpoint holds the shared tensors whole."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from dist_utils import run

from l3m.train.checkpoint import load_model_tensors
from l3m.train.logging import read_metrics

pytestmark = pytest.mark.dist

PROGRAM = """l3m 1
data { train: DigitsImages(image_size = 8, batch_size = 8) -> image, label }
model m {
  preprocessor {
    stem:    Conv2d(in_channels = 3, out_channels = 8, padding = same, bias = false)  image -> x
    bn:      BatchNorm(channels = 8, sync = true)  x -> x
    conv1:   Conv2d(in_channels = 8, out_channels = 8, padding = same)  x -> x
    conv2:   Conv2d(in_channels = 8, out_channels = 8, padding = same, share = "conv1")  x -> x
    patches: PatchEmbed(dim = 16, patch = 4, in_chans = 8)  x -> x
  }
  trunk { blocks: Transformer(dim = 16, depth = 3, heads = 2, share_layers = true)  x -> x }
  postprocessor { pool: AvgPool()  x -> x }
  head { fc: Classifier(dim = 16, num_classes = 10)  x -> logits }
}
loss ce: ClassificationCE() logits, label -> loss
optimizer AdamW(lr = 3e-3)
train { steps = 3, log_every = 1, checkpoint_every = 3, keep = 0, dtype = fp32 }
log { wandb = "disabled", console = "plain" }
"""

MESHES = {
    "single": (1, []),
    "dp_shard": (2, ["mesh.dp_shard=2", "train.activation_checkpointing=full"]),
    "dp_replicate": (2, ["mesh.dp_replicate=2"]),
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("share")
    program = root / "share.l3m"
    program.write_text(PROGRAM)
    out = {}
    for name, (nproc, overrides) in MESHES.items():
        proc = run(["-m", "l3m", "train", str(program), "--output", str(root / name), *overrides], nproc=nproc)
        assert proc.returncode == 0, f"{name}:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
        out[name] = root / name
    return out


def _losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(run_dir / "metrics.jsonl") if r["split"] == "train"}


@pytest.mark.parametrize("mesh", ["dp_shard", "dp_replicate"])
def test_shared_weights_train_like_one_process(runs, mesh):
    ref, got = _losses(runs["single"]), _losses(runs[mesh])
    assert sorted(ref) == sorted(got) == [1, 2, 3]
    for step in ref:
        assert got[step] == pytest.approx(ref[step], rel=1e-5), f"step {step}: {got[step]} vs {ref[step]}"
    a = load_model_tensors(runs["single"] / "ckpt" / "step_000003")
    b = load_model_tensors(runs[mesh] / "ckpt" / "step_000003")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-4, msg=lambda m, k=k: f"{k}: {m}")
    # one tensor under both names, after training on two ranks
    assert torch.equal(b["m.preprocessor.conv1.weight"], b["m.preprocessor.conv2.weight"])
    # the synchronised BatchNorm's running statistics are the global batch's (those of one process)
    torch.testing.assert_close(a["m.preprocessor.bn.running_mean"], b["m.preprocessor.bn.running_mean"])
