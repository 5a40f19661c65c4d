"""Weight initialisation for models built on the meta device.

A model is built under `torch.device("meta")`, materialised with `to_empty`, and only then
initialised here. Every module that owns parameters or buffers directly defines
`init_weights()`, which fills those tensors (never its children's): `init_model` walks the
tree and calls each one, so sharded and unsharded models are initialised by the same code.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from torch import nn

InitStyle = Literal["xavier_uniform", "trunc_normal", "normal", "fan_in_depth", "fan_in_depth_scaled", "pytorch"]
INIT_STYLES: tuple[str, ...] = ("xavier_uniform", "trunc_normal", "normal", "fan_in_depth", "fan_in_depth_scaled",
                                "pytorch")
# The std of a standard normal truncated to [-2, 2] (timm's `variance_scaling_` divides by it).
_TRUNC2_STD = 0.87962566103423978


def check_style(init: str) -> str:
    if init not in INIT_STYLES:
        raise ValueError(f"unknown init style {init!r}; expected one of {', '.join(INIT_STYLES)}")
    return init


def init_weight_(weight: torch.Tensor, init: str, std: float = 0.02, fan_in: int | None = None, depth: int = 0) -> None:
    """Fill a weight matrix (`[out, in]`, or a stack of them) in the given style.

    `depth > 0` marks the output projection of a residual branch in a `depth`-layer network;
    with "fan_in_depth" its std is further scaled by 1/sqrt(2*depth) so that the residual
    stream's variance stays flat with depth.

    "fan_in_depth_scaled" is ml-l3m's head init (timm's `variance_scaling_`, truncated normal):
    variance 1 / ((1 + depth) * fan_in), cut at 2 of the untruncated stds. Here `depth` is the
    network's depth, and a Transformer with this style gives it to EVERY linear (q/k/v, proj,
    w1/w3/w2), as ml-l3m's `weight_init_style: fan_in_depth_scaled` trunk does. "pytorch" is
    `nn.Linear`'s own default, U(+-1/sqrt(fan_in)) (kaiming-uniform with a = sqrt(5)).
    """
    check_style(init)
    with torch.no_grad():
        if init == "xavier_uniform":
            if weight.dim() > 2:  # a stack of matrices (experts): each is one layer
                for w in weight.unbind(0):
                    nn.init.xavier_uniform_(w)
            else:
                nn.init.xavier_uniform_(weight)
        elif init == "trunc_normal":
            nn.init.trunc_normal_(weight, std=std, a=-2 * std, b=2 * std)
        elif init == "normal":
            nn.init.normal_(weight, std=std)
        elif init in ("fan_in_depth_scaled", "pytorch"):
            fan_in = fan_in if fan_in is not None else weight.shape[-1]
            if init == "pytorch":
                bound = 1.0 / math.sqrt(fan_in)
                nn.init.uniform_(weight, -bound, bound)
            else:
                s = math.sqrt(1.0 / ((1 + depth) * fan_in)) / _TRUNC2_STD
                nn.init.trunc_normal_(weight, std=s, a=-2 * s, b=2 * s)
        else:  # fan_in_depth
            fan_in = fan_in if fan_in is not None else weight.shape[-1]
            s = 1.0 / math.sqrt(fan_in)
            if depth > 0:
                s /= math.sqrt(2 * depth)
            nn.init.trunc_normal_(weight, std=s, a=-3 * s, b=3 * s)


def init_linear_(linear: nn.Linear, init: str, std: float = 0.02, depth: int = 0) -> None:
    """A linear layer's weight in the given style and its bias at zero ("pytorch": both as
    `nn.Linear.reset_parameters`, the bias U(+-1/sqrt(fan_in)))."""
    init_weight_(linear.weight, init, std=std, fan_in=linear.in_features, depth=depth)
    if linear.bias is not None:
        with torch.no_grad():
            if init == "pytorch":
                bound = 1.0 / math.sqrt(linear.in_features) if linear.in_features > 0 else 0.0
                linear.bias.uniform_(-bound, bound)
            else:
                linear.bias.zero_()


def init_model(model: nn.Module) -> nn.Module:
    """Call `init_weights()` on every submodule that defines it, parents first.

    Torch's own layers used inside extension blocks (nn.Linear, nn.LayerNorm, ...) have no
    `init_weights`; for those the module's `reset_parameters()` is used instead.
    """
    with torch.no_grad():
        for module in model.modules():
            fn = _own_method(module, "init_weights") or _own_method(module, "reset_parameters")
            if fn is not None:
                fn()
    return model


def _own_method(module: nn.Module, name: str) -> Any:
    """`module.name` when the module itself has it (its class, or this instance as `l3m.dist.init` sets
    it), not when a wrapper forwards the lookup to the module it wraps (activation checkpointing's,
    torch.compile's): that module is visited on its own, and initialising it twice would draw its
    weights twice and shift every later draw."""
    fn = module.__dict__.get(name)
    if fn is None and callable(getattr(type(module), name, None)):
        fn = getattr(module, name)
    return fn if callable(fn) else None


def check_initialised(model: nn.Module) -> nn.Module:
    """Prove that `init_model` fills every floating parameter and buffer of `model`.

    Everything is first set to NaN; a tensor still NaN afterwards belongs to a module whose
    `init_weights` forgot it. Raises RuntimeError naming each such tensor.
    """
    tensors = [(n, t) for n, t in model.named_parameters()] + [(n, t) for n, t in model.named_buffers()]
    with torch.no_grad():
        for _, t in tensors:
            if t.is_floating_point() or t.is_complex():
                t.fill_(float("nan"))
    init_model(model)
    # A sharded (DTensor) tensor is checked by its local part on each rank, without gathering it.
    left = [n for n, t in tensors
            if (t.is_floating_point() or t.is_complex()) and bool(torch.isnan(getattr(t, "_local_tensor", t)).any())]
    if left:
        raise RuntimeError(
            f"{len(left)} tensor(s) were not initialised by init_weights(): {', '.join(_owner(model, n) for n in left)}; "
            "every module that owns parameters or buffers defines init_weights() filling its own tensors "
            "(docs/blocks.md)"
        )
    return model


def _owner(model: nn.Module, name: str) -> str:
    """`name (Type has no init_weights())`: the tensor and the class that should have written it."""
    path, _, _ = name.rpartition(".")
    try:
        owner = model.get_submodule(path) if path else model
    except AttributeError:
        return name
    cls = type(owner).__name__
    has = callable(getattr(owner, "init_weights", None)) or callable(getattr(owner, "reset_parameters", None))
    return f"{name} ({cls}{'.init_weights() does not fill it' if has else ' has no init_weights()'})"
