"""Shape rules for blocks that a `shapes` string cannot describe (`shapes = "@name"`).

A rule is `def name(args: dict, inputs: dict[str, TensorType]) -> dict[str, TensorType]`: `args` are
the constructor arguments after defaults (None where unknown), `inputs` the types of the bound input
ports (a variadic port `*xs` arrives as `xs[0]`, `xs[1]`, ...; a port whose type is unknown is absent
or has `dims` None). It returns the output ports' types (missing ports stay unknown) or raises
`ShapeError(message, arg=None | "argname")` for shapes that cannot work. Rules must be torch-free and
must never raise for what they merely do not know: unknown in, unknown out.
"""

from __future__ import annotations

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
    rules that depend on an argument being left out (None), which `checks` cannot state."""
    dim, heads, head_dim = _arg(args, "dim"), _arg(args, "heads"), _arg(args, "head_dim")
    cross = args.get("cross_attention", "cross_attention" not in args)  # CrossAttentionDecoder: always
    attending = bool(args.get("attention", True)) or bool(cross)
    if dim is not None and heads and head_dim is None and attending and dim % heads:
        raise ShapeError(f"heads ({heads}) must divide dim ({dim}), or give head_dim", arg="heads")
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
    _float(x, "x")
    b, n = "?", "?"
    xd = _seq(x)
    if xd is not None:
        if len(xd) != 3:
            raise ShapeError(f"x must be [B, N, dim] (3 dims), but it is {x}")
        b, n, d = xd
        if isinstance(d, int) and dim is not None and d != dim:
            raise ShapeError(f"x is {x}, but dim = {dim} (its last dim must be {dim})", arg="dim")
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
