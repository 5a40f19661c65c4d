"""Ready-made `tp_problem` traits (`l3m.traits`): why a module cannot be split over `tp` ranks.

A class declares one as a method: `tp_problem = head_groups_tp_problem`.
"""

from __future__ import annotations

from typing import Any


def kv_groups(attn: Any) -> int:
    """How many key/value head groups an attention module has, read from its projections: `head_dim`
    and `rep` (query heads per group), `cross` / `fused` and the `q`/`k`/`kv`/`qkv` linears."""
    hd = attn.head_dim
    if attn.cross:
        return attn.kv.out_features // (2 * hd) if attn.fused else attn.k.out_features // hd
    if attn.fused:
        return attn.qkv.out_features // ((attn.rep + 2) * hd)
    return attn.k.out_features // hd


def head_groups_tp_problem(attn: Any, tp: int) -> str | None:
    """A column-wise shard of an attention's projections must hold whole key/value head groups."""
    groups = kv_groups(attn)
    if groups % tp:
        return (f"needs its key/value heads ({groups}) to divide by {tp} (each rank holds whole head groups): "
                "choose kv_heads (or heads) divisible by mesh.tp")
    return None
