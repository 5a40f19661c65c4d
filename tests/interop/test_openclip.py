"""open_clip CLIP <-> l3m: a randomly initialised open_clip model (no download) and the l3m CLIP that
imports its weights give the same image and text embeddings and contrastive loss in fp32, and the
export gives the same tensors back."""

from __future__ import annotations

import pytest
import torch

import l3m
from l3m.interop.openclip import (
    clip_layout,
    l3m_to_open_clip,
    open_clip_config,
    open_clip_overrides,
    open_clip_to_l3m,
)
from l3m.model.build import materialize
from l3m.model.criterion import build_criterion
from l3m.train.export import load_pretrained

AS_OPEN_CLIP = open_clip_overrides()  # examples/clip_digits.l3m's towers in open_clip's form


def l3m_clip(fused: bool = True):
    from helpers import ROOT

    ov = [*AS_OPEN_CLIP, *(f"clip.{t}.trunk.blocks.fused_qkv={str(fused).lower()}" for t in ("image", "text"))]
    compiled = l3m.load(str(ROOT / "examples" / "clip_digits.l3m"), ov)
    model = materialize(compiled.build_model(), "cpu").eval()
    return model, build_criterion(compiled.program, metrics=False)


def open_clip_model(model):
    open_clip = pytest.importorskip("open_clip")
    torch.manual_seed(0)
    ref = open_clip.CLIP(**open_clip_config(model)).eval()
    with torch.no_grad():  # every tensor random, norms and biases included
        for name, p in ref.named_parameters():
            if name == "logit_scale":  # l3m clamps it to [0, log 100], open_clip's training script does
                p.fill_(3.0)
                continue
            p.copy_(torch.randn_like(p) * (0.3 if p.dim() > 1 else 0.1) + (1.0 if ".ln" in name or "ln_" in name else 0))
    return ref


def batch():
    g = torch.Generator().manual_seed(1)
    text = torch.randint(3, 320, (4, 16), generator=g)
    text[:, 9:] = 2  # eos, then eos padding
    text[1, 5] = 2  # one shorter caption: pooled at its first eos
    return {"image": torch.randn(4, 3, 16, 16, generator=g), "text": text}


@pytest.mark.parametrize("fused", [True, False], ids=["fused-qkv", "separate-qkv"])
def test_embeddings_and_loss_match_open_clip_and_export_round_trips(fused):
    ClipLoss = pytest.importorskip("open_clip.loss").ClipLoss
    model, criterion = l3m_clip(fused)
    ref = open_clip_model(model)
    state = ref.state_dict()
    report = load_pretrained(model, open_clip_to_l3m(state, model))
    assert report.ok and len(report.loaded) == len(model.state_dict())
    b = batch()
    with torch.no_grad():
        out = model(dict(b))
        image, text, scale = ref(b["image"], b["text"])
        want = ClipLoss()(image, text, scale)
        got = criterion(out)[0]
    torch.testing.assert_close(out["image_emb"], image, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out["text_emb"], text, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    back = l3m_to_open_clip(model.state_dict(), model)
    assert sorted(back) == sorted(state)
    assert all(torch.equal(back[k], state[k]) for k in state)


def test_shipped_clip_is_refused_with_what_to_change():
    from helpers import ROOT

    model = l3m.load(str(ROOT / "examples" / "clip_digits.l3m")).build_model()
    with pytest.raises(ValueError, match=r"PatchEmbed\(bias = false, norm = none\)"):
        clip_layout(model)
    model = l3m.load(str(ROOT / "examples" / "clip_digits.l3m"), AS_OPEN_CLIP[:2]).build_model()
    with pytest.raises(ValueError, match="not an open_clip tower; it needs final_norm = true with norm = layernorm"):
        clip_layout(model)


def test_the_cli_offers_every_converter():
    from l3m.cli import CHECKPOINT_KINDS
    from l3m.interop import CONVERTERS

    assert set(CHECKPOINT_KINDS) == set(CONVERTERS)
