"""Metrics: parameter-free nn.Modules returning a detached 0-dim tensor."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from l3m.registry import register


def _indices(target: torch.Tensor) -> torch.Tensor:
    """Class indices from index targets `[B]` or soft targets `[B, C]` (their argmax)."""
    return target.argmax(dim=-1) if target.is_floating_point() else target


@register("metric")
class TopKAccuracy(nn.Module):
    """The fraction of samples whose target is among the `k` highest logits."""

    outputs = ("accuracy",)

    def __init__(self, k: int = 1):
        super().__init__()
        self.k = k

    @torch.no_grad()
    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        target = _indices(target)
        top = logits.topk(min(self.k, logits.shape[-1]), dim=-1).indices
        return (top == target.unsqueeze(-1)).any(dim=-1).float().mean()


@register("metric")
class Perplexity(nn.Module):
    """exp of the mean next-token cross-entropy over targets that are not `ignore_index`."""

    outputs = ("perplexity",)

    def __init__(self, ignore_index: int = -100, shift: bool = False):
        super().__init__()
        self.ignore_index, self.shift = ignore_index, shift

    @torch.no_grad()
    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.shift:
            logits, targets = logits[:, :-1], targets[:, 1:]
        ce = F.cross_entropy(logits.flatten(0, -2).float(), targets.flatten(), ignore_index=self.ignore_index)
        return ce.exp()


@register("metric")
class ZeroShotAccuracy(nn.Module):
    """Accuracy of picking the most similar class embedding for each image embedding.

    `class_emb` is `[C, D]` (one embedding per class, e.g. averaged prompts) or `[B, C, D]` (per
    sample). Without `target`, image i's match is row i (in-batch retrieval, `class_emb` `[B, D]`).
    """

    outputs = ("accuracy",)

    def __init__(self):
        super().__init__()

    @torch.no_grad()
    def forward(
        self, image_emb: torch.Tensor, class_emb: torch.Tensor, target: torch.Tensor | None = None
    ) -> torch.Tensor:
        image_emb, class_emb = image_emb.float(), class_emb.float()
        if class_emb.dim() == 3:
            scores = torch.einsum("bd,bcd->bc", image_emb, class_emb)
        else:
            scores = image_emb @ class_emb.t()
        if target is None:
            target = torch.arange(image_emb.shape[0], device=image_emb.device)
        return (scores.argmax(dim=-1) == _indices(target)).float().mean()
