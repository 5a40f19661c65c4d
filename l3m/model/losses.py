"""Losses: nn.Modules that return a 0-dim tensor (output port `loss`).

All reductions are means over the counted elements, computed in float32.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from l3m.model.labels import check_labels
from l3m.registry import register


def patchify(image: torch.Tensor, patch: int) -> torch.Tensor:
    """`[B, C, H, W]` to `[B, (H/p)*(W/p), p*p*C]`: patches in raster order, pixels ordered
    (row, column, channel) inside each patch."""
    b, c, h, w = image.shape
    if h % patch or w % patch:
        raise ValueError(f"image size {h}x{w} is not divisible by the patch size {patch}")
    x = image.reshape(b, c, h // patch, patch, w // patch, patch)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // patch) * (w // patch), patch * patch * c)


@register("loss")
class PixelLoss(nn.Module):
    """Mean squared error between predicted and true patches (AIM's objective).

    With `norm_pix` each target patch is standardised by its own mean and variance,
    `(t - mean) / sqrt(var + eps)`; the variance is the unbiased one (divided by n - 1) as in
    AIM's original RasterPixelLoss, or with `unbiased=false` the biased one (MAE's papers write
    it so). The first `prefix_len[b]` patches of sample b (its visible prefix) are not scored.
    With `shift`, prediction i is scored against patch i+1 (next-patch prediction). The mean is
    over every scored patch of the batch (not per sample first).

    With `mask` (bool `[B, N]`, True = masked, as RandomMask writes it) only the masked patches are
    scored (MAE's objective: reconstruct what the encoder did not see).
    """

    outputs = ("loss",)
    shapes = ("image: float[B, in_chans, H, W], pred: float[B, (H // patch) * (W // patch), patch * patch * in_chans], "
              "prefix_len: [B], mask: bool[B, (H // patch) * (W // patch)] -> loss: float[]")
    checks = (
        ("patch >= 1", "patch ({patch}) must be at least 1"),
        ("H % patch == 0 and W % patch == 0", "the image ({H}x{W}) does not divide into patches of {patch}x{patch}"),
    )

    def __init__(self, patch: int, norm_pix: bool = True, eps: float = 1e-6, in_chans: int = 3, shift: bool = False,
                 unbiased: bool = True):
        super().__init__()
        self.patch, self.norm_pix, self.eps, self.in_chans, self.shift = patch, norm_pix, eps, in_chans, shift
        self.unbiased = unbiased

    def target(self, image: torch.Tensor) -> torch.Tensor:
        if image.shape[1] != self.in_chans:
            raise ValueError(f"PixelLoss expects {self.in_chans} channels, got {image.shape[1]}")
        t = patchify(image.float(), self.patch)
        if self.norm_pix:
            t = (t - t.mean(dim=-1, keepdim=True)) / (t.var(dim=-1, keepdim=True, unbiased=self.unbiased) + self.eps).sqrt()
        return t

    def forward(self, pred: torch.Tensor, image: torch.Tensor, prefix_len: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        target = self.target(image)
        pred = pred.float()
        if pred.shape != target.shape:
            raise ValueError(f"prediction {tuple(pred.shape)} does not match the patches {tuple(target.shape)}")
        index = torch.arange(target.shape[1], device=target.device)
        if self.shift:
            pred, target, index = pred[:, :-1], target[:, 1:], index[1:]
        err = (pred - target).pow(2).mean(dim=-1)  # [B, N]
        if prefix_len is None and mask is None:
            return err.mean()
        keep = torch.ones_like(err)
        if prefix_len is not None:
            keep = keep * (index[None, :] >= prefix_len.to(target.device)[:, None]).float()
        if mask is not None:
            if mask.shape != (err.shape[0], index.shape[0] + int(self.shift)):
                raise ValueError(f"mask {tuple(mask.shape)} does not cover the {target.shape[1] + int(self.shift)} "
                                 "patches of each image")
            keep = keep * mask[:, index].to(device=err.device, dtype=err.dtype)
        return (err * keep).sum() / keep.sum().clamp(min=1.0)


class _SumAcrossRanks(torch.autograd.Function):
    """All-reduce (sum) in the forward, identity in the backward: every rank of the group then
    holds the same loss and back-propagates only into its own shard (Megatron's scheme)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group) -> torch.Tensor:
        x = x.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(x, group=group)
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None


def sum_across_ranks(x: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
    """`x` summed over `group` (all-reduce); the gradient passes to each rank's own term unchanged."""
    return _SumAcrossRanks.apply(x, group)


def vocab_parallel_nll(logits, targets: torch.Tensor, ignore_index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token negative log-likelihood and log-partition from logits that are a DTensor sharded
    over the vocabulary (last) dimension, without gathering the logits."""
    from torch.distributed.tensor import Shard

    last = logits.dim() - 1
    shard_dims = [i for i, p in enumerate(logits.placements) if isinstance(p, Shard) and p.dim in (-1, last)]
    others = [p for i, p in enumerate(logits.placements) if i not in shard_dims and not p.is_replicate()]
    if len(shard_dims) != 1 or others:
        raise ValueError(f"vocab-parallel logits must be sharded over the vocabulary only, got {logits.placements}")
    mesh, mesh_dim = logits.device_mesh, shard_dims[0]
    group = mesh.get_group(mesh_dim)
    vocab, ranks = logits.shape[-1], mesh.size(mesh_dim)
    start = min(mesh.get_local_rank(mesh_dim) * math.ceil(vocab / ranks), vocab)  # torch.chunk's split

    local = logits.to_local().flatten(0, -2).float()  # [T, V_local]
    peak = local.detach().amax(dim=-1)
    dist.all_reduce(peak, op=dist.ReduceOp.MAX, group=group)
    sumexp = sum_across_ranks((local - peak[:, None]).exp().sum(dim=-1), group)
    lse = peak + sumexp.log()
    t = targets.flatten() - start
    here = (t >= 0) & (t < local.shape[-1]) & (targets.flatten() != ignore_index)
    picked = local.gather(-1, t.clamp(0, max(local.shape[-1] - 1, 0))[:, None]).squeeze(-1) * here
    return lse - sum_across_ranks(picked, group), lse


@register("loss")
class LMCrossEntropy(nn.Module):
    """Next-token cross-entropy over `[B, N, V]` logits, ignoring `ignore_index` targets.

    `shift` scores position i against target i+1 (when targets are the inputs themselves).
    `z_loss` adds `z_loss * mean(logsumexp(logits)^2)` (PaLM), keeping logits from drifting.
    `vocab_parallel` takes logits sharded over the vocabulary (a DTensor from a tensor-parallel
    `LMHead(vocab_parallel=true)`) and never gathers them; a plain tensor is also accepted.
    In training, a head fused with this loss (l3m.model.fusion) hands over `[loss sum, cross-entropy
    sum]` instead of logits; the loss then only divides by the token count.

    The mean is over tokens, not over ranks: when the distributed setup sets `group` (the ranks
    that hold different tokens: data and context parallel), each rank divides its token sum by
    the group's mean token count, so the average of the ranks' losses, which is what averaging
    their gradients differentiates, is the mean over every token of the step. (Only in training:
    evaluation weighs each rank's result itself, and its ranks need not call the loss alike.)
    """

    outputs = ("loss",)
    shapes = "logits: float[B, N, V], targets: long[B, N] < V -> loss: float[]"
    # Traits (l3m.traits): normalised over the ranks holding different tokens; a shift needs the next token.
    group_over = "tokens"
    context_parallel = property(lambda self: "whole" if self.shift else "local")
    context_parallel_note = ("with shift = true it pairs each token with the next one, which another context-parallel "
                             "rank may hold; have the data write shifted targets (as TextBytes does) and use shift = false")

    def __init__(self, shift: bool = False, ignore_index: int = -100, z_loss: float = 0.0, vocab_parallel: bool = False):
        super().__init__()
        self.shift, self.ignore_index, self.z_loss, self.vocab_parallel = shift, ignore_index, z_loss, vocab_parallel
        self.group = None  # a process group, set by l3m.dist when several ranks hold different tokens

    def token_count(self, valid: torch.Tensor) -> torch.Tensor:
        """The divisor of the token sum: this rank's valid tokens, or the group's mean count."""
        count = valid.sum()
        if self.group is None or not self.training:
            return count.clamp(min=1.0)
        count = count.detach().clone()
        dist.all_reduce(count, group=self.group)
        return count.clamp(min=1.0) / dist.get_world_size(self.group)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if logits.dim() == 1:  # a fused head's [loss sum, cross-entropy sum] (l3m.model.fusion): no logits
            scored = targets[:, 1:] if self.shift else targets
            return logits[0] / self.token_count((scored.flatten() != self.ignore_index).float())
        if self.shift:
            logits, targets = logits[:, :-1], targets[:, 1:]
        check_labels(self, targets, logits.shape[-1], port="targets", ignore_index=self.ignore_index)
        valid = (targets.flatten() != self.ignore_index).float()
        count = self.token_count(valid)
        if self.vocab_parallel and hasattr(logits, "placements"):
            nll, lse = vocab_parallel_nll(logits, targets, self.ignore_index)
            loss = (nll * valid).sum() / count
        else:
            flat = logits.flatten(0, -2).float()
            loss = F.cross_entropy(flat, targets.flatten(), ignore_index=self.ignore_index, reduction="sum") / count
            lse = torch.logsumexp(flat, dim=-1) if self.z_loss > 0 else None
        if self.z_loss > 0:
            loss = loss + self.z_loss * (lse.pow(2) * valid).sum() / count
        return loss

    @torch.no_grad()
    def statistics(self, logits: torch.Tensor, targets: torch.Tensor) -> tuple[tuple[torch.Tensor, torch.Tensor]]:
        """(the loss summed over scored tokens, scored tokens), for evaluation (eval mode): the
        mean over every token of an evaluation set, however its batches are split over ranks."""
        scored = targets[:, 1:] if self.shift else targets
        count = (scored != self.ignore_index).sum().double()
        return ((self.forward(logits, targets).double() * count, count),)


def gather_rows(x: torch.Tensor, group=None) -> torch.Tensor:
    """All ranks' rows of `x`, concatenated in rank order; gradients flow back to every rank."""
    group = group if group is not None else dist.group.WORLD
    try:
        from torch.distributed._functional_collectives import all_gather_single_autograd
    except ImportError:  # older torch: the autograd-aware list all-gather
        from torch.distributed.nn.functional import all_gather

        return torch.cat(all_gather(x, group=group), dim=0)
    return all_gather_single_autograd(x.contiguous(), 0, group)


@register("loss")
class ClipLoss(nn.Module):
    """Symmetric InfoNCE between matching image and text embeddings (L2-normalised).

    With `gather` under torch.distributed, every rank scores its rows against the embeddings of
    all ranks of `self.group` (a differentiable all-gather; default: the world), its positives
    sitting at `rank * B + i`. Under tensor parallelism the trainer sets `group` to the
    data-parallel group, since tensor-parallel ranks hold the same samples. Every rank must
    have the same batch size. Evaluation (eval mode) scores each rank's batch on its own: ranks
    may run different numbers of eval batches, and a collective there could wait forever.
    """

    outputs = ("loss",)
    shapes = "image_emb: float[B, D], text_emb: float[B, D], logit_scale: float[] -> loss: float[]"
    # Traits (l3m.traits): gathers over the ranks holding different samples; compares whole samples.
    group_over = "samples"
    context_parallel = "whole"
    context_parallel_note = "it compares whole samples; use mesh.cp = 1"

    def __init__(self, gather: bool = True):
        super().__init__()
        self.gather = gather
        self.group = None  # a process group, set by the distributed setup when not the world

    def forward(self, image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
        image_emb, text_emb = image_emb.float(), text_emb.float()
        b = image_emb.shape[0]
        all_image, all_text, offset = image_emb, text_emb, 0
        if self.gather and self.training and dist.is_available() and dist.is_initialized():
            all_image, all_text = gather_rows(image_emb, self.group), gather_rows(text_emb, self.group)
            offset = dist.get_rank(self.group) * b
        labels = torch.arange(b, device=image_emb.device) + offset
        scale = logit_scale.float()
        logits_image = scale * image_emb @ all_text.t()
        logits_text = scale * text_emb @ all_image.t()
        return (F.cross_entropy(logits_image, labels) + F.cross_entropy(logits_text, labels)) / 2


@register("loss")
class ClassificationCE(nn.Module):
    """Cross-entropy on class logits `[B, C]` with index targets `[B]` or soft targets `[B, C]`
    (e.g. from mixup)."""

    outputs = ("loss",)
    shapes = "logits: float[B, C], target: [B, ...] < C -> loss: float[]"  # index or soft targets

    def __init__(self, label_smoothing: float = 0.0):
        super().__init__()
        self.label_smoothing = label_smoothing

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if target.is_floating_point():
            target = target.float()
        check_labels(self, target, logits.shape[-1], ignore_index=-100)  # cross_entropy's default
        return F.cross_entropy(logits.float(), target, label_smoothing=self.label_smoothing)


@register("loss")
class MoEBalance(nn.Module):
    """Adds a mixture-of-experts load-balancing term (a Transformer's `aux_loss`) to the total."""

    outputs = ("loss",)
    shapes = "aux_loss: float[] -> loss: float[]"

    def __init__(self, scale: float = 1.0):
        super().__init__()
        self.scale = scale

    def forward(self, aux_loss: torch.Tensor) -> torch.Tensor:
        return self.scale * aux_loss.float()
