"""Expert parallelism end to end under torchrun (2 processes, gloo, CPU): `mesh { dp_shard = 2, ep = 2 }` trains
like `ep = 1` on the same mesh (losses, balance losses and weights over 5 steps), in capacity and dropless modes;
its checkpoint (experts split by expert) resumes on `ep = 1`; the MoE alone matches the single-process MoE on
each rank's tokens (outputs, balance loss, gradients: `ep_worker.py`)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from dist_utils import ROOT, run

from l3m.train.checkpoint import load_model_tensors
from l3m.train.logging import read_metrics

pytestmark = pytest.mark.dist

# examples/aimv2_moe_digits.l3m at a tiny size, its encoder split in two MoE transformers: one with a
# capacity (top-2, drops under a capacity factor 1), one dropless (top-1, raw probabilities, as AIMv2-MoE).
PROGRAM = """l3m 1
import "{models}/aimv2.l3m" as aimv2

let patch    = 4
let image_size = 16
let text_len = 16
let vocab    = 320

data {{
  train:  DigitsImageText(split = train, image_size = image_size, seq_len = text_len, batch_size = 8,
                          tokenizer = "digits_bpe")                              -> image, text, label
  prefix: RandomPrefixLength(low = 1, high = (image_size // patch) ** 2 - 1)  image -> prefix_len
}}

def Enc(dim) image, prefix_len -> features, aux_capacity, aux_dropless {{
  preprocessor {{
    patches: PatchEmbed(dim = dim, patch = patch, bias = true, norm = rmsnorm, norm_eps = 1e-5)  image -> x
    pos:     PosEmbed(dim = dim, num = (image_size // patch) ** 2, init = normal)  x -> x
    mask:    PrefixCausalMask()                                                    x, prefix_len -> mask
  }}
  trunk {{
    capped:   Transformer(dim = dim, depth = 1, heads = 2, mlp = swiglu, hidden = 32, norm = rmsnorm,
                          norm_eps = 1e-5, moe_every = 1, num_experts = 4, top_k = 2, capacity_factor = 1.0,
                          moe_aux_scale = 0.01, moe_act = gelu, moe_init = normal)
              (x = x, mask = mask) -> x, aux_capacity
    dropless: Transformer(dim = dim, depth = 1, heads = 2, mlp = swiglu, hidden = 32, norm = rmsnorm,
                          norm_eps = 1e-5, moe_every = 1, num_experts = 4, top_k = 1, moe_aux_scale = 0.01,
                          moe_act = gelu, moe_init = normal, moe_normalize = false)
              (x = x, mask = mask) -> features, aux_dropless
  }}
}}

model aimv2_moe {{
  model encoder = Enc(dim = 16)  image, prefix_len -> features, aux_capacity, aux_dropless
  model decoder = aimv2.Decoder(enc_dim = 16, dim = 16, depth = 1, heads = 2, vocab = vocab, text_len = text_len,
                                patch = patch, image_size = image_size)
                  features, text -> text_logits, pixels
}}

loss pixel:   PixelLoss(patch = patch, norm_pix = true, shift = true)  pixels, image, prefix_len -> loss_pixel  weight 0.4
loss text:    LMCrossEntropy(ignore_index = 0)                         text_logits, text -> loss_text  weight 1.0
loss capacity: MoEBalance()  aux_capacity -> loss_capacity  weight 1.0
loss dropless: MoEBalance()  aux_dropless -> loss_dropless  weight 1.0

optimizer AdamW(lr = 2e-3, betas = [0.9, 0.95], weight_decay = 0.05)
train     {{ steps = 5, dtype = fp32, grad_clip = 1.0, checkpoint_every = 2, keep = 0, log_every = 1 }}
log       {{ wandb = "disabled", console = "plain" }}
"""
EP1, EP2 = ["mesh.dp_shard=2"], ["mesh.dp_shard=2", "mesh.ep=2"]


def train(program: Path, out: Path, overrides: list[str]) -> Path:
    proc = run(["-m", "l3m", "train", str(program), "--output", str(out), *overrides], nproc=2)
    assert proc.returncode == 0, f"{out.name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return out


def metrics(run_dir: Path) -> dict[int, dict]:
    return {r["step"]: r for r in read_metrics(run_dir / "metrics.jsonl") if r["split"] == "train"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ep")
    program = root / "moe.l3m"
    program.write_text(PROGRAM.format(models=ROOT / "models"))
    return {"program": program, "ep1": train(program, root / "ep1", EP1), "ep2": train(program, root / "ep2", EP2)}


def test_expert_parallel_trains_like_ep1(runs):
    ref, got = metrics(runs["ep1"]), metrics(runs["ep2"])
    assert sorted(ref) == sorted(got) == [1, 2, 3, 4, 5]
    for step in ref:
        for key in ("loss", "capacity", "dropless", "pixel", "text"):
            assert got[step][key] == pytest.approx(ref[step][key], rel=1e-5, abs=1e-7), (step, key)
    a = load_model_tensors(runs["ep1"] / "ckpt" / "step_000005")
    b = load_model_tensors(runs["ep2"] / "ckpt" / "step_000005")
    assert a.keys() == b.keys() and any(k.endswith("mlp.w1") for k in a)
    for k in a:  # the experts come back whole from their expert-split shards
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-5, msg=lambda m, k=k: f"{k}: {m}")


def test_expert_parallel_checkpoint_resumes_on_ep1(runs, tmp_path):
    out = tmp_path / "resumed"
    shutil.copytree(runs["ep2"] / "ckpt" / "step_000002", out / "ckpt" / "step_000002")
    train(runs["program"], out, EP1)
    ref, got = metrics(runs["ep1"]), metrics(out)
    assert sorted(got) == [3, 4, 5]
    for step in got:
        assert got[step]["loss"] == pytest.approx(ref[step]["loss"], rel=1e-5), step


def test_expert_parallel_moe_matches_each_ranks_moe():
    proc = run(["tests/parallel/ep_worker.py"], nproc=2)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "OK ep" in proc.stdout

