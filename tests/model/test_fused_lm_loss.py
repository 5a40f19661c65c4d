"""The fused LM-head cross-entropy (l3m.model.fusion, l3m.model.fused_ce): the same loss, perplexity
and gradients as the head and loss run apart, decided from the program and shown by `l3m plan`."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import l3m
from l3m.model.fused_ce import auto_chunk, chunked_lm_loss
from l3m.model.fusion import plan_lm_loss_fusions
from l3m.plan import format_plan, plan
from l3m.train.session import Runtime, build_session

PROGRAM = """l3m 1
let vocab = 300
data {{
  train: Synthetic(kind = tokens, vocab = vocab, seq_len = 12, batch_size = 3, length = 16) -> tokens, targets
}}
model gpt {{
  preprocessor {{ embed: TokenEmbedding(vocab = vocab, dim = 16)  tokens -> x }}
  trunk {{ blocks: Transformer(dim = 16, depth = 1, heads = 2, mlp = swiglu, multiple_of = 16, causal = true,
                               rope = true)  x -> x }}
  head {{ lm: LMHead(dim = 16, vocab = vocab{tie})  x -> logits }}
}}
loss   ce:  LMCrossEntropy(z_loss = {z}, shift = {shift}, ignore_index = 7)  logits, targets -> loss
metric ppl: Perplexity(shift = {shift}, ignore_index = 7)                    logits, targets -> ppl
{extra}
optimizer AdamW(lr = 1e-3)
train {{ steps = 1, lm_loss_chunk = {chunk} }}
{mesh}
"""


def load(tmp_path, *, tie: bool = False, z: float = 0.0, shift: bool = False, chunk: int = 5, extra: str = "",
         mesh: str = ""):
    path = tmp_path / f"lm_{tie}_{z}_{shift}_{chunk}_{len(extra)}_{len(mesh)}.l3m"
    path.write_text(PROGRAM.format(tie=', tie = "embed"' if tie else "", z=z, shift=str(shift).lower(), chunk=chunk,
                                   extra=extra, mesh=mesh))
    return l3m.load(str(path))


def step(compiled, batch):
    """Loss, logged values and gradients of one forward and backward of a training session."""
    s = build_session(compiled, Runtime(), command="train")
    total, logs, stats = s.criterion.forward_stats(s.model(batch))
    total.backward()
    grads = {n: p.grad for n, p in s.model.named_parameters()}
    return s, total.detach(), logs, stats, grads


@pytest.mark.parametrize(("z", "bias"), [(0.0, False), (1e-3, True)])
def test_chunked_loss_is_cross_entropy(z, bias):
    torch.manual_seed(0)
    x = torch.randn(37, 8, requires_grad=True)
    w = (0.3 * torch.randn(50, 8)).requires_grad_()
    b = torch.randn(50, requires_grad=True) if bias else None
    t = torch.randint(0, 50, (37,))
    t[::5] = -100
    logits = F.linear(x, w, b)
    scored = (t != -100).float()
    nll = F.cross_entropy(logits, t, reduction="sum")
    ref = nll + z * (torch.logsumexp(logits, -1).square() * scored).sum()
    params = [x, w] + ([b] if bias else [])
    want = torch.autograd.grad(ref, params)
    total, nll_sum = chunked_lm_loss(x, w, b, t, z_loss=z, chunk=8)  # 37 tokens: a short last chunk
    got = torch.autograd.grad(2 * total, params)
    torch.testing.assert_close(total, ref, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(nll_sum, nll.detach(), rtol=1e-6, atol=1e-5)
    assert not nll_sum.requires_grad
    for g, h in zip(got, want):
        torch.testing.assert_close(g, 2 * h, rtol=1e-5, atol=1e-6)


def test_bf16_autocast_computes_the_chunks_as_the_linear_would():
    torch.manual_seed(0)
    x, w = torch.randn(20, 8, requires_grad=True), (0.3 * torch.randn(30, 8)).requires_grad_()
    t = torch.randint(0, 30, (20,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = F.cross_entropy(F.linear(x, w).float(), t, reduction="sum")
        total, _ = chunked_lm_loss(x, w, None, t, chunk=6)
    want, got = torch.autograd.grad(ref, [x, w]), torch.autograd.grad(total, [x, w])
    torch.testing.assert_close(total, ref, rtol=1e-5, atol=1e-4)  # the same bf16 logits, fp32 sums
    for g, h in zip(got, want):
        assert g.dtype == h.dtype == torch.float32
        torch.testing.assert_close(g, h, rtol=2e-2, atol=2e-2)  # bf16 products summed per chunk


def test_auto_chunk_bounds_the_logits():
    assert auto_chunk(50432) * 50432 <= 1 << 24 and auto_chunk(50432) >= 128
    assert auto_chunk(10**9) == 128


@pytest.mark.parametrize(("tie", "z", "shift"), [(False, 0.0, False), (True, 1e-3, True)])
def test_fused_training_step_matches_unfused(tmp_path, tie, z, shift):
    fused, plain = load(tmp_path, tie=tie, z=z, shift=shift), load(tmp_path, tie=tie, z=z, shift=shift, chunk=0)
    assert len(plan_lm_loss_fusions(fused.program)) == 1 and not plan_lm_loss_fusions(plain.program)
    s = build_session(plain, Runtime(), command="train")
    batch = next(s.train_loader)
    batch["targets"][0, :4] = 7  # ignored targets
    sf, lf, logs_f, stats_f, gf = step(fused, batch)
    sp, lp, logs_p, stats_p, gp = step(plain, batch)
    assert sf.model.get_submodule("gpt.head.lm").fused is not None
    assert sp.model.get_submodule("gpt.head.lm").fused is None
    torch.testing.assert_close(lf, lp, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logs_f["ppl"], logs_p["ppl"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(stats_f["ppl"], stats_p["ppl"], rtol=1e-6, atol=1e-5)
    assert gf.keys() == gp.keys()
    for n in gf:
        torch.testing.assert_close(gf[n], gp[n], rtol=1e-5, atol=1e-5, msg=lambda m, n=n: f"{n}: {m}")
    # the same parameters and state-dict names; evaluation still sees logits
    assert list(sf.model.state_dict()) == list(sp.model.state_dict())
    assert sf.model.input_keys == sp.model.input_keys == ["tokens"]
    sf.model.eval()
    with torch.no_grad():
        assert sf.model(batch)["logits"].shape == (3, 12, 300)


def test_fused_only_where_the_program_allows_it(tmp_path):
    assert plan_lm_loss_fusions(load(tmp_path, mesh="mesh { tp = 2 }").program) == []
    second = "loss ce2: LMCrossEntropy() logits, targets -> loss2"  # two losses read the logits
    assert plan_lm_loss_fusions(load(tmp_path, extra=second).program) == []
    [f] = plan_lm_loss_fusions(load(tmp_path, chunk=-1).program)
    assert (f.head, f.targets, f.chunk, f.vocab) == ("gpt.head.lm", "targets", auto_chunk(300), 300)
    # a session for evaluation (and `l3m generate`) leaves the head alone
    s = build_session(load(tmp_path), Runtime(), command="eval")
    assert s.model.get_submodule("gpt.head.lm").fused is None


def test_plan_says_so(tmp_path):
    text = format_plan(plan(load(tmp_path).program))
    assert "fused: lm head gpt.head.lm + cross-entropy (loss.ce, metric.ppl), chunk 5 tokens" in text


def test_a_dtensor_head_weight_falls_back_to_logits(mesh):
    """A head whose weight is a DTensor when called (tensor parallelism, which the planner does not fuse,
    applied by hand) still gives the fused sums, through its own parallel linear."""
    from torch.distributed.tensor.parallel import parallelize_module

    from l3m.model.blocks.heads import LMHead

    torch.manual_seed(0)
    head = LMHead(dim=8, vocab=40)
    head.fuse_loss(shift=False, ignore_index=-100, z_loss=1e-3, chunk=4)
    x, t = torch.randn(2, 5, 8), torch.randint(0, 40, (2, 5))
    plain = head(x, targets=t)
    parallelize_module(head, mesh, head.tp_plan())
    assert hasattr(head.proj.weight, "placements")
    got = head(x, targets=t)
    got = got.full_tensor() if hasattr(got, "full_tensor") else got
    torch.testing.assert_close(got.detach(), plain.detach(), rtol=1e-5, atol=1e-5)
