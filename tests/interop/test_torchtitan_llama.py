"""torchtitan Llama 3 <-> l3m: the tiny Llama example and torchtitan's model holding its weights give
the same logits in fp32 (torchtitan's own complex RoPE, so the q/k rows are re-paired), and the
export round-trips."""

from __future__ import annotations

import pytest
import torch

import l3m
from l3m.interop.torchtitan_llama import (
    l3m_to_titan,
    titan_model,
    titan_to_l3m,
    to_interleaved,
    to_rotate_half,
)
from l3m.model.build import materialize
from l3m.train.export import load_pretrained


def tiny_llama(fused: bool):
    from helpers import ROOT

    ov = ["vocab=256", "tokenizer=bytes", f"llama.trunk.blocks.fused_qkv={str(fused).lower()}"]
    model = materialize(l3m.load(str(ROOT / "examples" / "llama_tiny.l3m"), ov).build_model(), "cpu").eval()
    torch.manual_seed(0)
    with torch.no_grad():  # norms random too
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


def test_pairing_permutation_is_inverted():
    w = torch.randn(4 * 16, 8)
    assert torch.equal(to_rotate_half(to_interleaved(w, 16), 16), w)
    assert not torch.equal(to_interleaved(w, 16), w)


@pytest.mark.parametrize("fused", [True, False], ids=["fused-qkv", "separate-qkv"])
def test_logits_match_torchtitan_and_export_round_trips(fused):
    pytest.importorskip("torchtitan.models.llama3")
    model = tiny_llama(fused)
    peer = titan_model(model, max_seq_len=64).eval()
    tokens = torch.randint(0, 256, (2, 32), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = model({"tokens": tokens})["logits"]
        got = peer(tokens)
    torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)
    state = peer.state_dict()
    back = titan_to_l3m(state, model)
    assert load_pretrained(model, back).ok
    again = l3m_to_titan(model.state_dict(), model)
    assert sorted(again) == sorted(state) and all(torch.equal(again[k], state[k]) for k in state)
