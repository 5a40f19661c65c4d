"""The parameters a built-in block will have, without building it (so without torch).

`static_params("Transformer", args)` lists the names (relative to the block, as its own
`named_parameters()` gives them, in the same order) and shapes its constructor would create from
those arguments. Lint uses them to check `tie`, `freeze`, `no_decay` and `init_*` before anything is
built, and `graph` to print parameter counts. A test builds each block on the meta device and
compares, so the two cannot drift apart silently.

Blocks it does not know (an extension's) give None: callers then check nothing about them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from l3m.dsl.sigparams import defaults

Shape = tuple[int, ...]
Params = list[tuple[str, Shape]]


class _Unknown(Exception):
    """An argument whose value cannot give a shape (not an int, an unknown option): no answer."""


def _int(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise _Unknown
    return v


def _num(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise _Unknown
    return float(v)


def _sub(prefix: str, params: Params) -> Params:
    return [(f"{prefix}.{n}", s) for n, s in params]


def _linear(i: int, o: int, bias: bool = True) -> Params:
    return [("weight", (o, i))] + ([("bias", (o,))] if bias else [])


def _norm(kind: Any, dim: int) -> Params:
    """What `make_norm(kind, dim)` creates (its LayerNorm always has a bias)."""
    if kind == "layernorm":
        return [("weight", (dim,)), ("bias", (dim,))]
    if kind == "rmsnorm":
        return [("weight", (dim,))]
    if kind == "none":
        return []
    raise _Unknown


def mlp_hidden(dim: int, mlp_ratio: float, glu: bool, multiple_of: int) -> int:
    """The feed-forward width a Transformer derives from `mlp_ratio` (see blocks/feedforward.py)."""
    if not glu:
        return int(mlp_ratio * dim)
    h = int(2 * mlp_ratio * dim / 3)
    return multiple_of * math.ceil(h / multiple_of)


def _mlp(dim: int, hidden: int, out_dim: int | None, bias: bool, glu: bool) -> Params:
    out = _sub("w1", _linear(dim, hidden, bias))
    if glu:
        out += _sub("w3", _linear(dim, hidden, bias))
    return out + _sub("w2", _linear(hidden, out_dim or dim, bias))


def _attention(dim: int, heads: int, head_dim: int | None, kv_heads: int | None, qkv_bias: bool, proj_bias: bool,
               fused: bool, qk_norm: bool, norm: Any, cross: bool = False, context_dim: int | None = None) -> Params:
    hd = head_dim or dim // heads
    kvh = kv_heads or heads
    rep = heads // kvh
    cdim = context_dim or dim
    out: Params = []
    if cross:
        out += _sub("q", _linear(dim, heads * hd, qkv_bias))
        if fused:
            out += _sub("kv", _linear(cdim, kvh * 2 * hd, qkv_bias))
        else:
            out += _sub("k", _linear(cdim, kvh * hd, qkv_bias)) + _sub("v", _linear(cdim, kvh * hd, qkv_bias))
    elif fused:
        out += _sub("qkv", _linear(dim, kvh * (rep + 2) * hd, qkv_bias))
    else:
        out += _sub("q", _linear(dim, heads * hd, qkv_bias))
        out += _sub("k", _linear(dim, kvh * hd, qkv_bias)) + _sub("v", _linear(dim, kvh * hd, qkv_bias))
    kind = norm if qk_norm else "none"
    out += _sub("q_norm", _norm(kind, hd)) + _sub("k_norm", _norm(kind, hd))
    return out + _sub("proj", _linear(heads * hd, dim, proj_bias))


def _moe(dim: int, hidden: int, experts: int) -> Params:
    # The stacked expert weights are the module's own parameters, so they come before the router's.
    return [("w1", (experts, hidden, dim)), ("w3", (experts, hidden, dim)), ("w2", (experts, dim, hidden))] + \
        _sub("router", _linear(dim, experts, False))


_GATED = {"gelu": False, "swiglu": True, "geglu": True, "none": False}


def _transformer(a: Mapping[str, Any], cross_attention: bool | None = None) -> Params:
    dim, depth, heads = _int(a["dim"]), _int(a["depth"]), _int(a["heads"])
    head_dim = _int(a["head_dim"]) if a.get("head_dim") else None
    kv_heads = _int(a["kv_heads"]) if a.get("kv_heads") else None
    mlp, norm = a.get("mlp", "gelu"), a.get("norm", "layernorm")
    if mlp not in _GATED:
        raise _Unknown
    cross = bool(a.get("cross_attention", False)) if cross_attention is None else cross_attention
    attention, identity = bool(a.get("attention", True)), bool(a.get("identity_attn", False))
    hidden = _int(a["hidden"]) if a.get("hidden") else None
    ratio, multiple_of = _num(a.get("mlp_ratio", 4.0)), _int(a.get("multiple_of", 256))
    dense_hidden = hidden or mlp_hidden(dim, ratio, _GATED[mlp], multiple_of)
    moe_hidden = hidden or mlp_hidden(dim, ratio, True, multiple_of)
    moe_every, experts = _int(a.get("moe_every", 0) or 0), _int(a.get("num_experts", 4))
    hd = head_dim or dim // heads
    attn = dict(dim=dim, heads=heads, head_dim=hd, kv_heads=kv_heads, qkv_bias=bool(a.get("qkv_bias", False)),
                proj_bias=bool(a.get("proj_bias", False)), fused=bool(a.get("fused_qkv", True)),
                qk_norm=bool(a.get("qk_norm", False)), norm=norm)
    context_dim = _int(a["context_dim"]) if a.get("context_dim") else None

    def layer(moe: bool) -> Params:
        out: Params = []
        if attention or identity:
            out += _sub("norm1", _norm(norm, dim))
        if attention:
            out += _sub("attn", _attention(**attn))
        if cross:
            out += _sub("norm_cross", _norm(norm, dim))
            out += _sub("cross_attn", _attention(**attn, cross=True, context_dim=context_dim))
        if mlp != "none":
            out += _sub("norm2", _norm(norm, dim))
            if moe:
                out += _sub("mlp", _moe(dim, moe_hidden, experts))
            else:
                out += _sub("mlp", _mlp(dim, dense_hidden, None, bool(a.get("mlp_bias", False)), _GATED[mlp]))
        return out

    kinds = {False: layer(False), True: layer(True) if moe_every else []}  # every layer is one of two
    out: Params = []
    for i in range(depth):
        out += _sub(f"layers.{i}", kinds[bool(moe_every) and (i + 1) % moe_every == 0])
    return out + _sub("norm", _norm(norm if a.get("final_norm", True) else "none", dim))


def _patch_embed(a: Mapping[str, Any]) -> Params:
    dim, patch, chans = _int(a["dim"]), _int(a.get("patch", 16)), _int(a.get("in_chans", 3))
    out: Params = [("weight", (dim, chans, patch, patch))]
    if a.get("bias", True):
        out.append(("bias", (dim,)))
    return out + _sub("norm", _norm(a.get("norm", "none"), dim))


def _pos_embed(a: Mapping[str, Any]) -> Params:
    kind = a.get("kind", "learned")
    if kind == "learned":
        return [("pos", (1, _int(a["num"]), _int(a["dim"])))]
    if kind in ("sincos1d", "sincos2d"):
        return []  # a frozen table: a buffer, not a parameter
    raise _Unknown


def _cls_token(a: Mapping[str, Any]) -> Params:
    dim, regs = _int(a["dim"]), _int(a.get("num_registers", 0))
    return [("cls", (1, 1, dim))] + ([("registers", (1, regs, dim))] if regs else [])


def _attention_pool(a: Mapping[str, Any]) -> Params:
    dim = _int(a["dim"])
    return [("query", (1, _int(a.get("num_queries", 1)), dim))] + \
        _sub("kv", _linear(dim, 2 * dim, bool(a.get("qkv_bias", False))))


def _classifier(a: Mapping[str, Any]) -> Params:
    dim, classes = _int(a["dim"]), _int(a["num_classes"])
    return _sub("norm", _norm(a.get("norm", "none"), dim)) + _sub("fc", _linear(dim, classes, bool(a.get("bias", True))))


def _pool_classifier(a: Mapping[str, Any]) -> Params:
    pool = _attention_pool({"dim": a["dim"], "num_queries": a.get("num_queries", 1)})
    return _sub("pool", pool) + _classifier(a)


def _pixel_decoder(a: Mapping[str, Any]) -> Params:
    dim, out_dim, depth = _int(a["dim"]), _int(a["out_dim"]), _int(a.get("depth", 0))
    if depth == 0:
        return _sub("out", _linear(dim, out_dim))
    hidden, attention = _int(a.get("hidden", 512)), bool(a.get("attention", False))
    trunk = {"dim": hidden, "depth": depth, "heads": a.get("heads", 8), "mlp": a.get("mlp", "gelu"),
             "mlp_ratio": a.get("mlp_ratio", 4.0), "norm": a.get("norm", "layernorm"), "attention": attention}
    return _sub("embed", _linear(dim, hidden)) + _sub("blocks", _transformer(trunk, cross_attention=False)) + \
        _sub("out", _linear(hidden, out_dim))


def _clip_projection(a: Mapping[str, Any]) -> Params:
    own: Params = [("logit_scale", (1,))] if a.get("learn_scale", True) else []
    return own + _sub("proj", _linear(_int(a["in_dim"]), _int(a["out_dim"]), bool(a.get("bias", False))))


def _none(a: Mapping[str, Any]) -> Params:
    return []


_RULES: dict[str, Callable[[Mapping[str, Any]], Params]] = {
    "Linear": lambda a: _linear(_int(a["in_features"]), _int(a["out_features"]), bool(a.get("bias", True))),
    "LayerNorm": lambda a: [("weight", (_int(a["dim"]),))] + ([("bias", (a["dim"],))] if a.get("bias", True) else []),
    "RMSNorm": lambda a: [("weight", (_int(a["dim"]),))],
    "MLP": lambda a: _mlp(_int(a["dim"]), _int(a["hidden"]), _int(a["out_dim"]) if a.get("out_dim") else None,
                          bool(a.get("bias", True)), bool(a.get("glu", False))),
    "MoE": lambda a: _moe(_int(a["dim"]), _int(a["hidden"]), _int(a.get("num_experts", 4))),
    "Transformer": _transformer,
    "CrossAttentionDecoder": lambda a: _transformer(a, cross_attention=True),
    "PatchEmbed": _patch_embed,
    "TokenEmbedding": lambda a: [("emb.weight", (_int(a["vocab"]), _int(a["dim"])))],
    "PosEmbed": _pos_embed,
    "ClsToken": _cls_token,
    "Classifier": _classifier,
    "AttentionPoolClassifier": _pool_classifier,
    "AttentionPool": _attention_pool,
    "PixelDecoder": _pixel_decoder,
    "ClipProjection": _clip_projection,
    "LMHead": lambda a: _sub("proj", _linear(_int(a["dim"]), _int(a["vocab"]), bool(a.get("bias", False)))),
    **{name: _none for name in ("Concat", "SelectTokens", "ClsPool", "EosPool", "AvgPool", "CausalMask",
                                "PrefixCausalMask", "PaddingMask", "DocumentMask")},
}

# The name of the parameter a block's `.weight` is (what a `tie` shares), where it is not `weight` itself.
WEIGHT_ATTR = {"TokenEmbedding": "emb.weight", "LMHead": "proj.weight"}

# Losses and metrics: none of the built-in ones has parameters.
_PARAMETERLESS_KINDS = ("loss", "metric")


def _builtin(entry_name: str) -> Any:
    """The registry entry of a built-in block, loss or metric (None for an extension's)."""
    from l3m.registry import lookup

    entry = lookup(entry_name)
    if entry is None or not str(getattr(entry, "module", "")).startswith("l3m."):
        return None
    return entry


def _with_defaults(entry: Any, args: Mapping[str, Any]) -> dict[str, Any]:
    """`args` completed with the constructor's defaults (from the registry's signature)."""
    try:
        full = defaults(entry.signature)
    except Exception:  # no readable signature: the arguments as given
        full = {}
    full.update(args)
    return full


def static_params(entry_name: str, args: Mapping[str, Any]) -> Params | None:
    """The parameters (names relative to the block, shapes) a built-in block, loss or metric would
    create from `args` (its constructor arguments by name; defaults are filled in). None when it is
    not known: an extension's block, or arguments that give no shape (an expression lint cannot
    evaluate, an unknown option)."""
    entry = _builtin(entry_name)
    if entry is None:
        return None
    if getattr(entry, "kind", None) in _PARAMETERLESS_KINDS:
        return []
    rule = _RULES.get(entry_name)
    if rule is None:
        return None
    key = _memo_key(entry_name, args)
    hit = _MEMO.get(key) if key is not None else None
    if hit is not None and hit[0] is entry:
        return None if hit[1] is None else list(hit[1])
    try:
        out = [(n, tuple(_int(d) for d in s)) for n, s in rule(_with_defaults(entry, args))]
    except (_Unknown, KeyError, TypeError, ValueError, ZeroDivisionError):
        out = None
    if key is not None:
        if len(_MEMO) >= 16384:
            _MEMO.clear()
        _MEMO[key] = (entry, None if out is None else tuple(out))
    return out


# (entry name, its arguments) -> (the entry, the answer): the layers of a deep stack are mostly the
# same block with the same arguments. Only arguments that are plain scalars make a key.
_MEMO: dict[tuple, tuple[Any, tuple | None]] = {}
_PLAIN = (int, float, str, bool, type(None))


def _memo_key(entry_name: str, args: Mapping[str, Any]) -> tuple | None:
    items = []
    for k, v in args.items():
        if type(v) not in _PLAIN:
            return None
        items.append((k, type(v), repr(v) if type(v) is float else v))
    return (entry_name, *sorted(items))


def weight_name(entry_name: str, params: Params) -> str | None:
    """The relative name of the parameter that is a block's `.weight` (what `tie` shares), if any."""
    name = WEIGHT_ATTR.get(entry_name, "weight")
    return name if any(n == name for n, _ in params) else None


def count(params: Params) -> int:
    """The number of scalars in `params`."""
    return sum(math.prod(s) for _, s in params)


def known_blocks() -> list[str]:
    """The block names this module answers for."""
    return sorted(_RULES)
