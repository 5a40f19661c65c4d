"""AIM's probes: a small head trained on the frozen trunk's features, top-1 on held-out images.

As in the AIMv1/AIMv2 papers, the trunk is frozen and only the probe learns: its features (the
patch tokens the last trunk block writes, with full attention: AIM's prefix covers the whole
image) are normalised per channel by a BatchNorm without affine parameters, then
- attentive: l3m's `AttentionPoolClassifier` (a learned query cross-attends to the tokens, then a
  linear classifier), the papers' headline protocol;
- linear: the tokens' mean, then l3m's `Classifier` (one linear map).
The features are computed once and kept in memory (no augmentation, unlike the papers' long
probe runs with crops), and the probe trains for `--steps` AdamW steps with a warmup-cosine rate.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from l3m.evals import data
from l3m.evals.clip import topk_accuracy
from l3m.evals.errors import EvalInputError
from l3m.evals.model import EvalModel
from l3m.model.blocks.heads import AttentionPoolClassifier, Classifier


class FeatureNorm(nn.Module):
    """Per-channel standardisation of frozen features `[B, N, D]` (BatchNorm, no affine, running
    statistics averaged over every batch seen)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(dim, affine=False, eps=1e-6, momentum=None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(x.transpose(1, 2)).transpose(1, 2)


class AttentiveProbe(nn.Module):
    def __init__(self, dim: int, num_classes: int, heads: int) -> None:
        super().__init__()
        self.norm = FeatureNorm(dim)
        self.head = AttentionPoolClassifier(dim, num_classes, heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(x))


class LinearProbe(nn.Module):
    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.norm = FeatureNorm(dim)
        self.head = Classifier(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(x).mean(dim=1))


def default_heads(dim: int) -> int:
    """About one head per 64 channels, dividing `dim`."""
    want = max(1, dim // 64)
    return max(h for h in range(1, want + 1) if dim % h == 0)


def train_probe(probe: nn.Module, feats: torch.Tensor, labels: torch.Tensor, steps: int, lr: float,
                weight_decay: float, batch_size: int, seed: int = 0) -> float:
    """Fit `probe` on cached features; the last step's loss."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(probe.parameters(), lr=lr, weight_decay=weight_decay)
    warmup = max(1, steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _warmup_cosine(warmup, steps))
    probe.train()
    loss = torch.tensor(float("nan"))
    for _ in range(steps):
        idx = torch.randint(len(feats), (min(batch_size, len(feats)),), generator=g).to(feats.device)
        loss = F.cross_entropy(probe(feats[idx]), labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return float(loss.detach())


def _warmup_cosine(warmup: int, total: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))

    return factor


@torch.no_grad()
def predict(probe: nn.Module, feats: torch.Tensor, batch_size: int) -> torch.Tensor:
    probe.eval()
    return torch.cat([probe(feats[i:i + batch_size]) for i in range(0, len(feats), batch_size)])


def extract(m: EvalModel, src, image_in: str, block: str, key: str,
            batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """([N, T, D] features, [N] labels) of every image of an image folder."""
    feats, labels = [], []
    for batch in data.batches(src, batch_size, ("image", "label")):
        d = m.run(m.with_generators({image_in: batch["image"]}), stop_after=block)
        f = d[key].float().cpu()
        feats.append(f[:, None] if f.dim() == 2 else f.flatten(1, -2))
        labels.append(batch["label"])
    return torch.cat(feats), torch.cat(labels)


def _features_block(m: EvalModel, args: argparse.Namespace, image_in: str) -> tuple[str, str]:
    if not args.features:
        return m.trunk_block(image_in)
    blocks = dict(m.model.block_items())
    if args.features not in blocks:
        raise EvalInputError(f"--features: no block '{args.features}' (blocks: {', '.join(blocks)})")
    return args.features, blocks[args.features].write_keys[0]


def run_probe(m: EvalModel, args: argparse.Namespace, kind: str) -> dict[str, float]:
    if not args.train or not args.val:
        raise EvalInputError(f"--suite {kind}-probe needs --train DIR and --val DIR (class folders)")
    ports = next((p for p in m.source_ports().values() if "image" in p), {})
    image_in = ports.get("image", "image")
    block, key = _features_block(m, args, image_in)
    settings = data.image_settings(m.sources, args.image_size)
    train_src, val_src = data.image_folder(args.train, settings), data.image_folder(args.val, settings)
    if train_src.classes != val_src.classes:
        raise EvalInputError(f"--train and --val have different class folders ({len(train_src.classes)} vs "
                             f"{len(val_src.classes)})")
    x_train, y_train = extract(m, train_src, image_in, block, key, args.batch_size)
    x_val, y_val = extract(m, val_src, image_in, block, key, args.batch_size)
    dim, classes = x_train.shape[-1], len(train_src.classes)
    dev = m.device  # the probe trains where the model ran (a GPU when there is one)
    x_train, y_train, x_val, y_val = (t.to(dev) for t in (x_train, y_train, x_val, y_val))
    torch.manual_seed(0)  # the probe's initialisation: the same for every run
    if kind == "attentive":
        heads = args.probe_heads or default_heads(dim)
        if dim % heads:
            raise EvalInputError(f"--probe-heads {heads} does not divide the feature width {dim}")
        probe: nn.Module = AttentiveProbe(dim, classes, heads)
    else:
        probe = LinearProbe(dim, classes)
    probe.to(dev)
    loss = train_probe(probe, x_train, y_train, args.steps, args.lr, args.weight_decay, args.batch_size)
    ks = (1, 5) if classes > 5 else (1,)
    val = topk_accuracy(predict(probe, x_val, args.batch_size), y_val, ks)
    train_top1 = topk_accuracy(predict(probe, x_train, args.batch_size), y_train, (1,))[1]
    return {**{f"top{k}": v for k, v in val.items()}, "train_top1": train_top1, "final_loss": loss,
            "steps": args.steps, "classes": classes, "train_samples": len(y_train), "val_samples": len(y_val),
            "features": f"{block} -> {key} {list(x_train.shape[1:])}"}


def attentive_suite(m: EvalModel, args: argparse.Namespace) -> dict[str, float]:
    return run_probe(m, args, "attentive")


def linear_suite(m: EvalModel, args: argparse.Namespace) -> dict[str, float]:
    return run_probe(m, args, "linear")
