"""Shape rules of the convolutional blocks (Conv2d, MaxPool2d, AvgPool2d); torch-free.

An output size is `(H + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1`: computed when H is
a number (a window that does not fit is an error naming the argument), written out as an expression
when H is a symbol, unknown when H is unknown. `rules.py` imports these, so `shapes = "@conv2d"` finds them.
"""

from __future__ import annotations

from typing import Any

from l3m.dsl.shapes.spec import ShapeError, TensorType

_AXES = ("H", "W")


def _pair(v: Any) -> tuple[int, int] | None:
    if isinstance(v, int) and not isinstance(v, bool):
        return v, v
    if isinstance(v, (list, tuple)) and len(v) == 2 and all(isinstance(i, int) and not isinstance(i, bool) for i in v):
        return int(v[0]), int(v[1])
    return None


def _out_size(size: int | str, k: int, s: int, p: int, d: int, axis: str, what: str) -> int | str:
    """One spatial output size; `what` names the block for messages."""
    span = d * (k - 1) + 1
    if isinstance(size, int):
        if size + 2 * p < span:
            padded = f"{size} + 2 x {p} padding" if p else f"{size}"
            raise ShapeError(f"{what}'s {'dilated ' if d > 1 else ''}window of {span} does not fit in {axis} = "
                             f"{padded}; a smaller kernel, more padding, or a larger input", arg="kernel")
        return (size + 2 * p - span) // s + 1
    if size == "?":
        return "?"
    base = size if size.isidentifier() else f"({size})"
    off = 2 * p - span + 1  # what H' - H is when the stride is 1
    if s == 1:
        return base if off == 0 else f"{base} + {off}" if off > 0 else f"{base} - {-off}"
    inner = base if off - 1 == 0 else f"{base} + {off - 1}" if off - 1 > 0 else f"{base} - {1 - off}"
    return f"({inner}) // {s} + 1"


def _image(x: TensorType | None, what: str) -> tuple[int | str, ...] | None:
    """The dims of an image `[B, C, H, W]`, None when not known; an error for another rank or ids."""
    if x is None:
        return None
    if x.dtype in ("long", "int", "bool"):
        raise ShapeError(f"{what} needs float images, but x holds {x.dtype} values")
    if x.dims is None or "..." in x.dims:
        return None
    if len(x.dims) != 4:
        raise ShapeError(f"{what} needs images [B, C, H, W] (4 dims), but x is {x}")
    return x.dims


def _spatial(dims: tuple, kernel: Any, stride: Any, padding: Any, dilation: Any, what: str) -> tuple | None:
    k, s, d = _pair(kernel), _pair(stride), _pair(dilation)
    if k is None or s is None or d is None:
        return None
    if padding == "valid":
        p: tuple[int, int] | None = (0, 0)
    elif padding == "same":
        return tuple(dims[2:])  # stride 1 (a check says so): the size is kept
    else:
        p = _pair(padding)
    if p is None:
        return None
    return tuple(_out_size(dims[2 + i], k[i], s[i], p[i], d[i], _AXES[i], what) for i in range(2))


def conv2d(args: dict, inputs: dict[str, TensorType]) -> dict[str, TensorType]:
    """`Conv2d`: x float[B, in_channels, H, W] -> x float[B, out_channels, H', W']."""
    cin, cout = args.get("in_channels"), args.get("out_channels")
    cout = cout if isinstance(cout, int) and not isinstance(cout, bool) else "?"
    dims = _image(inputs.get("x"), "Conv2d")
    if dims is None:
        return {"x": TensorType("float", ("?", cout, "?", "?"))}
    c = dims[1]
    if isinstance(c, int) and isinstance(cin, int) and c != cin:
        raise ShapeError(f"x is {inputs['x']}: {c} channels, but in_channels = {cin}", arg="in_channels")
    hw = _spatial(dims, args.get("kernel", 3), args.get("stride", 1), args.get("padding", 0),
                  args.get("dilation", 1), "Conv2d") or ("?", "?")
    return {"x": TensorType("float", (dims[0], cout, *hw))}


def pool2d(args: dict, inputs: dict[str, TensorType]) -> dict[str, TensorType]:
    """`MaxPool2d` / `AvgPool2d`: x [B, C, H, W] -> [B, C, H', W'] (stride defaults to the window)."""
    kernel, padding = args.get("kernel", 2), args.get("padding", 0)
    stride = args.get("stride") if args.get("stride") is not None else kernel
    k, p = _pair(kernel), _pair(padding)
    if k is not None and p is not None and any(pi > ki // 2 for pi, ki in zip(p, k)):
        raise ShapeError(f"padding {padding} must be at most half the window {kernel}", arg="padding")
    x = inputs.get("x")
    dims = _image(x, "the pooling")
    if dims is None:
        return {}
    hw = _spatial(dims, kernel, stride, padding, 1, "the pooling") or ("?", "?")
    return {"x": TensorType(x.dtype, (dims[0], dims[1], *hw))}
