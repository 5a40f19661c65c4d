"""AdamW's default fused kernel with DTensor parameters: taken when every parameter is a DTensor of one
mesh (FSDP2), left for torch's default when plain tensors and DTensors mix (tensor parallelism)."""

from __future__ import annotations

import torch
from torch import nn

from l3m.train.optim import AdamW, fused_kernel_fits


def test_fused_only_for_one_kind_of_tensor(mesh):
    from torch.distributed.tensor import Replicate, distribute_tensor

    plain = nn.Linear(4, 3)
    dt = [nn.Parameter(distribute_tensor(p.detach().clone(), mesh, [Replicate()])) for p in plain.parameters()]
    assert fused_kernel_fits(list(plain.parameters())) and fused_kernel_fits(dt)
    assert not fused_kernel_fits([*plain.parameters(), *dt])
    opt = AdamW([(f"p{i}", p) for i, p in enumerate(dt)], lr=0.1)
    assert opt.defaults["fused"]
    for p in dt:
        p.grad = distribute_tensor(torch.ones(p.shape), mesh, [Replicate()])
    opt.step()  # the fused kernel runs on DTensors
    assert not AdamW([("w", plain.weight), ("d", dt[0])], lr=0.1).defaults["fused"]
