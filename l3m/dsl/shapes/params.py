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

from l3m.dsl.shapes.params_conv import CONV_PARAMS
from l3m.dsl.shapes.params_tensor import TENSOR_PARAMS
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
    """What `make_norm(kind, dim)` creates (its LayerNorm always has a bias; a Norm component with `dim`)."""
    if not isinstance(kind, str):
        return component_params(kind, {"dim": dim})
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


def _attention_block(a: Mapping[str, Any]) -> Params:
    """`Attention` (block or component): the projections, then its `pos` (self-attention only)."""
    dim, heads = _int(a["dim"]), _int(a["heads"])
    head_dim = _int(a["head_dim"]) if a.get("head_dim") else None
    kv_heads = _int(a["kv_heads"]) if a.get("kv_heads") else None
    cross = bool(a.get("cross", False))
    out = _attention(dim, heads, head_dim, kv_heads, bool(a.get("qkv_bias", False)), bool(a.get("proj_bias", False)),
                     bool(a.get("fused_qkv", True)), bool(a.get("qk_norm", False)), a.get("norm", "layernorm"), cross,
                     _int(a["context_dim"]) if a.get("context_dim") else None)
    if a.get("lora") is not None:
        out = _with_lora(out, a["lora"], head_dim or dim // heads, heads // (kv_heads or heads), cross,
                         bool(a.get("fused_qkv", True)))
    if a.get("pos") is not None and not cross:
        ctx = dict(head_dim=head_dim or dim // heads, heads=heads, kv_heads=kv_heads or heads)
        out += _sub("pos", component_params(a["pos"], ctx))
    return out


def _with_lora(params: Params, lora: Any, hd: int, rep: int, cross: bool, fused: bool) -> Params:
    """An attention's parameters with a `Lora` component's `lora_A`/`lora_B` after each projection it adapts
    (as blocks/peft.py's LoraLinear adds them: per enabled part `rank` rows of A and the part's rows of B)."""
    found = component_args(lora, {})
    if found is None:
        return params
    name, args = found
    if name != "Lora":
        raise _Unknown
    rank = _int(args["rank"])
    if cross:
        layout = {"q": ([("q", 1)], None), "kv": ([("k", 1), ("v", 1)], hd)} if fused else \
            {"q": ([("q", 1)], None), "k": ([("k", 1)], None), "v": ([("v", 1)], None)}
    elif fused:
        layout = {"qkv": ([("q", rep), ("k", 1), ("v", 1)], hd)}
    else:
        layout = {"q": ([("q", 1)], None), "k": ([("k", 1)], None), "v": ([("v", 1)], None)}
    layout["proj"] = ([("proj", 1)], None)
    shapes = dict(params)
    out: Params = []
    for pname, shape in params:
        out.append((pname, shape))
        lin, _, leaf = pname.partition(".")
        last = f"{lin}.bias" if f"{lin}.bias" in shapes else f"{lin}.weight"
        if lin not in layout or pname != last:
            continue
        parts, width = layout[lin]
        rows, cols = shapes[f"{lin}.weight"]
        width = width or rows
        groups = rows // (sum(s for _, s in parts) * width)
        on = [s for part, s in parts if args.get(part, True)]
        if on:
            out += [(f"{lin}.lora_A", (rank * len(on), cols)), (f"{lin}.lora_B", (sum(groups * s * width for s in on), rank))]
    return out


# ---- components: values of block arguments (`attn = Attention(pos = Rope2d())`) ---------------------------------

def component(value: Any) -> tuple[str, dict[str, Any]] | None:
    """`(name, the arguments its call wrote)` of a component value: an `ir.Call`, a `sigparams.ComponentArgs`
    (its `written` keys), a signature default `use(...)`, a `Factory`, or `{"type": ..., "kwargs": ...}`.
    None for None; `_Unknown` for anything else."""
    from l3m.interfaces import Use

    if value is None:
        return None
    if isinstance(value, Use):
        return value.name, dict(value.kwargs)
    if hasattr(value, "type_name") and hasattr(value, "kwargs"):  # ir.Call: positional arguments by the signature
        entry = _builtin(value.type_name)
        if entry is None:
            raise _Unknown
        return value.type_name, value.kwargs_for(entry.signature)
    if isinstance(value, dict) and isinstance(getattr(value, "name", None), str):  # ComponentArgs
        written = getattr(value, "written", None)
        if written is None:  # an older ComponentArgs: what differs from the signature's defaults
            entry = _builtin(value.name)
            base = defaults(entry.signature) if entry is not None else {}
            return value.name, {k: v for k, v in value.items() if k not in base or base[k] != v}
        return value.name, {k: value[k] for k in written}
    if isinstance(value, dict) and isinstance(value.get("type"), str):
        return value["type"], dict(value.get("kwargs") or {})
    name, kwargs = getattr(value, "name", None), getattr(value, "kwargs", None)
    if isinstance(name, str) and isinstance(kwargs, dict):  # l3m.model.components.Factory
        return name, dict(kwargs)
    raise _Unknown


def component_args(value: Any, context: Mapping[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """`(name, constructor arguments)` a host builds a component with: its context (the keys the
    constructor takes), the call's own arguments winning, then the signature's defaults."""
    found = component(value)
    if found is None:
        return None
    name, written = found
    entry = _builtin(name)
    if entry is None:
        raise _Unknown
    params = entry.signature.parameters
    takes_all = any(p.kind is p.VAR_KEYWORD for p in params.values())
    merged = {k: v for k, v in context.items() if takes_all or k in params}
    merged.update(written)
    return name, _with_defaults(entry, merged)


def component_params(value: Any, context: Mapping[str, Any]) -> Params:
    """The parameters of a component its host builds with `context` (none for None)."""
    found = component_args(value, context)
    if found is None:
        return []
    name, args = found
    rule = _RULES.get(name) or _COMPONENT_RULES.get(name)
    if rule is None:
        raise _Unknown
    return rule(args)


def _rope_mixed(a: Mapping[str, Any]) -> Params:
    hd, heads = _int(a["head_dim"]), _int(a["heads"])
    return [("freqs", (2, _int(a["kv_heads"]) if a.get("kv_heads") else heads, hd // 2))]


_COMPONENT_RULES: dict[str, Callable[[Mapping[str, Any]], Params]] = {
    "Rope": lambda a: [], "Rope2d": lambda a: [], "RopeMixed": _rope_mixed,
}


def _ffn_hidden(a: Mapping[str, Any], glu: bool) -> int:
    """A feed-forward's `hidden`, or its default from `mlp_ratio` and `multiple_of`."""
    if a.get("hidden"):
        return _int(a["hidden"])
    return mlp_hidden(_int(a["dim"]), _num(a.get("mlp_ratio", 4.0)), glu, _int(a.get("multiple_of", 256)))


def _moe(dim: int, hidden: int, experts: int) -> Params:
    # The stacked expert weights are the module's own parameters, so they come before the router's.
    return [("w1", (experts, hidden, dim)), ("w3", (experts, hidden, dim)), ("w2", (experts, dim, hidden))] + \
        _sub("router", _linear(dim, experts, False))


# The feed-forward component a string names (as blocks/transformer.py's `_MLP`).
_MLP_COMPONENT = {"gelu": ("MLP", (("act", "gelu"), ("glu", False))), "swiglu": ("SwiGLU", ()),
                  "geglu": ("GeGLU", ())}


def _transformer(a: Mapping[str, Any], cross_attention: bool | None = None) -> Params:
    from l3m.interfaces import Use

    dim, depth, heads = _int(a["dim"]), _int(a["depth"]), _int(a["heads"])
    head_dim = _int(a["head_dim"]) if a.get("head_dim") else None
    kv_heads = _int(a["kv_heads"]) if a.get("kv_heads") else None
    mlp, norm = a.get("mlp", "gelu"), a.get("norm", "layernorm")
    if isinstance(mlp, str) and mlp not in (*_MLP_COMPONENT, "none"):
        raise _Unknown
    if isinstance(norm, str) and norm not in ("layernorm", "rmsnorm"):
        raise _Unknown
    attn = a.get("attn", Use("Attention"))  # a nested trunk's dict (PixelDecoder's) leaves it out
    cross = bool(a.get("cross_attention", False)) if cross_attention is None else cross_attention
    attention, identity = bool(a.get("attention", True)) and attn is not None, bool(a.get("identity_attn", False))
    hidden = _int(a["hidden"]) if a.get("hidden") else None
    ratio, multiple_of = _num(a.get("mlp_ratio", 4.0)), _int(a.get("multiple_of", 256))
    moe_hidden = hidden or mlp_hidden(dim, ratio, True, multiple_of)
    moe_every, experts = _int(a.get("moe_every", 0) or 0), _int(a.get("num_experts", 4))
    ctx = dict(dim=dim, heads=heads, head_dim=head_dim, kv_heads=kv_heads, qkv_bias=bool(a.get("qkv_bias", False)),
               proj_bias=bool(a.get("proj_bias", False)), fused_qkv=bool(a.get("fused_qkv", True)),
               qk_norm=bool(a.get("qk_norm", False)), norm=norm, norm_eps=a.get("norm_eps", 1e-6), depth=depth,
               init=a.get("init", "trunc_normal"), init_std=a.get("init_std", 0.02), causal=bool(a.get("causal")))
    self_attn = component_params(attn, ctx) if attention else []
    cross_attn = component_params(attn, {**ctx, "cross": True, "context_dim": a.get("context_dim")}) if cross else []
    ffn = None
    if mlp != "none":
        value = Use(*_MLP_COMPONENT[mlp]) if isinstance(mlp, str) else mlp
        ffn = component_params(value, dict(dim=dim, hidden=hidden, mlp_ratio=ratio, multiple_of=multiple_of,
                                           bias=bool(a.get("mlp_bias", False)), init_depth=depth,
                                           num_experts=experts, top_k=a.get("top_k", 1),
                                           capacity_factor=a.get("capacity_factor")))

    adapter = component_params(a.get("adapter"), dict(dim=dim, init=ctx["init"], init_std=ctx["init_std"]))

    def layer(moe: bool) -> Params:
        out: Params = []
        if attention or identity:
            out += _sub("norm1", _norm(norm, dim))
        if attention:
            out += _sub("attn", self_attn)
        if cross:
            out += _sub("norm_cross", _norm(norm, dim))
            out += _sub("cross_attn", cross_attn)
        if ffn is not None:
            out += _sub("norm2", _norm(norm, dim))
            out += _sub("mlp", _moe(dim, moe_hidden, experts) if moe else ffn)
        if attention:
            out += _sub("adapter_1", adapter)
        if ffn is not None:
            out += _sub("adapter_2", adapter)
        return out

    kinds = {False: layer(False), True: layer(True) if moe_every else []}  # every layer is one of two
    out: Params = []
    for i in range(min(depth, 1) if a.get("share_layers") else depth):  # shared: one layer's, named once
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
    "MLP": lambda a: _mlp(_int(a["dim"]), _ffn_hidden(a, bool(a.get("glu", False))),
                          _int(a["out_dim"]) if a.get("out_dim") else None, bool(a.get("bias", True)),
                          bool(a.get("glu", False))),
    **{name: lambda a: _mlp(_int(a["dim"]), _ffn_hidden(a, True), _int(a["out_dim"]) if a.get("out_dim") else None,
                            bool(a.get("bias", False)), True) for name in ("SwiGLU", "GeGLU")},
    "MoE": lambda a: _moe(_int(a["dim"]), _ffn_hidden(a, True), _int(a.get("num_experts", 4))),
    "Attention": _attention_block,
    "Adapter": lambda a: _sub("down", _linear(_int(a["dim"]), _int(a.get("hidden", 32)))) +
    _sub("up", _linear(_int(a.get("hidden", 32)), _int(a["dim"]))),
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
    **CONV_PARAMS,
    **TENSOR_PARAMS,
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
    rule = _RULES.get(entry_name) or _COMPONENT_RULES.get(entry_name)
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
# same block with the same arguments. Only arguments that are plain scalars, lists of them and
# components of them make a key.
_MEMO: dict[tuple, tuple[Any, tuple | None]] = {}
_PLAIN = (int, float, str, bool, type(None))


class _NoKey(Exception):
    pass


def _frozen(v: Any) -> Any:
    if type(v) in _PLAIN:
        return (type(v), repr(v) if type(v) is float else v)
    if type(v) is list:
        return ("list", *(_frozen(x) for x in v))
    try:
        found = component(v)
    except _Unknown:
        raise _NoKey from None
    if found is None:
        raise _NoKey
    name, written = found
    return ("component", name, *sorted((k, _frozen(x)) for k, x in written.items()))


def _memo_key(entry_name: str, args: Mapping[str, Any]) -> tuple | None:
    try:
        return (entry_name, *sorted((k, _frozen(v)) for k, v in args.items()))
    except _NoKey:
        return None


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
