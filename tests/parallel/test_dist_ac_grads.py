"""Activation checkpointing (same gradients; "selective" recomputes no matmul, "full" recomputes
them all) and gradient clipping over mixed tensors, on one process."""

from __future__ import annotations

import copy

import pytest
import torch
from dist_utils import LLM
from torch.utils._python_dispatch import TorchDispatchMode

from l3m.dist.ac import apply_ac
from l3m.dist.grads import clip_grad_norm_, total_norm
from l3m.model.build import build_model, materialize
from l3m.train.optim import clean_name

MATMULS = {torch.ops.aten.mm.default, torch.ops.aten.addmm.default, torch.ops.aten.bmm.default}


class CountMatmuls(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += func in MATMULS
        return func(*args, **(kwargs or {}))


@pytest.fixture
def model(compile_text, tmp_path):
    compiled = compile_text(LLM.format(corpus=tmp_path / "corpus.txt"))
    torch.manual_seed(0)
    return materialize(build_model(compiled.program, device="meta", schedule=compiled.flow.model_order()), "cpu")


def grads_and_backward_matmuls(model) -> tuple[dict[str, torch.Tensor], int]:
    tokens = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(1))
    logits = model({"tokens": tokens})["logits"]
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), tokens.flatten())
    with CountMatmuls() as counter:
        loss.backward()
    return {clean_name(n): p.grad for n, p in model.named_parameters()}, counter.count


def test_checkpointing_keeps_gradients_and_recomputes_what_it_should(model):
    plain_grads, plain_mm = grads_and_backward_matmuls(model)
    counts = {}
    for mode in ("selective", "full"):
        wrapped = copy.deepcopy(model)
        wrapped.zero_grad(set_to_none=True)
        assert apply_ac(wrapped, mode) == 2  # the two transformer layers
        grads, counts[mode] = grads_and_backward_matmuls(wrapped)
        assert grads.keys() == plain_grads.keys()
        for k in grads:
            torch.testing.assert_close(grads[k], plain_grads[k], rtol=1e-5, atol=1e-7, msg=k)
    assert counts["selective"] == plain_mm  # matmul outputs were kept
    assert counts["full"] > plain_mm  # the layers' matmuls ran again
    assert apply_ac(model, "none") == 0
    with pytest.raises(ValueError, match="unknown activation_checkpointing"):
        apply_ac(model, "some")


def test_clip_matches_torch_on_plain_tensors():
    g = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.zeros(s)) for s in [(3, 4), (5,), (2, 2, 2)]]
    for p in params:
        p.grad = torch.randn(p.shape, generator=g)
    reference = [p.grad.clone() for p in params]
    for norm_type in (2.0, float("inf")):
        expected = torch.nn.utils.get_total_norm(reference, norm_type=norm_type)
        torch.testing.assert_close(total_norm([p.grad for p in params], norm_type), expected)
    norm = clip_grad_norm_(params, max_norm=0.5)
    torch.testing.assert_close(norm, torch.nn.utils.get_total_norm(reference))
    torch.testing.assert_close(total_norm([p.grad for p in params]), torch.tensor(0.5), rtol=1e-5, atol=1e-6)
    assert clip_grad_norm_(params, max_norm=10.0) == pytest.approx(0.5, rel=1e-5)  # below the limit: kept
    torch.testing.assert_close(total_norm([p.grad for p in params]), torch.tensor(0.5), rtol=1e-5, atol=1e-6)
