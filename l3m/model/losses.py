"""Losses: nn.Modules that return a 0-dim tensor (output port `loss`).

All reductions are means over the counted elements, computed in float32.
"""

from __future__ import annotations

import contextlib

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

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

    With `norm_pix` each target patch is standardised by its own mean and variance. The first
    `prefix_len[b]` patches of sample b (its visible prefix) are not scored. With `shift`,
    prediction i is scored against patch i+1 (next-patch prediction).
    """

    outputs = ("loss",)

    def __init__(self, patch: int, norm_pix: bool = True, eps: float = 1e-6, in_chans: int = 3, shift: bool = False):
        super().__init__()
        self.patch, self.norm_pix, self.eps, self.in_chans, self.shift = patch, norm_pix, eps, in_chans, shift

    def target(self, image: torch.Tensor) -> torch.Tensor:
        if image.shape[1] != self.in_chans:
            raise ValueError(f"PixelLoss expects {self.in_chans} channels, got {image.shape[1]}")
        t = patchify(image.float(), self.patch)
        if self.norm_pix:
            t = (t - t.mean(dim=-1, keepdim=True)) / (t.var(dim=-1, keepdim=True, unbiased=False) + self.eps).sqrt()
        return t

    def forward(self, pred: torch.Tensor, image: torch.Tensor, prefix_len: torch.Tensor | None = None) -> torch.Tensor:
        target = self.target(image)
        pred = pred.float()
        if pred.shape != target.shape:
            raise ValueError(f"prediction {tuple(pred.shape)} does not match the patches {tuple(target.shape)}")
        index = torch.arange(target.shape[1], device=target.device)
        if self.shift:
            pred, target, index = pred[:, :-1], target[:, 1:], index[1:]
        err = (pred - target).pow(2).mean(dim=-1)  # [B, N]
        if prefix_len is None:
            return err.mean()
        keep = (index[None, :] >= prefix_len.to(target.device)[:, None]).float()
        return (err * keep).sum() / keep.sum().clamp(min=1.0)


@register("loss")
class LMCrossEntropy(nn.Module):
    """Next-token cross-entropy over `[B, N, V]` logits, ignoring `ignore_index` targets.

    `shift` scores position i against target i+1 (when targets are the inputs themselves).
    `z_loss` adds `z_loss * mean(logsumexp(logits)^2)` (PaLM), keeping logits from drifting.
    `vocab_parallel` computes the loss on logits sharded over the vocabulary (a DTensor from a
    tensor-parallel LMHead) without gathering them.
    """

    outputs = ("loss",)

    def __init__(self, shift: bool = False, ignore_index: int = -100, z_loss: float = 0.0, vocab_parallel: bool = False):
        super().__init__()
        self.shift, self.ignore_index, self.z_loss, self.vocab_parallel = shift, ignore_index, z_loss, vocab_parallel

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.shift:
            logits, targets = logits[:, :-1], targets[:, 1:]
        logits = logits.flatten(0, -2).float()
        targets = targets.flatten()
        ctx = contextlib.nullcontext()
        if self.vocab_parallel:
            from torch.distributed.tensor.parallel import loss_parallel

            ctx = loss_parallel()
        with ctx:
            loss = F.cross_entropy(logits, targets, ignore_index=self.ignore_index)
        if self.z_loss > 0:
            valid = (targets != self.ignore_index).float()
            lse = torch.logsumexp(logits, dim=-1)
            if hasattr(lse, "full_tensor"):  # a DTensor: bring the per-token values home
                lse = lse.full_tensor()
            loss = loss + self.z_loss * (lse.pow(2) * valid).sum() / valid.sum().clamp(min=1.0)
        return loss


@register("loss")
class ClipLoss(nn.Module):
    """Symmetric InfoNCE between matching image and text embeddings (L2-normalised).

    With `gather` under torch.distributed, every rank scores its rows against the embeddings of
    all ranks (a differentiable all-gather), its positives sitting at `rank * B + i`.
    """

    outputs = ("loss",)

    def __init__(self, gather: bool = True):
        super().__init__()
        self.gather = gather

    def forward(self, image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
        image_emb, text_emb = image_emb.float(), text_emb.float()
        b = image_emb.shape[0]
        all_image, all_text, offset = image_emb, text_emb, 0
        if self.gather and dist.is_available() and dist.is_initialized():
            from torch.distributed.nn.functional import all_gather

            all_image = torch.cat(all_gather(image_emb), dim=0)
            all_text = torch.cat(all_gather(text_emb), dim=0)
            offset = dist.get_rank() * b
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

    def __init__(self, label_smoothing: float = 0.0):
        super().__init__()
        self.label_smoothing = label_smoothing

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if target.is_floating_point():
            target = target.float()
        return F.cross_entropy(logits.float(), target, label_smoothing=self.label_smoothing)


@register("loss")
class MoEBalance(nn.Module):
    """Adds a mixture-of-experts load-balancing term (a Transformer's `aux_loss`) to the total."""

    outputs = ("loss",)

    def __init__(self, scale: float = 1.0):
        super().__init__()
        self.scale = scale

    def forward(self, aux_loss: torch.Tensor) -> torch.Tensor:
        return self.scale * aux_loss.float()
