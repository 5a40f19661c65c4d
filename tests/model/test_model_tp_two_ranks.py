"""Two gloo ranks: tensor-parallel plans really split heads and vocabularies, and the
distributed losses give the single-process values and gradients."""

from __future__ import annotations

import copy
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

pytestmark = pytest.mark.dist


def _worker(rank: int, world: int, store_path: str) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor
    from torch.distributed.tensor.parallel import parallelize_module

    from l3m.model.blocks.embeddings import TokenEmbedding
    from l3m.model.blocks.heads import LMHead
    from l3m.model.blocks.layers import collect_tp_plan
    from l3m.model.blocks.transformer import Transformer
    from l3m.model.losses import ClipLoss, LMCrossEntropy

    torch.set_num_threads(1)
    dist.init_process_group("gloo", store=dist.FileStore(store_path, world), rank=rank, world_size=world)
    try:
        mesh = init_device_mesh("cpu", (world,), mesh_dim_names=("tp",))
        torch.manual_seed(0)
        model = nn.ModuleDict(
            {
                "embed": TokenEmbedding(13, 16),  # 13: the vocabulary splits unevenly (7 + 6)
                "trunk": Transformer(16, 2, 4, kv_heads=2, mlp="swiglu", hidden=32, rope=True, causal=True,
                                     qk_norm=True, qkv_bias=True),  # fmt: skip
                "head": LMHead(16, 13, vocab_parallel=True),
            }
        )
        ref = copy.deepcopy(model)
        parallelize_module(model, mesh, collect_tp_plan(model))
        local_qkv = model["trunk"].layers[0].attn.qkv.weight.to_local()
        assert local_qkv.shape[0] == ref["trunk"].layers[0].attn.qkv.weight.shape[0] // world

        tokens = torch.randint(0, 13, (2, 6))
        targets = torch.randint(0, 13, (2, 6))
        targets[0, 0] = -100

        def run(m, vocab_parallel):
            logits = m["head"](m["trunk"](m["embed"](tokens))[0])
            return LMCrossEntropy(vocab_parallel=vocab_parallel, z_loss=1e-2)(logits, targets), logits

        loss, logits = run(model, True)
        assert isinstance(logits, DTensor) and logits.to_local().shape[-1] == (7 if rank == 0 else 6)
        ref_loss, _ = run(ref, False)
        torch.testing.assert_close(loss, ref_loss, atol=1e-5, rtol=1e-5)
        loss.backward()
        ref_loss.backward()
        for (name, p), (_, q) in zip(model.named_parameters(), ref.named_parameters()):
            g = p.grad.full_tensor() if isinstance(p.grad, DTensor) else p.grad
            torch.testing.assert_close(g, q.grad, atol=1e-5, rtol=1e-4, msg=lambda m, n=name: f"{n}: {m}")

        # CLIP: each rank holds 2 of 4 pairs; the mean of the ranks' losses is the full-batch loss.
        torch.manual_seed(1)
        img_all = nn.functional.normalize(torch.randn(4, 8), dim=-1)
        txt_all = nn.functional.normalize(torch.randn(4, 8), dim=-1)
        scale = torch.tensor(10.0)
        img = img_all[2 * rank : 2 * rank + 2].clone().requires_grad_(True)
        local = ClipLoss()(img, txt_all[2 * rank : 2 * rank + 2], scale)
        local.backward()
        mean = local.detach().clone()
        dist.all_reduce(mean)
        full_img = img_all.clone().requires_grad_(True)
        full = ClipLoss(gather=False)(full_img, txt_all, scale)  # the whole batch in one process
        (world * full).backward()  # the ranks' losses add up, so their gradients do too
        torch.testing.assert_close(mean / world, full.detach(), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(img.grad, full_img.grad[2 * rank : 2 * rank + 2], atol=1e-5, rtol=1e-5)
        # Evaluation scores each rank's batch alone, with no collective (ranks may run different batch counts).
        mine = slice(2 * rank, 2 * rank + 2)
        if rank == 0:  # rank 1 makes no call at all: a collective here would wait forever
            evaluated = ClipLoss().eval()(img_all[mine], txt_all[mine], scale)
            alone = ClipLoss(gather=False)(img_all[mine], txt_all[mine], scale)
            torch.testing.assert_close(evaluated, alone)
    finally:
        dist.destroy_process_group()


def test_tensor_parallel_and_distributed_losses_on_two_ranks(tmp_path):
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    mp.spawn(_worker, args=(2, str(tmp_path / "store")), nprocs=2, join=True)
