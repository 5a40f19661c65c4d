"""Shape rules for blocks that a `shapes` string cannot describe (`shapes = "@name"`).

A rule is `def name(args: dict, inputs: dict[str, TensorType]) -> dict[str, TensorType]`: `args` are
the constructor arguments after defaults (None where unknown), `inputs` the types of the bound input
ports (a variadic port `*xs` arrives as `xs[0]`, `xs[1]`, ...; a port whose type is unknown is absent
or has `dims` None). It returns the output ports' types (missing ports stay unknown) or raises
`ShapeError(message, arg=None | "argname")` for shapes that cannot work. Rules must be torch-free and
must never raise for what they merely do not know: unknown in, unknown out.
"""

from __future__ import annotations

import math

from l3m.dsl.shapes.rules_conv import conv2d, pool2d  # noqa: F401  (the convolutional blocks' rules)
from l3m.dsl.shapes.rules_tensor import (  # noqa: F401  (the general tensor blocks' rules)
    broadcast,
    concat_axis,
    flatten,
    insert_mask_tokens,
    keep_visible,
    permute,
    random_mask,
    reshape,
    split,
    transpose,
)
from l3m.dsl.shapes.spec import ShapeError, TensorType


def _variadic(inputs: dict[str, TensorType], port: str) -> list[TensorType]:
    out = []
    i = 0
    while f"{port}[{i}]" in inputs:
        out.append(inputs[f"{port}[{i}]"])
        i += 1
    return out


def _add(a: int | str, b: int | str) -> int | str:
    if isinstance(a, int) and isinstance(b, int):
        return a + b
    return f"{a} + {b}"


def concat(args: dict, inputs: dict[str, TensorType]) -> dict[str, TensorType]:
    """`Concat() a, b, ... -> x`: [B, N_i, D] each -> [B, sum N_i, D]; every other dim must agree."""
    parts = _variadic(inputs, "xs")
    if not parts or any(p.dims is None or "..." in p.dims for p in parts):
        return {}
    rank = len(parts[0].dims)
    if any(len(p.dims) != rank for p in parts) or rank < 2:
        raise ShapeError("Concat joins tensors of one rank (at least 2) along dim 1; got "
                         + ", ".join(f"[{', '.join(map(str, p.dims))}]" for p in parts))
    dims = list(parts[0].dims)
    for p in parts[1:]:
        for i, d in enumerate(p.dims):
            if i == 1:
                continue
            if isinstance(d, int) and isinstance(dims[i], int) and d != dims[i]:
                raise ShapeError(f"Concat's inputs differ in dim {i}: {dims[i]} and {d} "
                                 f"(only dim 1, the tokens, may differ)")
            if dims[i] == "?":
                dims[i] = d
    total: int | str = parts[0].dims[1]
    for p in parts[1:]:
        total = "?" if "?" in (total, p.dims[1]) else _add(total, p.dims[1])
    dims[1] = total
    dtype = parts[0].dtype if all(p.dtype == parts[0].dtype for p in parts) else None
    return {"x": TensorType(dtype, tuple(dims), None)}


def _int(v) -> int | str:
    return v if isinstance(v, int) and not isinstance(v, bool) else "?"


def synthetic_source(args: dict, inputs: dict[str, TensorType]) -> dict[str, TensorType]:
    """`Synthetic`: its `kind` decides what `input` and `target` hold (see its docstring)."""
    kind = args.get("kind", "image")
    s, seq, vocab = _int(args.get("image_size")), _int(args.get("seq_len")), args.get("vocab")
    vocab = vocab if isinstance(vocab, int) and not isinstance(vocab, bool) else None
    classes = args.get("num_classes")
    classes = classes if isinstance(classes, int) and not isinstance(classes, bool) else None
    image = TensorType("float", ("B", 3, s, s), None)
    ids = TensorType("long", ("B", seq), vocab)
    if kind == "tokens":
        return {"input": ids, "target": ids}
    if kind == "image":
        return {"input": image, "target": TensorType("long", ("B",), classes)}
    if kind == "image_text":
        return {"input": image, "target": ids}
    return {}


# ---- built-in blocks (declared in l3m/model/blocks) --------------------------------------------------------

def _arg(args: dict, name: str) -> int | None:
    v = args.get(name)
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def _seq(t: TensorType | None) -> tuple[int | str, ...] | None:
    """The dims of a tensor known to be `[B, N, D]` (rank 3, no '...'), else None."""
    if t is None or t.dims is None or "..." in t.dims:
        return None
    return t.dims


def _float(t: TensorType | None, port: str) -> None:
    if t is not None and t.dtype in ("long", "int"):
        raise ShapeError(f"{port} must hold float values, but it holds {t.dtype} (ids need an embedding first)")


def mlp(args: dict, inputs: dict[str, TensorType]) -> dict[str, TensorType]:
    """`MLP`: x [..., dim] -> x [..., out_dim], out_dim defaulting to dim."""
    dim, out = _arg(args, "dim"), _arg(args, "out_dim")
    out = out if args.get("out_dim") is not None else dim
    x = inputs.get("x")
    _float(x, "x")
    if x is None or x.dims is None:
        return {"x": TensorType("float", ("...", out if out is not None else "?"))}
    if not x.dims:
        raise ShapeError(f"x is a scalar ({x}); MLP maps the last dim, dim = {dim}", arg="dim")
    last = x.dims[-1]
    if isinstance(last, int) and dim is not None and last != dim:
        raise ShapeError(f"x is {x}, but dim = {dim} (its last dim must be {dim})", arg="dim")
    return {"x": TensorType("float", tuple(x.dims[:-1]) + (out if out is not None else "?",))}


def transformer(args: dict, inputs: dict[str, TensorType]) -> dict[str, TensorType]:
    """`Transformer` / `CrossAttentionDecoder`: x [B, N, dim] -> x, hidden [B, N, dim], aux_loss []; a mask is
    [B or 1, 1 or heads, N, N]; with cross-attention, context is [B, M, context_dim or dim]. Also the argument
    rules that depend on an argument being left out (None), which `checks` cannot state. Heads, head_dim and
    kv_heads written inside `attn = Attention(...)` win over the trunk's (as when it is built)."""
    dim, heads, head_dim = _arg(args, "dim"), _arg(args, "heads"), _arg(args, "head_dim")
    attn = _written(args.get("attn"))
    if attn is not None:
        heads, head_dim = _arg(attn, "heads") or heads, _arg(attn, "head_dim") or head_dim
    kv_heads = (_arg(attn, "kv_heads") if attn else None) or _arg(args, "kv_heads")
    cross = args.get("cross_attention", "cross_attention" not in args)  # CrossAttentionDecoder: always
    attending = (bool(args.get("attention", True)) and args.get("attn", True) is not None) or bool(cross)
    where = "attn" if attn and "heads" in attn else "heads"
    if dim is not None and heads and head_dim is None and attending and dim % heads:
        raise ShapeError(f"heads ({heads}) must divide dim ({dim}), or give head_dim", arg=where)
    if attn and heads and kv_heads and heads % kv_heads:
        raise ShapeError(f"kv_heads ({kv_heads}) must divide heads ({heads})", arg="attn")
    if attn is not None and heads and dim is not None:
        _check_pos(attn.get("pos"), head_dim if head_dim is not None else dim // heads)
    if attn is not None:
        _check_finetune(attn.get("lora"), "attn")
    _check_finetune(args.get("adapter"), "adapter")
    for part in ("mlp", "norm"):  # a layer's parts work on the residual stream: their width is the trunk's
        written = _written(args.get(part)) if dim is not None else None
        for key in ("dim", "out_dim"):
            v = _arg(written, key) if written else None
            if v is not None and v != dim:
                raise ShapeError(f"the {part}'s {key} ({v}) must be the trunk's dim ({dim}): its output is added to "
                                 "the residual stream", arg=part)
    if args.get("rope") and heads and dim is not None:
        hd = head_dim if head_dim is not None else dim // heads
        if hd % 2:
            where = "head_dim" if head_dim is not None else "heads"
            raise ShapeError(f"rope needs an even head size, but it is {hd}"
                             + ("" if head_dim is not None else f" (dim // heads = {dim} // {heads})"), arg=where)
        scaling = args.get("rope_scaling")
        if isinstance(scaling, list) and (len(scaling) != 4 or not scaling[1] < scaling[2]):
            raise ShapeError(f"rope_scaling is [factor, low_freq_factor, high_freq_factor, original_context] with "
                             f"low < high, not {scaling}", arg="rope_scaling")
    x = inputs.get("x")
    b, n = _tokens(x, dim)
    if attn is not None and attending:
        _check_grid(attn.get("pos"), n, "attn")
    md = _seq(inputs.get("mask"))
    if md is not None:
        if len(md) != 4:
            raise ShapeError(f"mask must be [B, 1, N, N] (4 dims), but it is {inputs['mask']}")
        if isinstance(n, int) and any(isinstance(m, int) and m not in (1, n) for m in md[2:]):
            raise ShapeError(f"mask is {inputs['mask']}, but x has {n} tokens (mask must be [B, 1, {n}, {n}])")
    cd = _seq(inputs.get("context")) if cross else None
    if cd is not None:
        want = _arg(args, "context_dim") if args.get("context_dim") is not None else dim
        if len(cd) != 3:
            raise ShapeError(f"context must be [B, M, width] (3 dims), but it is {inputs['context']}")
        if isinstance(cd[-1], int) and want is not None and cd[-1] != want:
            arg = "context_dim" if args.get("context_dim") is not None else "dim"
            raise ShapeError(f"context is {inputs['context']}, but its width must be {arg} = {want}"
                             + (" (give context_dim when it differs from dim)" if arg == "dim" else ""), arg=arg)
    out = TensorType("float", (b, n, dim if dim is not None else "?"))
    result = {"x": out, "aux_loss": TensorType("float", ())}
    if (_arg(args, "return_hidden") or 0) > 0:
        result["hidden"] = out
    return result


def _written(value) -> dict | None:
    """The arguments a component value's call wrote (`attn = Attention(heads = 4)`), None if it is no component."""
    from l3m.dsl.shapes.params import _Unknown, component

    try:
        found = component(value)
    except _Unknown:
        return None
    return found[1] if found is not None else None


# Position components: what their head size must divide by.
_POS_MULTIPLE = {"Rope": 2, "Rope2d": 4, "RopeMixed": 4}


def _check_pos(pos, head_dim: int) -> None:
    """An attention's `pos` component fits its head size (Rope: even, 2-D: a multiple of 4)."""
    from l3m.dsl.shapes.params import _Unknown, component

    try:
        found = component(pos)
    except _Unknown:
        return
    if found is None or found[0] not in _POS_MULTIPLE:
        return
    name, written = found
    hd = _arg(written, "head_dim") or head_dim
    if hd % _POS_MULTIPLE[name]:
        raise ShapeError(f"{name} needs a head size divisible by {_POS_MULTIPLE[name]}, but it is {hd}", arg="attn")


def _check_finetune(value, arg: str) -> None:
    """A `Lora` (rank >= 1, something to adapt) or `Adapter` (hidden >= 1) component's own arguments, which a
    component's `checks` do not reach (blocks/peft.py raises the same when building)."""
    from l3m.dsl.shapes.params import _Unknown, component

    try:
        found = component(value)
    except _Unknown:
        return
    if found is None:
        return
    name, written = found
    if name == "Lora":
        rank = _arg(written, "rank")
        if rank is not None and rank < 1:
            raise ShapeError(f"Lora's rank ({rank}) must be at least 1", arg=arg)
        if all(written.get(f) is False for f in ("q", "k", "v", "proj")):
            raise ShapeError("Lora adapts nothing: q, k, v and proj are all false", arg=arg)
    elif name == "Adapter":
        hidden = _arg(written, "hidden")
        if hidden is not None and hidden < 1:
            raise ShapeError(f"Adapter's hidden ({hidden}) must be at least 1", arg=arg)


def _tokens(x, dim) -> tuple:
    """(B, N) of a float token sequence `x` = [B, N, dim] ("?" where unknown); ShapeError otherwise."""
    _float(x, "x")
    xd = _seq(x)
    if xd is None:
        return "?", "?"
    if len(xd) != 3:
        raise ShapeError(f"x must be [B, N, dim] (3 dims), but it is {x}")
    b, n, d = xd
    if isinstance(d, int) and dim is not None and d != dim:
        raise ShapeError(f"x is {x}, but dim = {dim} (its last dim must be {dim})", arg="dim")
    return b, n


def _check_grid(pos, n, arg: str) -> None:
    """A 2-D position component's grid (given, or the largest square) and prefix fit the n tokens."""
    from l3m.dsl.shapes.params import _Unknown, component

    try:
        found = component(pos)
    except _Unknown:
        return
    if found is None or found[0] not in ("Rope2d", "RopeMixed") or not isinstance(n, int):
        return
    name, written = found
    grid, prefix = written.get("grid"), written.get("prefix")
    if grid is not None and not (isinstance(grid, list) and len(grid) == 2 and all(_arg({"g": g}, "g") for g in grid)):
        return
    if prefix is not None and _arg(written, "prefix") is None:
        return
    if grid is not None:
        cells = grid[0] * grid[1]
        p = n - cells if prefix is None else prefix
    else:
        p = prefix if prefix is not None else n - math.isqrt(n) ** 2
        cells = math.isqrt(max(n - p, 0)) ** 2
    if p < 0 or p + cells != n:
        shown = f"a {grid[0]}x{grid[1]} grid" if grid is not None else "a square grid"
        raise ShapeError(f"{name} places the {n} tokens as {max(p, 0)} prefix tokens and {shown}, which does not "
                         f"fit (give grid = [h, w] and prefix)", arg=arg)


def attention(args: dict, inputs: dict[str, TensorType]) -> dict[str, TensorType]:
    """`Attention`: x [B, N, dim] -> x [B, N, dim]; heads divide dim unless head_dim; `pos` fits the head size;
    cross-attention's context is [B, M, context_dim or dim]."""
    dim, heads, head_dim = _arg(args, "dim"), _arg(args, "heads"), _arg(args, "head_dim")
    if dim is not None and heads and head_dim is None and dim % heads:
        raise ShapeError(f"heads ({heads}) must divide dim ({dim}), or give head_dim", arg="heads")
    if heads and dim is not None and not args.get("cross"):
        try:
            _check_pos(args.get("pos"), head_dim if head_dim is not None else dim // heads)
        except ShapeError as e:
            raise ShapeError(str(e), arg="pos") from None
    _check_finetune(args.get("lora"), "lora")
    x = inputs.get("x")
    b, n = _tokens(x, dim)
    if not args.get("cross"):
        _check_grid(args.get("pos"), n, "pos")
    cd = _seq(inputs.get("context")) if args.get("cross") else None
    if cd is not None and len(cd) == 3:
        want = _arg(args, "context_dim") if args.get("context_dim") is not None else dim
        if isinstance(cd[-1], int) and want is not None and cd[-1] != want:
            raise ShapeError(f"context is {inputs['context']}, but its width must be {want}",
                             arg="context_dim" if args.get("context_dim") is not None else "dim")
    return {"x": TensorType("float", (b, n, dim if dim is not None else "?"))}


def select_tokens(args: dict, inputs: dict[str, TensorType]) -> dict[str, TensorType]:
    """`SelectTokens`: x [B, N, ...] -> x [B, len(range(N)[start:end]), ...]; start and end must lie within
    the N tokens and keep at least one (a slice past the end would silently keep fewer)."""
    start, end = _arg(args, "start"), _arg(args, "end")
    if start is None or (args.get("end") is not None and end is None):
        return {}
    if end is not None and start >= 0 and 0 <= end <= start:
        raise ShapeError(f"tokens {start}:{end} select nothing (end must be above start)", arg="end")
    x = inputs.get("x")
    if x is None or x.dims is None or len(x.dims) < 2 or "..." in x.dims[:2]:
        return {}
    n = x.dims[1]
    if isinstance(n, int):
        for name, v in (("start", start), ("end", end)):
            if v is not None and not -n <= v <= n:
                raise ShapeError(f"{name} = {v} is outside the {n} tokens of x ({x})", arg=name)
        kept: int | str = len(range(n)[start:end])
        if kept == 0:
            raise ShapeError(f"tokens {start}:{end} of x's {n} select nothing", arg="end" if end is not None else "start")
    elif end is not None and 0 <= start < end:
        kept = end - start
    elif end is None and start == 0:
        kept = n
    elif end is None and start > 0 and n != "?":
        kept = f"{n} - {start}" if str(n).isidentifier() else f"({n}) - {start}"
    else:
        kept = "?"
    return {"x": TensorType(x.dtype, (x.dims[0], kept) + tuple(x.dims[2:]), x.bound)}


def document_mask(args: dict, inputs: dict[str, TensorType]) -> dict[str, TensorType]:
    """`DocumentMask`: documents from `segments` [B, N], or from `tokens` [B, N] split at eos_id ->
    mask bool[B, 1, N, N]."""
    tokens, segments = inputs.get("tokens"), inputs.get("segments")
    if tokens is None and segments is None:
        raise ShapeError("DocumentMask reads `segments` (document ids) or `tokens` (with eos_id): bind one")
    if segments is None and args.get("eos_id") is None:
        raise ShapeError("DocumentMask finds the documents in `tokens` by eos_id: give eos_id, or bind `segments`",
                         arg="eos_id")
    dims = [t.dims for t in (segments, tokens) if t is not None and t.dims is not None and "..." not in t.dims]
    for d in dims:
        if len(d) != 2:
            raise ShapeError(f"document ids must be [B, N] (2 dims), not [{', '.join(map(str, d))}]")
    if len(dims) == 2 and all(isinstance(d[1], int) for d in dims) and dims[0][1] != dims[1][1]:
        raise ShapeError(f"segments has {dims[0][1]} positions but tokens {dims[1][1]}")
    b, n = dims[0] if dims else ("?", "?")
    return {"mask": TensorType("bool", (b, 1, n, n))}
