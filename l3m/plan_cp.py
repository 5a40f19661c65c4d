"""`l3m plan` under context parallelism: the attention FLOPs of each `cp` rank, in the layout the run
would pick (`l3m.dist.cp.choose_layout`) and in the contiguous one, so the imbalance it removes shows.

Counted per sample, forward: the score and weighted-value matmuls of every self-attention (4 FLOPs per
query-key pair per channel of `heads * head_dim`), as `Attention` computes them under `mesh.cp`: causal
attention reads, for each run of consecutive local queries, the keys up to the run's end; bidirectional
attention reads every key. Projections are per token and split evenly, so they are left out.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from l3m.dist.cp_layout import SequenceLayout


def _self_attentions(model: nn.Module) -> list[tuple[int, bool]]:
    """`(heads * head_dim, causal)` of every self-attention that runs on a share of the sequence."""
    out = []
    for m in model.modules():
        if getattr(m, "context_parallel", None) == "aware" and hasattr(m, "head_dim") and hasattr(m, "proj"):
            out.append((int(m.proj.in_features), bool(getattr(m, "causal", False))))
    return out


def rank_pairs(seq_len: int, size: int, layout: str, causal: bool) -> list[int]:
    """Query-key pairs each rank's attention computes for one sample."""
    n_local = seq_len // size
    if not causal:
        return [n_local * seq_len] * size
    return [SequenceLayout(r, size, layout).causal_pairs(n_local) for r in range(size)]


def cp_attention_flops(model: nn.Module, sample: Mapping[str, Any] | None, mesh: Mapping[str, int]) -> dict | None:
    """Per-rank attention FLOPs per sample under `mesh["cp"]` (None when cp is 1, or when the
    sample has no token ids to take the sequence length from)."""
    size = int(mesh.get("cp", 1))
    if size <= 1 or not sample:
        return None
    from l3m.dist.cp import choose_layout, token_shape

    try:
        _, seq_len = token_shape(sample, list(getattr(model, "input_keys", [])))
    except ValueError:
        return None
    attns = _self_attentions(model)
    if not attns or seq_len % size:
        return None
    layout = choose_layout(model)

    def per_rank(lay: str) -> list[int]:
        ranks = [0] * size
        for width, causal in attns:
            for r, pairs in enumerate(rank_pairs(seq_len, size, lay, causal)):
                ranks[r] += 4 * width * pairs
        return ranks

    chosen = per_rank(layout)
    used = layout if SequenceLayout(0, size, layout).zigzag(seq_len // size) else "contiguous"
    return {"layout": used, "seq_len": seq_len, "per_rank": chosen, "contiguous": per_rank("contiguous")}


def format_cp_attention(p: Mapping[str, Any], si: Any) -> list[str]:
    """One line of `l3m plan`: each rank's attention FLOPs, and the contiguous layout's when they differ."""
    a = p.get("cp_attention")
    if not a:
        return []
    ranks = " / ".join(si(f) for f in a["per_rank"])
    line = f"{'attention FLOPs per rank':<28}{si(max(a['per_rank']), 'FLOP'):>16}   cp {a['layout']}: {ranks}"
    if a["contiguous"] != a["per_rank"]:
        line += f" (contiguous: {' / '.join(si(f) for f in a['contiguous'])})"
    return [line + f"; forward, per sample of {a['seq_len']} tokens"]
