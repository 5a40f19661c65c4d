"""Language-model cross-entropy straight from hidden states and the head weight, in chunks of tokens.

`LMHead` followed by `LMCrossEntropy` materialises `[tokens, vocab]` logits, a float32 copy of them for
the loss, the softmax the backward needs and the logits' gradient: at a 50k vocabulary that is most of
an LLM step's activation memory. `chunked_lm_loss` computes the same sums one chunk of tokens at a
time and, while a chunk's logits are in hand, also the gradients of the hidden states, the weight
and the bias (the gradient of a sum of per-token losses needs nothing but that chunk), so the backward
only scales them by the incoming gradient: no logits are kept and none are recomputed, and the
matmul work is the unfused path's (one forward and two gradient matmuls).

Numerics follow the unfused path: the chunk's logits are computed in the inputs' dtype (bf16 under
autocast, as `F.linear` would) and the log-sum-exp, losses and logits' gradient in float32.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

# Auto chunk: the largest power of two of tokens whose float32 logits stay within this many elements
# (64 MiB), at least MIN_CHUNK tokens (small chunks make thin, slow matmuls).
CHUNK_ELEMENTS = 1 << 24
MIN_CHUNK = 128


def auto_chunk(vocab: int) -> int:
    """Tokens per chunk for a vocabulary of `vocab` (see `CHUNK_ELEMENTS`)."""
    chunk = MIN_CHUNK
    while chunk * 2 * vocab <= CHUNK_ELEMENTS:
        chunk *= 2
    return chunk


def _autocast_dtype(device: torch.device) -> torch.dtype | None:
    try:
        enabled = torch.is_autocast_enabled(device.type)
    except RuntimeError:  # a device without autocast (meta, when `l3m plan` simulates a step)
        return None
    return torch.get_autocast_dtype(device.type) if enabled else None


class _ChunkedLMLoss(torch.autograd.Function):
    """`(sum over scored tokens of nll + z_loss * lse^2, sum of nll)`; gradients computed in forward."""

    @staticmethod
    def forward(ctx, x, weight, bias, targets, ignore_index: int, z_loss: float, chunk: int, grads: bool):
        tokens = x.shape[0]
        total = torch.zeros((), dtype=torch.float32, device=x.device)
        nll_sum = torch.zeros((), dtype=torch.float32, device=x.device)
        gx = torch.empty_like(x) if grads and x.requires_grad else None
        gw = torch.zeros(weight.shape, dtype=torch.float32, device=x.device) if grads and weight.requires_grad \
            else None
        gb = torch.zeros(weight.shape[0], dtype=torch.float32, device=x.device) \
            if grads and bias is not None and bias.requires_grad else None
        for start in range(0, tokens, chunk):
            xc, tc = x[start:start + chunk], targets[start:start + chunk]
            logits = F.linear(xc, weight, bias).float()  # [c, V], a temporary: changed in place below
            valid = tc != ignore_index
            safe = torch.where(valid, tc, 0)
            scored = valid.float()
            picked = logits.gather(1, safe[:, None]).squeeze(1)
            peak = logits.amax(dim=-1)
            e = logits.sub_(peak[:, None]).exp_()  # one pass serves the log-sum-exp and the softmax
            sumexp = e.sum(dim=-1)
            lse = peak + sumexp.log()
            nll = ((lse - picked) * scored).sum()
            nll_sum += nll
            total += nll if z_loss == 0 else nll + z_loss * (lse.square() * scored).sum()
            if gx is None and gw is None and gb is None:
                continue
            # d/dlogits of scored * (lse - logit[target] + z * lse^2) = scored * (softmax * (1 + 2 z lse) - onehot)
            weight_row = scored if z_loss == 0 else scored * (1 + 2 * z_loss * lse)
            grad = e.mul_((weight_row / sumexp)[:, None])
            grad.scatter_add_(1, safe[:, None], -scored[:, None])
            if gb is not None:
                gb += grad.sum(0)
            g = grad.to(x.dtype)
            if gx is not None:
                torch.mm(g, weight, out=gx[start:start + chunk])
            if gw is not None:
                if g.dtype == torch.float32:
                    gw.addmm_(g.t(), xc)
                else:
                    gw += (g.t() @ xc).float()
        ctx.save_for_backward(gx, gw, gb)
        ctx.dtypes = (weight.dtype, bias.dtype if bias is not None else None)
        ctx.mark_non_differentiable(nll_sum)
        return total, nll_sum

    @staticmethod
    def backward(ctx, grad_total, _grad_nll):
        gx, gw, gb = ctx.saved_tensors
        wdt, bdt = ctx.dtypes
        gx = gx * grad_total.to(gx.dtype) if gx is not None else None
        gw = (gw * grad_total).to(wdt) if gw is not None else None
        gb = (gb * grad_total).to(bdt) if gb is not None else None
        return gx, gw, gb, None, None, None, None, None


def chunked_lm_loss(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, targets: torch.Tensor, *,
                    ignore_index: int = -100, z_loss: float = 0.0,
                    chunk: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """`(total, nll_sum)` over the tokens of `x` `[..., dim]` with `targets` `[...]`: `total` is the sum
    over scored tokens (targets other than `ignore_index`) of `nll + z_loss * logsumexp^2`, the loss to
    differentiate before dividing by the token count; `nll_sum` the cross-entropy part alone (no
    gradient), for perplexity. Neither materialises `[tokens, vocab]` logits; `chunk` tokens at a time
    (0: `auto_chunk`)."""
    x = x.reshape(-1, x.shape[-1])
    targets = targets.reshape(-1)
    if targets.shape[0] != x.shape[0]:
        raise ValueError(f"{x.shape[0]} hidden states but {targets.shape[0]} targets")
    cast = _autocast_dtype(x.device)
    if cast is not None:  # what F.linear under autocast computes in; the casts stay on the autograd tape
        x, weight = x.to(cast), weight.to(cast)
        bias = bias.to(cast) if bias is not None else None
    grads = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, bias))
    chunk = chunk or auto_chunk(weight.shape[0])
    with torch.autocast(x.device.type, enabled=False) if cast is not None else contextlib.nullcontext():
        return _ChunkedLMLoss.apply(x, weight, bias, targets, ignore_index, float(z_loss), int(chunk), grads)
