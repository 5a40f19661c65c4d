"""Static parameter names and shapes of the general tensor blocks (torch-free; see params.py).

Only the token blocks own parameters; the elementwise and reshaping ones have none. A
TypeError/KeyError/ValueError from a rule means "not known statically".
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

Params = list[tuple[str, tuple[int, ...]]]


def _int(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise ValueError(v)
    return v


def _none(a: Mapping[str, Any]) -> Params:
    return []


TENSOR_PARAMS: dict[str, Callable[[Mapping[str, Any]], Params]] = {
    "Latents": lambda a: [("latents", (_int(a["num"]), _int(a["dim"])))],
    "InsertMaskTokens": lambda a: [("mask_token", (1, 1, _int(a["dim"])))],
    **{name: _none for name in ("Add", "Mul", "Activation", "Reshape", "Transpose", "Permute", "Flatten", "Split",
                                "KeepVisible")},
}
