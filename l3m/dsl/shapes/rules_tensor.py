"""Shape rules of the general tensor blocks (l3m/model/blocks/elementwise.py, reshape.py, tokens.py).

Re-exported by `l3m.dsl.shapes.rules` (where `shapes = "@name"` looks rules up). Torch-free, and, as every
rule, unknown in -> unknown out: only what certainly cannot work raises `ShapeError`.
"""

from __future__ import annotations

from math import prod

from l3m.dsl.shapes.spec import ShapeError, TensorType

Dim = int | str


def _variadic(inputs: dict[str, TensorType], port: str) -> list[TensorType]:
    out = []
    while f"{port}[{len(out)}]" in inputs:
        out.append(inputs[f"{port}[{len(out)}]"])
    return out


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _known(t: TensorType | None) -> tuple[Dim, ...] | None:
    """A tensor's dims when its rank is known (no '...'), else None."""
    if t is None or t.dims is None or "..." in t.dims:
        return None
    return t.dims


def _text(dims) -> str:
    return "[" + ", ".join(map(str, dims)) + "]"


def _sym(v: Dim) -> str:
    """A dim written so that it can stand inside an arithmetic expression."""
    s = str(v)
    return s if s.isidentifier() or s.isdigit() else f"({s})"


def _product(values: list[Dim]) -> Dim:
    if "?" in values:
        return "?"
    ints = prod(v for v in values if _is_int(v))
    syms = [_sym(v) for v in values if not _is_int(v)]
    if not syms:
        return ints
    if ints == 1 and len(syms) == 1:
        return next(v for v in values if not _is_int(v))
    return " * ".join(([str(ints)] if ints != 1 else []) + syms)


def _axis(axis, rank: int, arg: str = "axis") -> int:
    if not -rank <= axis < rank:
        raise ShapeError(f"{arg} = {axis} is outside the {rank} dims of the input (use {-rank}..{rank - 1})", arg=arg)
    return axis % rank


def _dtype(parts: list[TensorType]) -> str | None:
    dtypes = {p.dtype for p in parts}
    if dtypes == {None} or None in dtypes:
        return None
    return "float" if "float" in dtypes else dtypes.pop() if len(dtypes) == 1 else None


# ---- Add, Mul --------------------------------------------------------------------------------------------

def broadcast(args: dict, inputs: dict[str, TensorType]) -> dict[str, TensorType]:
    """`Add`/`Mul` x, y, ... -> x: the inputs broadcast together (numpy rules: dims aligned from the
    right, each pair equal or one of them 1)."""
    parts = _variadic(inputs, "xs")
    if not parts:
        raise ShapeError("needs at least one input key")
    dtype = _dtype(parts)
    if any(_known(p) is None for p in parts):
        return {"x": TensorType(dtype, None, None)}
    rank = max(len(p.dims) for p in parts)
    out: list[Dim] = []
    for i in range(1, rank + 1):
        dims = [p.dims[-i] for p in parts if len(p.dims) >= i]
        ints = {d for d in dims if _is_int(d) and d != 1}
        if len(ints) > 1:
            raise ShapeError(f"the inputs do not broadcast: dim {rank - i} (from the right: {i}) is "
                             f"{' and '.join(map(str, sorted(ints)))} ({', '.join(_text(p.dims) for p in parts)})")
        others = {d for d in dims if d != 1}
        if ints:
            out.append(ints.pop())
        elif not others:
            out.append(1)
        elif len(others) == 1:
            out.append(others.pop())
        else:
            out.append("?")
    return {"x": TensorType(dtype, tuple(reversed(out)), None)}


# ---- Concat, Split ---------------------------------------------------------------------------------------

def concat_axis(args: dict, inputs: dict[str, TensorType]) -> dict[str, TensorType]:
    """`Concat(axis = 1)` a, b, ... -> x: every dim but `axis` agrees; `axis` is the sum."""
    parts = _variadic(inputs, "xs")
    axis = args.get("axis", 1)
    if not parts or not _is_int(axis) or any(_known(p) is None for p in parts):
        return {}
    rank = len(parts[0].dims)
    if any(len(p.dims) != rank for p in parts):
        raise ShapeError("Concat joins tensors of one rank; got " + ", ".join(_text(p.dims) for p in parts))
    ax = _axis(axis, rank)
    dims = list(parts[0].dims)
    for p in parts[1:]:
        for i, d in enumerate(p.dims):
            if i == ax:
                continue
            if _is_int(d) and _is_int(dims[i]) and d != dims[i]:
                raise ShapeError(f"Concat's inputs differ in dim {i}: {dims[i]} and {d} (only dim {ax}, the axis "
                                 f"joined, may differ)", arg="axis" if "axis" in args else None)
            if dims[i] == "?":
                dims[i] = d
    sizes = [p.dims[ax] for p in parts]
    if "?" in sizes:
        dims[ax] = "?"
    elif all(_is_int(s) for s in sizes):
        dims[ax] = sum(sizes)
    else:
        total = sum(s for s in sizes if _is_int(s))
        dims[ax] = " + ".join([_sym(s) for s in sizes if not _is_int(s)] + ([str(total)] if total else []))
    return {"x": TensorType(_dtype(parts), tuple(dims), None)}


SPLIT_MAX = 8  # Split's outputs x0 .. x7


def split(args: dict, inputs: dict[str, TensorType], writes: tuple[str, ...] = ()) -> dict[str, TensorType]:
    """`Split(sizes, axis)` x -> x0, x1, ...: `sizes` (one of them may be -1: the rest) cut dim `axis`.
    `writes`: the outputs the file binds, exactly one per part (an extra one would hold nothing, a
    missing one would drop a part silently)."""
    sizes, axis = args.get("sizes"), args.get("axis", -1)
    if not isinstance(sizes, list) or not all(_is_int(s) for s in sizes) or not _is_int(axis):
        return {}
    if not 2 <= len(sizes) <= SPLIT_MAX:
        raise ShapeError(f"Split makes 2 to {SPLIT_MAX} parts, not {len(sizes)}", arg="sizes")
    if sizes.count(-1) > 1 or any(s < -1 or s == 0 for s in sizes):
        raise ShapeError(f"sizes {sizes} must be positive, with at most one -1 (the rest)", arg="sizes")
    if writes:
        parts = [f"x{i}" for i in range(len(sizes))]
        if sorted(writes) != parts:
            raise ShapeError(f"sizes {sizes} cut {len(sizes)} parts, but {len(writes)} output"
                             f"{'s are' if len(writes) != 1 else ' is'} bound: bind one key per part "
                             f"({', '.join(parts)})", arg="sizes")
    x = inputs.get("x")
    dims = _known(x)
    if dims is None:
        return {}
    ax = _axis(axis, len(dims))
    n, given = dims[ax], sum(s for s in sizes if s != -1)
    if _is_int(n):
        if -1 in sizes and given >= n:
            raise ShapeError(f"sizes {sizes} leave nothing for -1: dim {ax} of x ({x}) is {n}", arg="sizes")
        if -1 not in sizes and given != n:
            raise ShapeError(f"sizes {sizes} add up to {given}, but dim {ax} of x ({x}) is {n}", arg="sizes")
    rest: Dim = n - given if _is_int(n) else ("?" if n == "?" else f"{_sym(n)} - {given}")
    out = {}
    for i, s in enumerate(sizes):
        d = list(dims)
        d[ax] = rest if s == -1 else s
        out[f"x{i}"] = TensorType(x.dtype, tuple(d), x.bound)
    return out


split.reads_writes = True  # the engine passes the output ports the file binds


# ---- Reshape, Transpose, Flatten -------------------------------------------------------------------------

def parse_pattern(pattern: str) -> tuple[list, list]:
    """`"B (H W) C -> B C H W"` -> ([["B"], ["H", "W"], ["C"]], [["B"], ["C"], ["H"], ["W"]]): each side a list
    of groups of axis names (a bare name is a group of one; "..." stands alone). Raises ValueError."""
    if not isinstance(pattern, str) or pattern.count("->") != 1:
        raise ValueError(f"pattern {pattern!r} must read 'input axes -> output axes'")
    sides = []
    for text in pattern.split("->"):
        groups, current = [], None
        for tok in text.replace("(", " ( ").replace(")", " ) ").split():
            if tok == "(":
                if current is not None:
                    raise ValueError(f"pattern {pattern!r}: groups do not nest")
                current = []
            elif tok == ")":
                if current is None:
                    raise ValueError(f"pattern {pattern!r}: ')' without '('")
                groups.append(current)
                current = None
            elif tok == "..." or tok.isidentifier():
                if tok == "..." and current is not None:
                    raise ValueError(f"pattern {pattern!r}: '...' cannot stand in a group")
                (current if current is not None else groups).append(tok if current is not None else [tok])
            else:
                raise ValueError(f"pattern {pattern!r}: {tok!r} is not an axis name")
        if current is not None:
            raise ValueError(f"pattern {pattern!r}: '(' without ')'")
        sides.append(groups)
    left, right = sides
    names_l = [n for g in left for n in g]
    names_r = [n for g in right for n in g]
    for side, names in (("input", names_l), ("output", names_r)):
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"pattern {pattern!r}: {', '.join(dup)} appears twice on the {side} side")
    if set(names_l) != set(names_r):
        missing = sorted(set(names_l) ^ set(names_r))
        raise ValueError(f"pattern {pattern!r}: {', '.join(missing)} must appear on both sides "
                         "(Reshape moves axes, it never adds or drops one)")
    return left, right


def reshape(args: dict, inputs: dict[str, TensorType]) -> dict[str, TensorType]:
    """`Reshape(pattern, **sizes)`: the axes of the input side bound to x's dims (a group's unknown axis is the
    dim divided by the others' sizes), written out in the output side's order and grouping."""
    pattern = args.get("pattern")
    if not isinstance(pattern, str):
        return {}
    try:
        left, right = parse_pattern(pattern)
    except ValueError as e:
        raise ShapeError(str(e), arg="pattern") from None
    given = {k: v for k, v in args.items() if k != "pattern" and _is_int(v)}
    names = {n for g in left for n in g}
    for k in args:
        if k != "pattern" and k not in names:
            raise ShapeError(f"size {k} = {args[k]} names no axis of the pattern {pattern!r}", arg=k)
    for g in left:
        unknown = [n for n in g if n not in given and n != "..."]
        if len(g) > 1 and len(unknown) > 1:
            raise ShapeError(f"group ({' '.join(g)}) of {pattern!r} has {len(unknown)} axes of unknown size; "
                             f"give all but one, e.g. {unknown[0]} = ...", arg="pattern")
    x = inputs.get("x")
    dims = _known(x)
    if dims is None:
        return {}
    ell = ["..."] in left
    if (not ell and len(dims) != len(left)) or (ell and len(dims) < len(left) - 1):
        raise ShapeError(f"the pattern's input side has {len(left) - ell}{'+' if ell else ''} axes, but x is {x} "
                         f"({len(dims)} dims)", arg="pattern")
    env: dict[str, Dim] = {}
    captured: tuple[Dim, ...] = ()
    i = 0
    for g in left:
        if g == ["..."]:
            k = len(dims) - (len(left) - 1)
            captured, i = tuple(dims[i:i + k]), i + k
            continue
        d = dims[i]
        i += 1
        if len(g) == 1:
            name = g[0]
            if name in given and _is_int(d) and given[name] != d:
                raise ShapeError(f"{name} = {given[name]}, but x's dim {i - 1} is {d}", arg=name)
            env[name] = given.get(name, d)
            continue
        known = [given[n] for n in g if n in given]
        part = prod(known)
        rest = [n for n in g if n not in given]
        if _is_int(d) and (d % part if rest else d != part):
            raise ShapeError(f"x's dim {i - 1} is {d}, which does not split into ({' '.join(g)}) with "
                             + ", ".join(f"{n} = {given[n]}" for n in g if n in given), arg=next(n for n in g if n in given))
        for n in g:
            if n in given:
                env[n] = given[n]
            elif _is_int(d):
                env[n] = d // part
            else:
                env[n] = "?" if d == "?" else f"{_sym(d)} // {part}"
    out: list[Dim] = []
    for g in right:
        if g == ["..."]:
            out.extend(captured)
        else:
            out.append(_product([env[n] for n in g]))
    return {"x": TensorType(x.dtype, tuple(out), x.bound)}


def transpose(args: dict, inputs: dict[str, TensorType]) -> dict[str, TensorType]:
    """`Transpose(dim0, dim1)`: the two dims swapped."""
    a, b = args.get("dim0"), args.get("dim1")
    dims = _known(inputs.get("x"))
    if dims is None or not _is_int(a) or not _is_int(b):
        return {}
    i, j = _axis(a, len(dims), "dim0"), _axis(b, len(dims), "dim1")
    d = list(dims)
    d[i], d[j] = d[j], d[i]
    x = inputs["x"]
    return {"x": TensorType(x.dtype, tuple(d), x.bound)}


def permute(args: dict, inputs: dict[str, TensorType]) -> dict[str, TensorType]:
    """`Permute(dims)`: output dim i is input dim dims[i]; dims is a permutation of the input's dims."""
    order = args.get("dims")
    if not isinstance(order, list) or not all(_is_int(d) for d in order):
        return {}
    dims = _known(inputs.get("x"))
    if dims is None:
        return {}
    rank = len(dims)
    if len(order) != rank or sorted(d % rank for d in order if -rank <= d < rank) != list(range(rank)):
        raise ShapeError(f"dims {order} is not a permutation of the {rank} dims of x ({inputs['x']})", arg="dims")
    x = inputs["x"]
    return {"x": TensorType(x.dtype, tuple(dims[d] for d in order), x.bound)}


def flatten(args: dict, inputs: dict[str, TensorType]) -> dict[str, TensorType]:
    """`Flatten(start, end)`: dims start..end (inclusive) become their product."""
    a, b = args.get("start", 1), args.get("end", -1)
    dims = _known(inputs.get("x"))
    if dims is None or not _is_int(a) or not _is_int(b):
        return {}
    i, j = _axis(a, len(dims), "start"), _axis(b, len(dims), "end")
    if j < i:
        raise ShapeError(f"end ({b}, dim {j}) comes before start ({a}, dim {i})", arg="end")
    x = inputs["x"]
    return {"x": TensorType(x.dtype, tuple(dims[:i]) + (_product(list(dims[i:j + 1])),) + tuple(dims[j + 1:]),
                            x.bound)}


# ---- KeepVisible, InsertMaskTokens -----------------------------------------------------------------------

def _tokens_and_mask(who: str, args: dict, inputs: dict[str, TensorType]):
    offset = args.get("offset", 0)
    offset = offset if _is_int(offset) and offset >= 0 else None
    mask, x = inputs.get("mask"), inputs.get("x")
    if mask is not None and mask.dtype not in (None, "bool"):
        raise ShapeError(f"{who} reads mask as bool [B, N] (True = masked, as RandomMask writes it), "
                         f"but it holds {mask.dtype}")
    md = _known(mask)
    if md is not None and len(md) != 2:
        raise ShapeError(f"mask must be [B, N] (2 dims), but it is {mask}")
    xd = _known(x)
    if xd is not None and len(xd) < 2:
        raise ShapeError(f"x must be [B, N, ...] (at least 2 dims), but it is {x}")
    return offset, md, xd


def _plus(offset: int, n: Dim) -> Dim:
    if _is_int(n):
        return offset + n
    return n if offset == 0 or n == "?" else f"{offset} + {_sym(n)}"


def random_mask(args: dict, inputs: dict[str, TensorType]) -> dict[str, TensorType]:
    """`RandomMask(num_tokens, ratio)` x [B, ...] -> mask bool[B, N], visible long[B, N - round(ratio * N)] < N."""
    n, ratio = args.get("num_tokens"), args.get("ratio", 0.75)
    x = inputs.get("x")
    b = x.dims[0] if x is not None and x.dims and x.dims[0] != "..." else "B"
    if not _is_int(n):
        return {"mask": TensorType("bool", (b, "?")), "visible": TensorType("long", (b, "?"))}
    v = n - int(round(ratio * n)) if isinstance(ratio, (int, float)) and not isinstance(ratio, bool) else "?"
    return {"mask": TensorType("bool", (b, n)), "visible": TensorType("long", (b, v), n)}


def keep_visible(args: dict, inputs: dict[str, TensorType]) -> dict[str, TensorType]:
    """`KeepVisible(offset)` x [B, offset + N, ...] with visible long[B, V] < N or mask bool[B, N] ->
    x [B, offset + V, ...]."""
    if inputs.get("visible") is None and inputs.get("mask") is None:
        raise ShapeError("KeepVisible reads `visible` (RandomMask's indices of the visible tokens) or `mask`: bind one")
    offset, md, xd = _tokens_and_mask("KeepVisible", args, inputs)
    vis = inputs.get("visible")
    if vis is not None and vis.dtype in ("float", "bool"):
        raise ShapeError(f"visible holds the indices of the visible tokens (long [B, V], RandomMask's second "
                         f"output), but it holds {vis.dtype}")
    vd = _known(vis)
    if vd is not None and len(vd) != 2:
        raise ShapeError(f"visible must be [B, V] (2 dims), but it is {vis}")
    if xd is None:
        return {}
    if vis is not None and _is_int(vis.bound) and offset is not None and _is_int(xd[1]) and \
            vis.bound > xd[1] - offset:
        raise ShapeError(f"visible indexes {vis.bound} tokens, but x ({inputs['x']}) has {xd[1] - offset}"
                         + (f" after offset {offset}" if offset else "")
                         + "; give RandomMask num_tokens = the number of tokens", arg="offset" if offset else None)
    if md is not None and offset is not None and _is_int(md[1]) and _is_int(xd[1]) and xd[1] != offset + md[1]:
        raise ShapeError(f"the mask covers {md[1]} tokens, but x ({inputs['x']}) has {xd[1]}"
                         + (f" (after offset {offset}: {xd[1] - offset})" if offset else "")
                         + "; give RandomMask num_tokens = the number of tokens" + (", or set offset" if offset == 0
                                                                                       else ""),
                         arg="offset" if offset and "offset" in args else None)
    if md is not None and _is_int(md[0]) and _is_int(xd[0]) and md[0] != xd[0]:
        raise ShapeError(f"mask has batch {md[0]} but x ({inputs['x']}) {xd[0]}")
    v = vd[1] if vd is not None else "V"
    n = "?" if offset is None else _plus(offset, v)
    return {"x": TensorType(inputs["x"].dtype, (xd[0], n) + tuple(xd[2:]), inputs["x"].bound)}


def insert_mask_tokens(args: dict, inputs: dict[str, TensorType]) -> dict[str, TensorType]:
    """`InsertMaskTokens(dim, offset)` x [B, offset + V, dim], mask bool[B, N] -> x [B, offset + N, dim]."""
    offset, md, xd = _tokens_and_mask("InsertMaskTokens", args, inputs)
    dim = args.get("dim")
    if xd is not None:
        if len(xd) != 3:
            raise ShapeError(f"x must be [B, V, dim] (3 dims), but it is {inputs['x']}")
        if _is_int(dim) and _is_int(xd[2]) and xd[2] != dim:
            raise ShapeError(f"x is {inputs['x']}, but dim = {dim} (its last dim must be {dim})", arg="dim")
        if md is not None and _is_int(md[1]) and _is_int(xd[1]) and offset is not None and xd[1] - offset > md[1]:
            raise ShapeError(f"x ({inputs['x']}) has more tokens than the mask covers ({md[1]})")
    b = md[0] if md is not None else xd[0] if xd is not None else "?"
    n = md[1] if md is not None else "?"
    return {"x": TensorType("float", (b, "?" if offset is None else _plus(offset, n), dim if _is_int(dim) else "?"))}
