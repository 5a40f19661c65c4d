"""Metrics: parameter-free nn.Modules returning a detached 0-dim tensor.

Each metric also gives its *sufficient statistics*: `statistics(...)` (same inputs as
`forward`) returns one `(sum, count)` pair per output, and `finish(sum / count)` the value
(`exp` for perplexity). The trainer adds the pairs up over micro-batches and data-parallel
ranks before dividing, so a metric over a global batch (or an evaluation set) has the same
value however the batch is split. A metric without `statistics` is averaged per micro-batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from l3m.model.labels import check_labels
from l3m.registry import register


def _indices(target: torch.Tensor) -> torch.Tensor:
    """Class indices from index targets `[B]` or soft targets `[B, C]` (their argmax)."""
    return target.argmax(dim=-1) if target.is_floating_point() else target


@register("metric")
class TopKAccuracy(nn.Module):
    """The fraction of samples whose target is among the `k` highest logits."""

    outputs = ("accuracy",)
    shapes = "logits: float[B, ..., C], target: [B, ...] < C -> accuracy: float[]"
    checks = (("1 <= k <= C", "k ({k}) must be between 1 and the {C} classes (a larger k counts every sample)"),)

    def __init__(self, k: int = 1):
        super().__init__()
        self.k = k

    @torch.no_grad()
    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        target = _indices(target)
        check_labels(self, target, logits.shape[-1])
        top = logits.topk(min(self.k, logits.shape[-1]), dim=-1).indices
        return (top == target.unsqueeze(-1)).any(dim=-1).float().mean()

    @torch.no_grad()
    def statistics(self, logits: torch.Tensor, target: torch.Tensor) -> tuple[tuple[torch.Tensor, torch.Tensor]]:
        """(samples whose target is in the top k, samples)."""
        target = _indices(target)
        top = logits.topk(min(self.k, logits.shape[-1]), dim=-1).indices
        hit = (top == target.unsqueeze(-1)).any(dim=-1)
        return ((hit.sum().double(), torch.tensor(float(hit.numel()), dtype=torch.float64, device=hit.device)),)


@register("metric")
class Perplexity(nn.Module):
    """exp of the mean next-token cross-entropy over targets that are not `ignore_index`."""

    outputs = ("perplexity",)
    shapes = "logits: float[B, N, V], targets: long[B, N] < V -> perplexity: float[]"

    def __init__(self, ignore_index: int = -100, shift: bool = False):
        super().__init__()
        self.ignore_index, self.shift = ignore_index, shift

    @torch.no_grad()
    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if logits.dim() == 1:  # a fused head's [loss sum, cross-entropy sum] (l3m.model.fusion)
            (nll, count), = self.statistics(logits, targets)
            return (nll / count.clamp(min=1.0)).exp().float()
        if self.shift:
            logits, targets = logits[:, :-1], targets[:, 1:]
        check_labels(self, targets, logits.shape[-1], port="targets", ignore_index=self.ignore_index)
        ce = F.cross_entropy(logits.flatten(0, -2).float(), targets.flatten(), ignore_index=self.ignore_index)
        return ce.exp()

    @torch.no_grad()
    def statistics(self, logits: torch.Tensor, targets: torch.Tensor) -> tuple[tuple[torch.Tensor, torch.Tensor]]:
        """(summed cross-entropy of the scored tokens, scored tokens)."""
        if logits.dim() == 1:  # fused: the head summed the cross-entropy already
            scored = targets[:, 1:] if self.shift else targets
            return ((logits[1].double(), (scored != self.ignore_index).sum().double()),)
        if self.shift:
            logits, targets = logits[:, :-1], targets[:, 1:]
        flat = targets.flatten()
        nll = F.cross_entropy(logits.flatten(0, -2).float(), flat, ignore_index=self.ignore_index, reduction="sum")
        return ((nll.double(), (flat != self.ignore_index).sum().double()),)

    @staticmethod
    def finish(mean: torch.Tensor) -> torch.Tensor:
        """exp of the mean cross-entropy."""
        return mean.exp()


@register("metric")
class ZeroShotAccuracy(nn.Module):
    """Accuracy of picking the most similar class embedding for each image embedding.

    `class_emb` is `[C, D]` (one embedding per class, e.g. averaged prompts) or `[B, C, D]` (per
    sample). Without `target`, image i's match is row i (in-batch retrieval, `class_emb` `[B, D]`).
    """

    outputs = ("accuracy",)
    shapes = "image_emb: float[B, D], class_emb: float[..., D], target: [B, ...] -> accuracy: float[]"

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

    @torch.no_grad()
    def statistics(
        self, image_emb: torch.Tensor, class_emb: torch.Tensor, target: torch.Tensor | None = None
    ) -> tuple[tuple[torch.Tensor, torch.Tensor]]:
        """(correct samples, samples). In-batch retrieval (no `target`) still depends on which
        samples share a batch: its candidates are the rank's micro-batch."""
        acc = self.forward(image_emb, class_emb, target).double()
        n = torch.tensor(float(image_emb.shape[0]), dtype=torch.float64, device=acc.device)
        return ((acc * n, n),)
