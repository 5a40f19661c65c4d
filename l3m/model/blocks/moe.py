"""A mixture-of-experts feed-forward layer: top-k routing to gated-SiLU experts.

Dispatch sorts the (token, expert) assignments by expert and runs each expert once on its
contiguous slice, so no token is dropped ("dropless"). With a `capacity_factor`, each expert
takes at most `ceil(capacity_factor * tokens * top_k / experts)` assignments (first choices
before second choices, earlier tokens first); dropped assignments contribute nothing and the
residual carries the token through.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from l3m.model.blocks.layers import Linear
from l3m.model.init import InitStyle, check_style, init_weight_
from l3m.registry import register


def balance_loss(probs: torch.Tensor, expert_idx: torch.Tensor, num_experts: int) -> torch.Tensor:
    """Switch-Transformer load balancing: `E * sum_e f_e * P_e`, with f_e the fraction of
    assignments routed to expert e and P_e its mean router probability (1.0 when uniform)."""
    flat = expert_idx.reshape(-1)
    counts = probs.new_zeros(num_experts).scatter_add(0, flat, probs.new_ones(flat.shape))
    frac = counts / expert_idx.numel()
    return num_experts * (frac * probs.mean(dim=0)).sum()


@register("block")
class MoE(nn.Module):
    """Top-k routed experts; returns the output and the (unscaled, float32) load-balancing loss."""

    outputs = ("x", "aux_loss")

    def __init__(
        self,
        dim: int,
        hidden: int,
        num_experts: int = 4,
        top_k: int = 1,
        capacity_factor: float | None = None,
        init: InitStyle = "trunc_normal",
        init_std: float = 0.02,
        init_depth: int = 0,
    ):
        super().__init__()
        if not 1 <= top_k <= num_experts:
            raise ValueError(f"top_k={top_k} must be between 1 and num_experts={num_experts}")
        self.dim, self.hidden, self.num_experts, self.top_k = dim, hidden, num_experts, top_k
        self.capacity_factor = capacity_factor
        self.init, self.init_std, self.init_depth = check_style(init), init_std, init_depth
        self.router = Linear(dim, num_experts, bias=False, init=init, init_std=init_std)
        # Stacked expert weights, stored `[E, out, in]` like nn.Linear.
        self.w1 = nn.Parameter(torch.empty(num_experts, hidden, dim))
        self.w3 = nn.Parameter(torch.empty(num_experts, hidden, dim))
        self.w2 = nn.Parameter(torch.empty(num_experts, dim, hidden))
        self.init_weights()

    def init_weights(self) -> None:
        init_weight_(self.w1, self.init, std=self.init_std, fan_in=self.dim)
        init_weight_(self.w3, self.init, std=self.init_std, fan_in=self.dim)
        init_weight_(self.w2, self.init, std=self.init_std, fan_in=self.hidden, depth=self.init_depth)

    def expert(self, e: int, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.silu(F.linear(x, self.w1[e])) * F.linear(x, self.w3[e]), self.w2[e])

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Router probabilities `[T, E]`, chosen experts `[T, k]` and their weights `[T, k]`."""
        probs = self.router(x).float().softmax(dim=-1)
        weights, idx = probs.topk(self.top_k, dim=-1)
        if self.top_k > 1:  # with k=1 the raw probability keeps the router in the gradient
            weights = weights / weights.sum(dim=-1, keepdim=True)
        return probs, idx, weights

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape = x.shape
        xf = x.reshape(-1, self.dim)
        t = xf.shape[0]
        probs, idx, weights = self.route(xf)
        aux = balance_loss(probs, idx, self.num_experts)

        # Assignments in priority order: all first choices, then all second choices, ...
        expert = idx.t().reshape(-1)
        token = torch.arange(t, device=x.device).repeat(self.top_k)
        weight = weights.t().reshape(-1)
        capacity = None
        if self.capacity_factor is not None:
            capacity = math.ceil(self.capacity_factor * t * self.top_k / self.num_experts)
        if x.is_meta:  # shapes only (planning, FLOP counting): assume perfectly balanced routing
            n, e_ = expert.shape[0], self.num_experts
            counts = [n // e_ + (1 if e < n % e_ else 0) for e in range(e_)]
            counts = [min(c, capacity) for c in counts] if capacity is not None else counts
        else:
            if capacity is not None:
                onehot = (expert[:, None] == torch.arange(self.num_experts, device=x.device)).long()
                position = (onehot.cumsum(dim=0) * onehot).sum(dim=-1) - 1
                keep = position < capacity
                expert, token, weight = expert[keep], token[keep], weight[keep]
            counts = torch.bincount(expert, minlength=self.num_experts).tolist()

        order = torch.argsort(expert, stable=True)
        out = torch.zeros_like(xf)
        start = 0
        for e, c in enumerate(counts):
            if c:
                sel = order[start : start + c]
                tok = token[sel]
                y = self.expert(e, xf[tok]) * weight[sel, None].to(xf.dtype)
                out = out.index_add(0, tok, y)
            start += c
        return out.reshape(shape), aux
