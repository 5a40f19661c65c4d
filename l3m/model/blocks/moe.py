"""A mixture-of-experts feed-forward layer: top-k routing to gated experts (`act(x w1) * (x w3)`, then w2;
SiLU by default, or GELU as in ml-l3m's AIMv2-MoE, whose megablocks experts get the Block's nn.GELU).

Dispatch sorts the (token, expert) assignments by expert and runs each expert once on its
contiguous slice, so no token is dropped ("dropless"). With a `capacity_factor`, each expert
takes at most `ceil(capacity_factor * tokens * top_k / experts)` assignments (first choices
before second choices, earlier tokens first); dropped assignments contribute nothing and the
residual carries the token through.

Under expert parallelism (`mesh.ep > 1`) each rank holds a slice of the experts and `l3m.dist.ep` sets
the `ep` attribute: routing, the balance loss and the capacity cut stay on the rank's own tokens
(exactly as without it), and only the expert computation moves to the experts' owners. Under tensor
parallelism (`mesh.tp > 1`, `tp_plan`) each rank holds a slice of every expert's hidden units and
`l3m.dist.ep_tp` sets the `tp` attribute, whose sums put the slices' partial results together.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributed.tensor import DTensor

from l3m.interfaces import FeedForward
from l3m.model.blocks.feedforward import mlp_hidden
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


_SQRT_2PI = math.sqrt(2.0 * math.pi)


def _act(h: torch.Tensor, act: str) -> torch.Tensor:
    return F.gelu(h) if act == "gelu" else F.silu(h)


def _act_grad(h: torch.Tensor, act: str) -> tuple[torch.Tensor, torch.Tensor]:
    """`act(h)` and its derivative (exact GELU: Phi(h) + h phi(h); SiLU: s (1 + h (1 - s)))."""
    if act == "gelu":
        cdf = 0.5 * (1.0 + torch.erf(h / math.sqrt(2.0)))
        return h * cdf, cdf + h * torch.exp(-0.5 * h * h) / _SQRT_2PI
    sig = torch.sigmoid(h)
    return h * sig, sig * (1 + h * (1 - sig))


@register("block")
class MoE(nn.Module, FeedForward):
    """Top-k routed experts; returns the output and the (unscaled, float32) load-balancing loss.

    `expert_init` initialises the experts (default: `init`; ml-l3m draws them N(0, init_std)). With
    `top_k > 1` the chosen probabilities are renormalised to sum to 1 unless `normalize=False` (megablocks'
    `moe_normalize_expert_weights=0`: the raw probabilities weight the experts). `hidden` defaults to the
    gated size for `mlp_ratio` (as a Transformer's `moe_every` layers), so `mlp = MoE(num_experts = 8)` works.
    """

    outputs = ("x", "aux_loss")
    context_parallel = "local"  # trait (l3m.traits): runs on a slice of the sequence as it is
    expert_parallel = ("w1", "w3", "w2")  # trait: stacked by expert, split over `mesh.ep` ranks
    ep = None  # a l3m.dist.ep.ExpertParallel when the experts are split over ranks
    tp = None  # a l3m.dist.ep_tp.ExpertTP when the experts' hidden units are split over ranks
    shapes = "x: float[..., dim] -> x: float[..., dim], aux_loss: float[]"
    checks = (("1 <= top_k <= num_experts", "top_k ({top_k}) must be between 1 and num_experts ({num_experts})"),)

    def __init__(
        self,
        dim: int,
        hidden: int | None = None,
        num_experts: int = 4,
        top_k: int = 1,
        capacity_factor: float | None = None,
        init: InitStyle = "trunc_normal",
        init_std: float = 0.02,
        init_depth: int = 0,
        act: Literal["silu", "gelu"] = "silu",
        expert_init: InitStyle | None = None,
        normalize: bool = True,
        mlp_ratio: float = 4.0,
        multiple_of: int = 256,
    ):
        super().__init__()
        hidden = hidden or mlp_hidden(dim, mlp_ratio, True, multiple_of)
        if not 1 <= top_k <= num_experts:
            raise ValueError(f"top_k={top_k} must be between 1 and num_experts={num_experts}")
        if act not in ("silu", "gelu"):
            raise ValueError(f"unknown expert activation {act!r}; expected silu or gelu")
        self.dim, self.hidden, self.num_experts, self.top_k = dim, hidden, num_experts, top_k
        self.capacity_factor, self.act, self.normalize = capacity_factor, act, normalize
        self.init, self.init_std, self.init_depth = check_style(init), init_std, init_depth
        self.expert_init = check_style(expert_init or init)
        self.router = Linear(dim, num_experts, bias=False, init=init, init_std=init_std)
        # Stacked expert weights, stored `[E, out, in]` like nn.Linear.
        self.w1 = nn.Parameter(torch.empty(num_experts, hidden, dim))
        self.w3 = nn.Parameter(torch.empty(num_experts, hidden, dim))
        self.w2 = nn.Parameter(torch.empty(num_experts, dim, hidden))
        self.init_weights()

    def init_weights(self) -> None:
        init_weight_(self.w1, self.expert_init, std=self.init_std, fan_in=self.dim)
        init_weight_(self.w3, self.expert_init, std=self.init_std, fan_in=self.dim)
        init_weight_(self.w2, self.expert_init, std=self.init_std, fan_in=self.hidden, depth=self.init_depth)

    def tp_plan(self) -> dict:
        """Experts split over their hidden units (w1/w3 column-wise, w2 row-wise); the router replicated."""
        from l3m.dist.ep_tp import ExpertTensorParallel

        return {"": ExpertTensorParallel({"w1": 1, "w3": 1, "w2": 2})}

    def tp_problem(self, tp: int) -> str | None:
        if self.hidden % tp:
            return f"has experts of {self.hidden} hidden units, which {tp} ranks cannot split evenly"
        return None

    def plan_note(self) -> str | None:
        """`l3m plan` says when the experts are not SwiGLU (a YAML naming SiLU may hide it)."""
        if self.act == "gelu":
            return ("the MoE experts are GELU-gated (moe_act = gelu), not SiLU: as ml-l3m's AIMv2-MoE computes, "
                    "whose YAML names nn.SiLU but whose Block hands its own nn.GELU to the megablocks experts")
        return None

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Router probabilities `[T, E]`, chosen experts `[T, k]` and their weights `[T, k]`."""
        probs = self.router(x).float().softmax(dim=-1)
        weights, idx = probs.topk(self.top_k, dim=-1)
        if self.top_k > 1 and self.normalize:  # with k=1 the raw probability keeps the router in the gradient
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
        capacity = -1
        if self.capacity_factor is not None:
            capacity = math.ceil(self.capacity_factor * t * self.top_k / self.num_experts)
        tp = self.tp
        if self.ep is not None and not x.is_meta:
            expert, token, weight, _ = _select(expert, token, weight, self.num_experts, capacity)
            w1, w3, w2 = (self.ep.local(w) for w in (self.w1, self.w3, self.w2))

            def compute(rows: torch.Tensor, counts: list[int]) -> torch.Tensor:
                if tp is None:
                    return grouped_experts(rows, w1, w3, w2, counts, self.act)
                return tp.leave(grouped_experts(tp.enter(rows), w1, w3, w2, counts, self.act))

            return self.ep.dispatch(x, expert, token, weight, self.num_experts, compute), aux
        elif tp is not None and not x.is_meta:  # this rank's hidden slice of every expert, summed over tp
            w1, w3, w2 = (w.to_local() if isinstance(w, DTensor) else w for w in (self.w1, self.w3, self.w2))
            out = tp.leave(moe_experts(tp.enter(xf), w1, w3, w2, expert, token, tp.enter(weight), capacity,
                                       self.act))
        elif x.is_meta:  # shapes only (planning, FLOP counting): assume perfectly balanced routing
            n, e_ = expert.shape[0], self.num_experts
            counts = [n // e_ + (1 if e < n % e_ else 0) for e in range(e_)]
            counts = [min(c, capacity) for c in counts] if capacity >= 0 else counts
            out = _run_experts(xf, self.w1, self.w3, self.w2, torch.argsort(expert, stable=True), token, weight,
                               counts, self.act)
        else:
            out = moe_experts(xf, self.w1, self.w3, self.w2, expert, token, weight, capacity, self.act)
        return out.reshape(shape), aux


def _run_experts(x, w1, w3, w2, order, token, weight, counts: list[int], act: str = "silu") -> torch.Tensor:
    """Each expert once, on its contiguous slice of the expert-sorted assignments."""
    out = torch.zeros_like(x)
    start = 0
    for e, c in enumerate(counts):
        if c:
            sel = order[start : start + c]
            tok = token[sel]
            xe = x[tok]
            h = _act(F.linear(xe, w1[e].to(x.dtype)), act) * F.linear(xe, w3[e].to(x.dtype))
            y = F.linear(h, w2[e].to(x.dtype)) * weight[sel, None].to(x.dtype)
            out = out.index_add(0, tok, y)
        start += c
    return out


def _linear_grouped(x: torch.Tensor, w: torch.Tensor, counts: list[int]) -> torch.Tensor:
    """Rows of `x` grouped by expert (`counts[e]` rows for expert e) times each expert's `w[e]^T`:
    one grouped matmul where torch has one for the device (bf16 on recent CUDA GPUs, rows of whole 16-byte
    multiples, which a tensor-parallel slice of the hidden units need not be), else a loop."""
    if x.is_cuda and x.dtype == torch.bfloat16 and hasattr(torch, "_grouped_mm") \
            and x.shape[-1] % 8 == 0 and w.shape[1] % 8 == 0 \
            and torch.cuda.get_device_capability(x.device) >= (9, 0):
        offs = torch.tensor(counts, device=x.device).cumsum(0).to(torch.int32)
        return torch._grouped_mm(x, w.transpose(-2, -1), offs=offs)
    parts = [F.linear(xe, w[e]) for e, xe in enumerate(x.split(counts))]
    return torch.cat(parts) if parts else x.new_zeros(0, w.shape[1])


def grouped_experts(x: torch.Tensor, w1: torch.Tensor, w3: torch.Tensor, w2: torch.Tensor, counts: list[int],
                    act: str = "silu") -> torch.Tensor:
    """The experts on rows already grouped by expert (differentiable through autograd): expert
    parallelism runs its local experts on the tokens it received with this."""
    w1, w3, w2 = (w.to(x.dtype) for w in (w1, w3, w2))
    h = _act(_linear_grouped(x, w1, counts), act) * _linear_grouped(x, w3, counts)
    return _linear_grouped(h, w2, counts)


def _dispatch(x, w1, w3, w2, expert, token, weight, capacity: int, act: str = "silu") -> torch.Tensor:
    num_experts = w1.shape[0]
    expert, token, weight, _ = _select(expert, token, weight, num_experts, capacity)
    counts = torch.bincount(expert, minlength=num_experts).tolist()
    return _run_experts(x, w1, w3, w2, torch.argsort(expert, stable=True), token, weight, counts, act)


# The dispatch has data-dependent shapes (how many tokens each expert gets). As one opaque operator
# it keeps `torch.compile(fullgraph=True)` free of graph breaks while staying dropless and sparse.
@torch.library.custom_op("l3m::moe_experts", mutates_args=())
def moe_experts(x: torch.Tensor, w1: torch.Tensor, w3: torch.Tensor, w2: torch.Tensor, expert: torch.Tensor,
                token: torch.Tensor, weight: torch.Tensor, capacity: int, act: str) -> torch.Tensor:
    return _dispatch(x, w1, w3, w2, expert, token, weight, capacity, act)


@moe_experts.register_fake
def _(x, w1, w3, w2, expert, token, weight, capacity, act):
    return torch.empty_like(x)


def _select(expert, token, weight, num_experts: int, capacity: int):
    if capacity >= 0:  # first choices before second choices, earlier tokens first
        onehot = (expert[:, None] == torch.arange(num_experts, device=expert.device)).long()
        position = (onehot.cumsum(dim=0) * onehot).sum(dim=-1) - 1
        keep = position < capacity
        expert, token, weight = expert[keep], token[keep], weight[keep]
    return expert, token, weight, keep if capacity >= 0 else None


@torch.library.custom_op("l3m::moe_experts_backward", mutates_args=())
def moe_experts_backward(grad: torch.Tensor, x: torch.Tensor, w1: torch.Tensor, w3: torch.Tensor, w2: torch.Tensor,
                         expert: torch.Tensor, token: torch.Tensor, weight: torch.Tensor,
                         capacity: int, act: str
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The gradients of `moe_experts`, written out (custom operators run without autograd)."""
    num_experts = w1.shape[0]
    sel_expert, sel_token, sel_weight, keep = _select(expert, token, weight, num_experts, capacity)
    counts = torch.bincount(sel_expert, minlength=num_experts).tolist()
    order = torch.argsort(sel_expert, stable=True)
    gx, g1, g3, g2 = torch.zeros_like(x), torch.zeros_like(w1), torch.zeros_like(w3), torch.zeros_like(w2)
    g_sel_weight = torch.zeros_like(sel_weight)
    start = 0
    for e, c in enumerate(counts):
        if c:
            sel = order[start : start + c]
            tok = sel_token[sel]
            xe = x[tok]
            a1, a3, b2 = w1[e].to(x.dtype), w3[e].to(x.dtype), w2[e].to(x.dtype)
            h1, h3 = F.linear(xe, a1), F.linear(xe, a3)
            a, da = _act_grad(h1, act)
            h = a * h3
            y = F.linear(h, b2)
            ge = grad[tok]
            g_sel_weight[sel] = (ge * y).sum(dim=-1).to(g_sel_weight.dtype)
            gy = ge * sel_weight[sel, None].to(x.dtype)
            g2[e] += (gy.t() @ h).to(g2.dtype)
            gh = gy @ b2
            gh3 = gh * a
            gh1 = gh * h3 * da
            g1[e] += (gh1.t() @ xe).to(g1.dtype)
            g3[e] += (gh3.t() @ xe).to(g3.dtype)
            gx = gx.index_add(0, tok, gh1 @ a1 + gh3 @ a3)
        start += c
    if keep is None:
        g_weight = g_sel_weight
    else:
        g_weight = torch.zeros_like(weight)
        g_weight[keep] = g_sel_weight
    return gx, g1, g3, g2, g_weight


@moe_experts_backward.register_fake
def _(grad, x, w1, w3, w2, expert, token, weight, capacity, act):
    return tuple(torch.empty_like(t) for t in (x, w1, w3, w2, weight))


def _setup_context(ctx, inputs, output):
    x, w1, w3, w2, expert, token, weight, capacity, act = inputs
    ctx.save_for_backward(x, w1, w3, w2, expert, token, weight)
    ctx.capacity, ctx.act = capacity, act


def _backward(ctx, grad):
    x, w1, w3, w2, expert, token, weight = ctx.saved_tensors
    gx, g1, g3, g2, gw = moe_experts_backward(grad.contiguous(), x, w1, w3, w2, expert, token, weight, ctx.capacity,
                                              ctx.act)
    return gx, g1, g3, g2, None, None, gw, None, None


moe_experts.register_autograd(_backward, setup_context=_setup_context)
