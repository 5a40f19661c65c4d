"""The machinery every weight converter shares: rules that rename (and reshape) tensors both ways.

A foreign checkpoint and an l3m model rarely differ by names alone: one fused projection may be
three tensors on the other side, or the same rows in another order. A `Rule` ties a tuple of
foreign names to a tuple of l3m names with a pair of inverse functions, so that one table drives
the import and the export and the round trip is exact by construction.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from l3m.durable import atomic_output
from l3m.model.core import MetaModel

Tensors = list[torch.Tensor]


def _same(ts: Tensors) -> Tensors:
    return list(ts)


@dataclass(frozen=True)
class Rule:
    """`foreign` tensors become `native` ones by `to_native`; `to_foreign` is its inverse."""

    foreign: tuple[str, ...]
    native: tuple[str, ...]
    to_native: Callable[[Tensors], Tensors] = _same
    to_foreign: Callable[[Tensors], Tensors] = _same


def rename(foreign: str, native: str) -> Rule:
    return Rule((foreign,), (native,))


def _apply(
    weights: Mapping[str, torch.Tensor],
    rules: Sequence[Rule],
    source: str,
    target: str,
    ignore: Sequence[str],
    what: str,
) -> dict[str, torch.Tensor]:
    """Apply every rule whose `source` names are all in `weights`; anything left over is an error
    (a tensor silently dropped would be a model silently changed)."""
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    for rule in rules:
        names, dests = getattr(rule, source), getattr(rule, target)
        have = [n for n in names if n in weights]
        if not have:
            continue
        if len(have) != len(names):
            lacking = [n for n in names if n not in weights]
            raise ValueError(f"{what}: {', '.join(have)} without {', '.join(lacking)}")
        fn = rule.to_native if target == "native" else rule.to_foreign
        for name, t in zip(dests, fn([weights[n] for n in names])):
            out[name] = t.contiguous()
        used.update(names)
    left = [k for k in weights if k not in used and not any(fnmatch.fnmatchcase(k, g) for g in ignore)]
    if left:
        more = f" and {len(left) - 8} more" if len(left) > 8 else ""
        raise ValueError(f"{what}: no rule for {', '.join(left[:8])}{more}")
    return out


def to_native(
    weights: Mapping[str, torch.Tensor],
    rules: Sequence[Rule],
    ignore: Sequence[str] = (),
    what: str = "import",
) -> dict[str, torch.Tensor]:
    """Foreign-named tensors to l3m names; tensors matching an `ignore` glob are dropped."""
    return _apply(weights, rules, "foreign", "native", ignore, what)


def to_foreign(
    weights: Mapping[str, torch.Tensor],
    rules: Sequence[Rule],
    ignore: Sequence[str] = (),
    what: str = "export",
) -> dict[str, torch.Tensor]:
    """l3m-named tensors to the foreign names."""
    return _apply(weights, rules, "native", "foreign", ignore, what)


# -- the qkv layouts ----------------------------------------------------------------------------


def fuse_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv_heads: int, head_dim: int) -> torch.Tensor:
    """Separate q/k/v rows (weights `[out, in]` or biases `[out]`) to l3m's fused layout, grouped
    per key/value head: `[q_1 .. q_rep, k, v]` for each group (see `l3m.model.blocks.attention`)."""
    rest = q.shape[1:]
    if k.shape != v.shape or k.shape[0] != kv_heads * head_dim or q.shape[0] % (kv_heads * head_dim):
        raise ValueError(
            f"q/k/v of shapes {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)} do not fit "
            f"{kv_heads} key/value heads of size {head_dim}"
        )
    groups = [
        q.reshape(kv_heads, -1, head_dim, *rest),
        k.reshape(kv_heads, 1, head_dim, *rest),
        v.reshape(kv_heads, 1, head_dim, *rest),
    ]
    return torch.cat(groups, dim=1).reshape(-1, *rest)


def split_qkv(qkv: torch.Tensor, kv_heads: int, head_dim: int) -> Tensors:
    """Inverse of `fuse_qkv`: `[q, k, v]`."""
    rest = qkv.shape[1:]
    if qkv.shape[0] % (kv_heads * head_dim):
        rows = qkv.shape[0]
        raise ValueError(f"a fused qkv of {rows} rows does not fit {kv_heads} key/value heads of {head_dim}")
    g = qkv.reshape(kv_heads, -1, head_dim, *rest)
    rep = g.shape[1] - 2
    return [g[:, :rep].reshape(-1, *rest), g[:, rep].reshape(-1, *rest), g[:, rep + 1].reshape(-1, *rest)]


# -- finding blocks in a model ------------------------------------------------------------------


def blocks_of(model: nn.Module, kinds: type | tuple[type, ...]) -> list[tuple[str, nn.Module]]:
    """`(path, block)` of every block of the given classes, in declaration order; parameter names
    inside a block are `f"{path}.{name}"`."""
    if not isinstance(model, MetaModel):
        raise TypeError(f"expected an l3m MetaModel, got {type(model).__name__}")
    return [(path, rw.block) for path, rw in model.block_items() if isinstance(rw.block, kinds)]


def one_block(
    model: nn.Module, kind: type, what: str, optional: bool = False
) -> tuple[str, nn.Module] | None:
    """The model's only block of class `kind` (None if `optional` and there is none)."""
    found = blocks_of(model, kind)
    if len(found) == 1:
        return found[0]
    if not found and optional:
        return None
    where = f" ({', '.join(p for p, _ in found)})" if found else ""
    count = f"found {len(found)}{where}"
    raise ValueError(f"{what} needs exactly one {kind.__name__} block in the model, {count}")


def layer_problems(layer: nn.Module, mlp: str, norm: type, qk_norm: bool = False) -> list[str]:
    """What a Transformer layer lacks to be a plain pre-norm layer of a peer's: self-attention only (no
    cross-attention or position module of its own, and no qk_norm unless the peer has it; the trunk's
    RoPE is the caller's to judge), the feed-forward `mlp` ("gelu" or "swiglu", no MoE) and both norms
    of class `norm`. Each problem is what to write in the file."""
    from l3m.model.blocks.feedforward import MLP

    problems = []
    attn = layer.attn
    if attn is None or layer.cross_attn is not None:
        problems.append("self-attention only (attention = true, no cross-attention)")
    elif not qk_norm and not isinstance(attn.q_norm, nn.Identity):
        problems.append("qk_norm = false")
    elif getattr(attn, "pos", None) is not None:
        problems.append(f"no attention pos (it has {type(attn.pos).__name__})")
    gated = mlp == "swiglu"
    ff = layer.mlp
    if not (isinstance(ff, MLP) and (ff.w3 is not None) == gated and ff.act == ("silu" if gated else "gelu")):
        problems.append(f"mlp = {mlp} (no MoE)")
    if not (isinstance(layer.norm1, norm) and isinstance(layer.norm2, norm)):
        problems.append(f"norm = {norm.__name__.lower()}")
    return problems


def linear_rules(foreign: str, native: str, names: Iterable[str] = ("weight", "bias")) -> list[Rule]:
    """One-to-one renames of `foreign.weight` and `foreign.bias` (a bias only maps if present)."""
    return [rename(f"{foreign}.{n}", f"{native}.{n}") for n in names]


# -- files ----------------------------------------------------------------------------------------


def read_foreign(source: str | Path) -> dict[str, torch.Tensor]:
    """A foreign checkpoint: one file (safetensors or torch), or a folder of safetensors shards
    as Hugging Face writes them (`model-00001-of-00002.safetensors`, ...)."""
    from l3m.train.export import read_weights

    p = Path(source)
    shards = sorted(p.glob("*.safetensors")) if p.is_dir() else []
    if not shards:
        return read_weights(p)
    from safetensors.torch import load_file

    out: dict[str, torch.Tensor] = {}
    for shard in shards:
        part = load_file(str(shard))
        twice = sorted(set(part) & set(out))
        if twice:
            raise ValueError(f"{shard.name} repeats tensors of another shard: {', '.join(twice[:4])}")
        out.update(part)
    return out


def save_safetensors(tensors: Mapping[str, torch.Tensor], path: str | Path, metadata: dict[str, str]) -> None:
    """Write `tensors` atomically; a tensor under two names (a tie) is written twice."""
    from safetensors.torch import save_file

    seen: set[int] = set()  # safetensors refuses tensors that share a storage
    out: dict[str, torch.Tensor] = {}
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        ptr = t.untyped_storage().data_ptr()
        out[name] = t.clone() if ptr in seen else t
        seen.add(ptr)
    with atomic_output(path) as tmp:  # an ordinary file's mode, whole or absent
        save_file(out, str(tmp), metadata={"format": "pt", **metadata})
