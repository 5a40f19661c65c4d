"""Optimizers a `.l3m` file can name, with parameter groups declared by name globs.

Each entry is a factory `Name(named_params, **args)`: the trainer passes the model's
`named_parameters()` (the first parameter, never written in a file) and the file gives the rest.
Groups come from four declared rules, applied to every trainable parameter (frozen ones,
`requires_grad = False`, are left out):

- `no_decay`: fnmatch globs of names that get no weight decay; 1-D parameters (biases, norm
  scales) get none either unless `decay_1d = true`;
- `stage_lr`: `"glob=scale"` rules multiplying the learning rate of matching parameters (the last
  matching rule wins), e.g. `["preprocessor.*=0.1", "head.*=10"]`;
- `layer_decay`: layer-wise learning-rate decay over `...layers.<i>....` names: parameters of
  layer i get `layer_decay ** (L - i)` for L layers, `preprocessor` parameters
  `layer_decay ** (L + 1)`, everything else 1;
- wrapper segments that compilation, FSDP and checkpointing insert in names (`_orig_mod.`,
  `_checkpoint_wrapped_module.`) are ignored when matching.

Every group carries `param_names` (torch's own convention), its `lr_scale` and `weight_decay`.
"""

from __future__ import annotations

import fnmatch
import math
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch

from l3m.registry import register

NamedParams = Iterable[tuple[str, torch.nn.Parameter]]
_WRAPPER_SEGMENT = re.compile(r"(?:_orig_mod|_checkpoint_wrapped_module|_fsdp_wrapped_module)\.")
_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def clean_name(name: str) -> str:
    """A parameter's name as the model file spells it (wrapper segments removed)."""
    return _WRAPPER_SEGMENT.sub("", name)


def parse_stage_lr(rules: Sequence[str]) -> list[tuple[str, float]]:
    out = []
    for rule in rules:
        glob, sep, scale = rule.rpartition("=")
        try:
            value = float(scale)
        except ValueError:
            value = None
        if not sep or not glob or value is None or value < 0:
            raise ValueError(f"stage_lr rule {rule!r} is not 'glob=scale' with a non-negative scale")
        out.append((glob.strip(), value))
    return out


def layer_scales(names: Sequence[str], layer_decay: float) -> dict[str, float]:
    """Learning-rate multiplier of each (clean) name under layer-wise decay."""
    if layer_decay == 1.0:
        return {n: 1.0 for n in names}
    ids = {n: int(m.group(1)) for n in names if (m := _LAYER.search(n))}
    num_layers = max(ids.values(), default=-1) + 1
    out = {}
    for n in names:
        if n in ids:
            layer_id = ids[n] + 1
        elif "preprocessor" in n.split("."):
            layer_id = 0
        else:
            layer_id = num_layers + 1
        out[n] = layer_decay ** (num_layers + 1 - layer_id)
    return out


def param_groups(
    named_params: NamedParams,
    *,
    lr: float,
    weight_decay: float,
    no_decay: Sequence[str] = (),
    decay_1d: bool = False,
    stage_lr: Sequence[str] = (),
    layer_decay: float = 1.0,
    extra: Callable[[str, torch.Tensor], dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """Torch parameter groups from the declared rules (see the module docstring).

    Parameters with equal settings share a group; groups keep the parameters' order. `extra`
    adds per-parameter group settings (LARS marks which parameters it adapts).
    """
    if layer_decay <= 0:
        raise ValueError(f"layer_decay must be positive, got {layer_decay}")
    seen: set[int] = set()
    params: list[tuple[str, str, torch.Tensor]] = []
    for name, p in named_params:
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        params.append((name, clean_name(name), p))
    if not params:
        raise ValueError("the model has no trainable parameters (all are frozen)")
    rules = parse_stage_lr(stage_lr)
    depth = layer_scales([c for _, c, _ in params], layer_decay)
    groups: dict[tuple, dict[str, Any]] = {}
    for name, clean, p in params:
        excluded = any(fnmatch.fnmatchcase(clean, g) for g in no_decay) or (not decay_1d and p.ndim <= 1)
        wd = 0.0 if excluded else weight_decay
        stage_scale = 1.0
        for glob, s in rules:
            if fnmatch.fnmatchcase(clean, glob):
                stage_scale = s
        scale = depth[clean] * stage_scale
        more = extra(clean, p) if extra else {}
        key = (wd, scale, *sorted(more.items()))
        if key not in groups:
            groups[key] = {
                "params": [],
                "param_names": [],
                "lr": lr * scale,
                "lr_scale": scale,
                "weight_decay": wd,
            }
            groups[key].update(more)
        groups[key]["params"].append(p)
        groups[key]["param_names"].append(name)
    return list(groups.values())


def _adam_groups(named_params: NamedParams, lr: float, betas: Sequence[float], weight_decay: float,
                 no_decay: Sequence[str], decay_1d: bool, stage_lr: Sequence[str],
                 layer_decay: float) -> tuple[list[dict], tuple[float, float]]:
    """The parameter groups and the (beta1, beta2) pair that every Adam variant here starts from."""
    if len(betas) != 2:
        raise ValueError(f"betas must hold two numbers, got {list(betas)}")
    groups = param_groups(named_params, lr=lr, weight_decay=weight_decay, no_decay=no_decay, decay_1d=decay_1d,
                          stage_lr=stage_lr, layer_decay=layer_decay)
    return groups, (float(betas[0]), float(betas[1]))


@register("optimizer")
def AdamW(
    named_params: NamedParams,
    lr: float = 1e-3,
    betas: list[float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    no_decay: list[str] = (),
    decay_1d: bool = False,
    stage_lr: list[str] = (),
    layer_decay: float = 1.0,
    fused: bool | None = None,
    foreach: bool | None = None,
) -> torch.optim.AdamW:
    """AdamW (decoupled weight decay). `fused` uses the fused kernel (default: wherever torch has it for
    the parameters, CPU and GPUs, FSDP2's DTensors included; `false` never); otherwise `foreach` the
    multi-tensor one (None: torch's default for the device, a loop over tensors on the CPU)."""
    groups, pair = _adam_groups(named_params, lr, betas, weight_decay, no_decay, decay_1d, stage_lr, layer_decay)
    if fused is None:
        fused = foreach is None and fused_kernel_fits([p for g in groups for p in g["params"]])
    return torch.optim.AdamW(
        groups,
        lr=lr,
        betas=pair,
        eps=eps,
        weight_decay=weight_decay,
        fused=fused or None,
        foreach=None if fused else foreach,
    )


def fused_kernel_fits(params: Sequence[torch.Tensor]) -> bool:
    """Whether torch's fused Adam kernels take these parameters: floating point, on a device that has
    them, and all plain tensors or all DTensors of one mesh (one kernel call takes a group's tensors
    together: tensor parallelism leaves some parameters plain, and FSDP2 x TP spreads them over two
    meshes). On the CPU a fused step costs a third of the per-tensor loop, a fifth of foreach's."""
    try:
        from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

        devices = set(_get_fused_kernels_supported_devices())
    except ImportError:  # an older torch: the devices it had fused kernels for
        devices = {"cuda"}
    meshes = {id(getattr(p, "device_mesh", None)) for p in params}
    return len(meshes) == 1 and all(p.is_floating_point() and p.device.type in devices for p in params)


@register("optimizer")
def SGD(
    named_params: NamedParams,
    lr: float = 0.1,
    momentum: float = 0.9,
    nesterov: bool = False,
    weight_decay: float = 0.0,
    no_decay: list[str] = (),
    decay_1d: bool = False,
    stage_lr: list[str] = (),
    layer_decay: float = 1.0,
    foreach: bool | None = None,
) -> torch.optim.SGD:
    """SGD with (optionally Nesterov) momentum and L2 weight decay."""
    groups = param_groups(
        named_params,
        lr=lr,
        weight_decay=weight_decay,
        no_decay=no_decay,
        decay_1d=decay_1d,
        stage_lr=stage_lr,
        layer_decay=layer_decay,
    )
    return torch.optim.SGD(
        groups, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay, foreach=foreach
    )


class LARSOptimizer(torch.optim.Optimizer):
    """SGD with momentum and layer-wise adaptive rate scaling (You et al., 2017).

    For an adapted parameter the step direction `g = grad + weight_decay * w` is rescaled by the
    trust ratio `trust_coefficient * |w| / (|g| + eps)` (1 when either norm is 0) before momentum.
    Groups with `adapt = False` (1-D parameters: biases, norm scales) take plain SGD steps.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 0.1,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        trust_coefficient: float = 0.001,
        eps: float = 1e-8,
        adapt: bool = True,
    ) -> None:
        if lr < 0 or momentum < 0 or weight_decay < 0 or trust_coefficient <= 0:
            raise ValueError("LARS needs lr, momentum, weight_decay >= 0 and trust_coefficient > 0")
        defaults = dict(
            lr=lr,
            momentum=momentum,
            weight_decay=weight_decay,
            trust_coefficient=trust_coefficient,
            eps=eps,
            adapt=adapt,
        )
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                d = p.grad
                if group["weight_decay"]:
                    d = d.add(p, alpha=group["weight_decay"])
                if group["adapt"]:
                    w_norm = torch.linalg.vector_norm(p)
                    d_norm = torch.linalg.vector_norm(d)
                    trust = group["trust_coefficient"] * w_norm / (d_norm + group["eps"])
                    d = d * torch.where((w_norm > 0) & (d_norm > 0), trust, torch.ones_like(trust))
                if group["momentum"]:
                    state = self.state[p]
                    buf = state.get("momentum_buffer")
                    if buf is None:
                        buf = state["momentum_buffer"] = d.detach().clone()
                    else:
                        buf.mul_(group["momentum"]).add_(d)
                    d = buf
                p.add_(d, alpha=-group["lr"])
        return loss


@register("optimizer")
def LARS(
    named_params: NamedParams,
    lr: float = 0.1,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    trust_coefficient: float = 0.001,
    eps: float = 1e-8,
    no_decay: list[str] = (),
    decay_1d: bool = False,
    stage_lr: list[str] = (),
    layer_decay: float = 1.0,
) -> LARSOptimizer:
    """LARS for large-batch training; 1-D parameters are neither adapted nor (by default) decayed."""
    groups = param_groups(
        named_params,
        lr=lr,
        weight_decay=weight_decay,
        no_decay=no_decay,
        decay_1d=decay_1d,
        stage_lr=stage_lr,
        layer_decay=layer_decay,
        extra=lambda name, p: {"adapt": p.ndim > 1},
    )
    return LARSOptimizer(
        groups,
        lr=lr,
        momentum=momentum,
        weight_decay=weight_decay,
        trust_coefficient=trust_coefficient,
        eps=eps,
    )


class AdamLHOptimizer(torch.optim.Optimizer):
    """Adam with weight decay tied to the schedule rather than to the learning rate.

    torch's AdamW shrinks a parameter by `lr_t * weight_decay` per step, so the decay strength
    depends on the peak learning rate. Here the shrink is `weight_decay * lr_t / peak_lr`
    (Loshchilov and Hutter's "fully decoupled" form): `weight_decay` is a per-step fraction at
    the peak, and it follows the schedule's shape. Per step, for each parameter with a gradient:

        w <- w * (1 - weight_decay * lr_t / peak_lr)
        m <- b1 m + (1 - b1) g;   v <- b2 v + (1 - b2) g^2
        w <- w - lr_t / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)

    `peak_lr` is the optimizer-wide learning rate given at construction (the schedule's peak);
    groups with a learning-rate scale therefore also decay proportionally faster or slower.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ) -> None:
        if lr <= 0 or eps < 0 or weight_decay < 0:
            raise ValueError("AdamLH needs lr > 0, eps >= 0 and weight_decay >= 0")
        if not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"betas must lie in [0, 1), got {list(betas)}")
        self.peak_lr = lr
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr = float(group["lr"])
            beta1, beta2 = group["betas"]
            shrink = 1.0 - group["weight_decay"] * lr / self.peak_lr
            for p in group["params"]:
                if p.grad is None:
                    continue
                if shrink != 1.0:
                    p.mul_(shrink)
                g = p.grad
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                t = float(state["step"])
                m, v = state["exp_avg"], state["exp_avg_sq"]
                m.mul_(beta1).add_(g, alpha=1.0 - beta1)
                v.mul_(beta2).addcmul_(g, g, value=1.0 - beta2)
                denom = (v.sqrt() / math.sqrt(1.0 - beta2**t)).add_(group["eps"])
                p.addcdiv_(m, denom, value=-lr / (1.0 - beta1**t))
        return loss


@register("optimizer")
def AdamLH(
    named_params: NamedParams,
    lr: float = 1e-3,
    betas: list[float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    no_decay: list[str] = (),
    decay_1d: bool = False,
    stage_lr: list[str] = (),
    layer_decay: float = 1.0,
) -> AdamLHOptimizer:
    """Adam with fully decoupled weight decay (shrink `weight_decay * lr_t / lr` per step); see
    `AdamLHOptimizer`. `weight_decay` is therefore a per-step fraction, e.g. 1e-4, not AdamW's 0.05."""
    groups, pair = _adam_groups(named_params, lr, betas, weight_decay, no_decay, decay_1d, stage_lr, layer_decay)
    return AdamLHOptimizer(groups, lr=lr, betas=pair, eps=eps, weight_decay=weight_decay)
