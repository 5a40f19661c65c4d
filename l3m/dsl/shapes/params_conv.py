"""Static parameter names and shapes of the convolutional blocks (torch-free; see params.py).

Each rule takes the block's arguments (defaults filled in) and returns `[(relative name, shape)]`
in `named_parameters()` order; a TypeError/KeyError/ValueError means "not known statically".
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

Params = list[tuple[str, tuple[int, ...]]]


def _int(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise ValueError(v)
    return v


def _pair(v: Any) -> tuple[int, int]:
    if isinstance(v, (list, tuple)) and len(v) == 2:
        return _int(v[0]), _int(v[1])
    return _int(v), _int(v)


def _conv2d(a: Mapping[str, Any]) -> Params:
    cin, cout, groups = _int(a["in_channels"]), _int(a["out_channels"]), _int(a.get("groups", 1))
    if groups == 0 or cin % groups:
        raise ValueError(groups)
    kh, kw = _pair(a.get("kernel", 3))
    out: Params = [("weight", (cout, cin // groups, kh, kw))]
    return out + ([("bias", (cout,))] if a.get("bias", True) else [])


def _affine(a: Mapping[str, Any]) -> Params:
    c = _int(a["channels"])
    return [("weight", (c,)), ("bias", (c,))] if a.get("affine", True) else []


def _none(a: Mapping[str, Any]) -> Params:
    return []


CONV_PARAMS: dict[str, Callable[[Mapping[str, Any]], Params]] = {
    "Conv2d": _conv2d,
    "BatchNorm": _affine,
    "GroupNorm": _affine,
    "MaxPool2d": _none,
    "AvgPool2d": _none,
    "GlobalAvgPool": _none,
}
