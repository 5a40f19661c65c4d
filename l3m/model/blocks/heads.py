"""Heads: classifiers, the pixel decoder, CLIP's projection and the language-model head."""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributed.tensor import Replicate, Shard
from torch.distributed.tensor.parallel import ColwiseParallel, ParallelStyle

from l3m.model.blocks.layers import Linear
from l3m.model.blocks.norms import make_norm
from l3m.model.blocks.pooling import AttentionPool
from l3m.model.blocks.transformer import Transformer
from l3m.model.fused_ce import chunked_lm_loss
from l3m.model.init import InitStyle
from l3m.model.labels import check_labels
from l3m.registry import register


@register("block")
class Classifier(nn.Module):
    """An optional norm and a linear map to class logits, on `[B, dim]` or per token `[B, N, dim]`."""

    outputs = ("logits",)
    context_parallel = "local"  # trait (l3m.traits): runs on a slice of the sequence as it is
    shapes = "x: float[..., dim] -> logits: float[..., num_classes]"

    def __init__(
        self,
        dim: int,
        num_classes: int,
        norm: Literal["none", "layernorm", "rmsnorm"] = "none",
        bias: bool = True,
        norm_eps: float = 1e-6,
        norm_fp32: bool = False,
        init: InitStyle = "trunc_normal",
        init_std: float = 0.02,
    ):
        super().__init__()
        self.norm = make_norm(norm, dim, eps=norm_eps, fp32=norm_fp32)
        self.fc = Linear(dim, num_classes, bias=bias, init=init, init_std=init_std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.norm(x))


@register("block")
class AttentionPoolClassifier(nn.Module):
    """Attention pooling of the tokens, then a Classifier (AIM's attentive probe)."""

    outputs = ("logits",)
    shapes = "x: float[B, N, dim] -> logits: float[B, num_classes]"
    checks = (
        ("heads >= 1 and dim % heads == 0", "heads ({heads}) must divide dim ({dim})"),
    )

    def __init__(
        self,
        dim: int,
        num_classes: int,
        heads: int,
        num_queries: int = 1,
        norm: Literal["none", "layernorm", "rmsnorm"] = "none",
        bias: bool = True,
        norm_eps: float = 1e-6,
        init: InitStyle = "trunc_normal",
        init_std: float = 0.02,
    ):
        super().__init__()
        self.pool = AttentionPool(dim, heads, num_queries=num_queries, init=init, init_std=init_std)
        self.norm = make_norm(norm, dim, eps=norm_eps)
        self.fc = Linear(dim, num_classes, bias=bias, init=init, init_std=init_std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.norm(self.pool(x)))


@register("block")
class PixelDecoder(nn.Module):
    """Tokens to per-patch pixels (`out_dim = patch*patch*channels`).

    `depth=0` is a single linear map. Otherwise the tokens are projected to `hidden`, run
    through `depth` layers (MLP-only as in AIMv1, or `attention=True` with `causal`
    self-attention as in AIMv2's decoder) and projected to `out_dim`.
    """

    outputs = ("x",)
    shapes = "x: float[B, N, dim] -> x: float[B, N, out_dim]"
    checks = (
        ("heads >= 1 and hidden % heads == 0 or depth == 0 or not attention",
         "heads ({heads}) must divide hidden ({hidden}) for the decoder's attention"),
        ("(hidden // heads) % 2 == 0 or depth == 0 or not attention or not rope",
         "rope needs an even head size, but hidden // heads = {hidden} // {heads} is odd"),
    )

    def __init__(
        self,
        dim: int,
        out_dim: int,
        hidden: int = 512,
        depth: int = 0,
        attention: bool = False,
        heads: int = 8,
        causal: bool = True,
        mlp: Literal["gelu", "swiglu", "geglu"] = "gelu",
        mlp_ratio: float = 4.0,
        norm: Literal["layernorm", "rmsnorm"] = "layernorm",
        norm_eps: float = 1e-6,
        rope: bool = False,
        init: InitStyle = "trunc_normal",
        init_std: float = 0.02,
    ):
        super().__init__()
        common = dict(init=init, init_std=init_std)
        if depth == 0:
            self.embed, self.blocks = None, None
            self.out = Linear(dim, out_dim, **common)
        else:
            self.embed = Linear(dim, hidden, **common)
            self.blocks = Transformer(
                hidden, depth, heads, mlp=mlp, mlp_ratio=mlp_ratio, norm=norm, norm_eps=norm_eps,
                attention=attention, causal=causal and attention, rope=rope and attention, **common,
            )  # fmt: skip
            self.out = Linear(hidden, out_dim, **common)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if self.blocks is not None:
            x = self.blocks(self.embed(x), mask=mask)[0]
        return self.out(x)


@register("block")
class ClipProjection(nn.Module):
    """Projects pooled features to the joint space, L2-normalised, with CLIP's learned
    temperature: `logit_scale = exp(clamp(s, 0, logit_scale_max))`, `s` starting at log(1/0.07).

    With `learn_scale=False` there is no temperature parameter and `logit_scale` is None (use
    it on the second tower so that only one temperature exists).
    """

    outputs = ("emb", "logit_scale?")
    shapes = "x: float[..., in_dim] -> emb: float[..., out_dim], logit_scale: float[]"

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        bias: bool = False,
        logit_scale_init: float = math.log(1 / 0.07),
        logit_scale_max: float = math.log(100.0),
        learn_scale: bool = True,
        init: InitStyle = "trunc_normal",
        init_std: float = 0.02,
    ):
        super().__init__()
        self.logit_scale_init, self.logit_scale_max = logit_scale_init, logit_scale_max
        self.proj = Linear(in_dim, out_dim, bias=bias, init=init, init_std=init_std)
        # Shape [1], not a scalar, so that FSDP can shard it like any other parameter.
        self.logit_scale = nn.Parameter(torch.empty(1)) if learn_scale else None
        self.init_weights()

    def init_weights(self) -> None:
        if self.logit_scale is not None:
            with torch.no_grad():
                self.logit_scale.fill_(self.logit_scale_init)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        emb = F.normalize(self.proj(x), dim=-1)
        if self.logit_scale is None:
            return emb, None
        # The clamped value, with the gradient of the unclamped one: ml-l3m clamps the stored value in
        # place before use, so its gradient at the bound is exp(bound), never zero (a plain clamp would
        # freeze a scale that reached log 100).
        s = self.logit_scale
        s = s + (s.clamp(0, self.logit_scale_max) - s).detach()
        return emb, s.exp().squeeze(0)


@register("block")
class LMHead(nn.Module):
    """Hidden states to vocabulary logits.

    `tie` names the block (e.g. a TokenEmbedding) whose `.weight` the builder shares with this
    head through `tie_weight`. With `vocab_parallel`, under tensor parallelism the logits stay
    sharded over the vocabulary (a DTensor) for `LMCrossEntropy(vocab_parallel=true)`.

    When the program shows that only a cross-entropy reads the logits, a training session calls
    `fuse_loss` (l3m.model.fusion): in training, given the targets, the head then returns
    `[loss sum, cross-entropy sum]` computed in chunks of tokens without forming the logits
    (l3m.model.fused_ce); in evaluation, or without targets, it returns logits as always.
    """

    outputs = ("logits",)
    context_parallel = "local"  # trait (l3m.traits): runs on a slice of the sequence as it is
    shapes = "x: float[..., dim] -> logits: float[..., vocab]"

    def __init__(
        self,
        dim: int,
        vocab: int,
        bias: bool = False,
        tie: str = "",
        vocab_parallel: bool = False,
        init: InitStyle = "trunc_normal",
        init_std: float = 0.02,
        init_depth: int = 0,
    ):
        super().__init__()
        self.tie, self.vocab_parallel = tie, vocab_parallel
        # init_depth: the trunk's depth, for init="fan_in_depth_scaled" (variance 1/((1+depth)*dim)).
        self.proj = Linear(dim, vocab, bias=bias, init=init, init_std=init_std, init_depth=init_depth)
        self.fused: dict[str, Any] | None = None  # the loss's settings once fused (fuse_loss)

    def fuse_loss(self, *, shift: bool, ignore_index: int, z_loss: float, chunk: int) -> None:
        """Compute the cross-entropy sums here in training (see the class doc)."""
        self.fused = {"shift": shift, "ignore_index": ignore_index, "z_loss": z_loss, "chunk": chunk}

    @property
    def weight(self) -> nn.Parameter:
        return self.proj.weight

    def tie_weight(self, weight: nn.Parameter) -> None:
        """Share `weight` (`[vocab, dim]`) as this head's projection."""
        if tuple(weight.shape) != tuple(self.proj.weight.shape):
            raise ValueError(f"cannot tie a weight of shape {tuple(weight.shape)} to {tuple(self.proj.weight.shape)}")
        self.proj.weight = weight

    def tp_plan(self) -> dict[str, ParallelStyle]:
        if self.vocab_parallel:
            return {"proj": ColwiseParallel(output_layouts=Shard(-1), use_local_output=False)}
        return {"proj": ColwiseParallel(output_layouts=Replicate())}

    def forward(self, x: torch.Tensor, **side: Any) -> torch.Tensor:
        """`side` is what a fusion passes beside the bound input (not a port): `targets`."""
        f, targets = self.fused, side.get("targets")
        if f is None or targets is None or not self.training:
            return self.proj(x)
        if f["shift"]:
            x, targets = x[:, :-1], targets[:, 1:]
        weight, bias = self.proj.weight, self.proj.bias
        if hasattr(weight, "placements") or hasattr(bias, "placements"):  # a DTensor: let torch run the linear
            logits = self.proj(x).flatten(0, -2).float()
            flat = targets.flatten()
            nll = F.cross_entropy(logits, flat, ignore_index=f["ignore_index"], reduction="sum")
            total = nll
            if f["z_loss"] > 0:
                lse = torch.logsumexp(logits, dim=-1)
                total = nll + f["z_loss"] * (lse.square() * (flat != f["ignore_index"])).sum()
            return torch.stack([total, nll.detach()])
        check_labels(self, targets, weight.shape[0], port="targets", ignore_index=f["ignore_index"])
        total, nll = chunked_lm_loss(x, weight, bias, targets, ignore_index=f["ignore_index"], z_loss=f["z_loss"],
                                     chunk=f["chunk"])
        return torch.stack([total, nll])
