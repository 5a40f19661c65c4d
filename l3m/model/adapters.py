"""Which parameters are adapters (LoRA, bottleneck adapters), what trains, and LoRA merged for export.

A model with adapters is being fine-tuned: everything else is frozen when it is built, except parameters
matching `train.trainable` globs (a new head: `trainable = ["vit.head.*"]`; `["*"]` trains everything). The
same key without adapters trains only what it names (a linear probe). Frozen parameters are left out of the
optimizer, so they get no optimizer state, and checkpoints still hold them (resume is exact).

`merged_state` folds every LoRA update into its base weight (`W + alpha / rank * B A`) and drops the LoRA
tensors: the result loads into the same program without `lora`, or into any tool that reads the base model.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterator, Mapping, Sequence

import torch
from torch import nn

from l3m.model.blocks.peft import Adapter, LoraLinear

LORA_TENSORS = ("lora_A", "lora_B")


def _lora_modules(model: nn.Module) -> Iterator[tuple[str, LoraLinear]]:
    for name, module in model.named_modules():
        if isinstance(module, LoraLinear):
            yield name, module


def adapter_parameter_names(model: nn.Module) -> list[str]:
    """Names of the parameters that belong to adapters: LoRA's `lora_A`/`lora_B` and every Adapter's."""
    names = []
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        if isinstance(module, LoraLinear):
            names += [prefix + t for t in LORA_TENSORS]
        elif isinstance(module, Adapter):
            names += [prefix + n for n, _ in module.named_parameters()]
    return names


def has_bottleneck_adapters(model: nn.Module) -> bool:
    """Whether the model has Adapter blocks: extra layers that no merge can fold into the base weights."""
    return any(isinstance(m, Adapter) for m in model.modules())


def freeze_base(model: nn.Module, trainable: Sequence[str] = ()) -> list[str]:
    """Freeze every parameter that is not an adapter's nor matches a `trainable` glob; returns the names frozen.

    Nothing happens for a model without adapters and no globs. A glob that matches nothing is an error
    (a misspelt head would otherwise stay frozen silently).
    """
    adapters = set(adapter_parameter_names(model))
    if not adapters and not trainable:
        return []
    names = [n for n, _ in model.named_parameters()]
    for glob in trainable:
        if not any(fnmatch.fnmatchcase(n, glob) for n in names):
            raise ValueError(f"trainable pattern {glob!r} matches no parameter")
    frozen = []
    for name in names:
        if name in adapters or any(fnmatch.fnmatchcase(name, g) for g in trainable):
            continue
        model.get_parameter(name).requires_grad_(False)
        frozen.append(name)
    return frozen


def adapter_state(model: nn.Module, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tensors of `state` that fine-tuning `model` trains: its adapters' and those `train.trainable`
    kept trainable (a new head), i.e. the parameters its build left trainable. ValueError without adapters."""
    if not adapter_parameter_names(model):
        raise ValueError("the model has no adapters (no `lora = Lora(...)` nor `adapter = Adapter(...)`)")
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    missing = [n for n in names if n not in state]
    if missing:
        raise ValueError(f"the weights lack {len(missing)} adapter tensor(s), e.g. {missing[0]}")
    return {n: state[n] for n in names}


def lora_layout(model: nn.Module) -> dict[str, LoraLinear]:
    """The LoRA'd linears of `model` by name: what `merged_state` needs (kept before `without_lora`)."""
    return dict(_lora_modules(model))


def merged_state(model: nn.Module | Mapping[str, LoraLinear], state: Mapping[str, torch.Tensor]
                 ) -> dict[str, torch.Tensor]:
    """`state` with every LoRA update added to its base weight (computed in float32, stored in the weight's
    dtype) and the LoRA tensors removed. `model` (or its `lora_layout`) gives the layout; it may live on the
    meta device."""
    layout = lora_layout(model) if isinstance(model, nn.Module) else model
    out = dict(state)
    for name, module in layout.items():
        prefix = f"{name}." if name else ""
        missing = [prefix + t for t in ("weight", *LORA_TENSORS) if prefix + t not in out]
        if missing:
            raise ValueError(f"the weights lack {missing[0]}, which merging LoRA needs")
        a, b = out.pop(prefix + "lora_A"), out.pop(prefix + "lora_B")
        weight = out[prefix + "weight"]
        delta = module.delta_weight(a.detach().float().cpu(), b.detach().float().cpu())
        out[prefix + "weight"] = (weight.detach().float().cpu() + delta).to(weight.dtype)
    return out


def has_lora(model: nn.Module) -> bool:
    return next(_lora_modules(model), None) is not None


def without_lora(model: nn.Module) -> nn.Module:
    """`model` with each LoRA'd linear replaced by a plain Linear of the same shape and init (on the same
    device; meant for a meta-device model): the structure `merged_state` weights belong to."""
    from l3m.model.blocks.layers import Linear

    for name, module in list(_lora_modules(model)):
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        with torch.device(module.weight.device):
            plain = Linear(module.in_features, module.out_features, bias=module.bias is not None, init=module.init,
                           init_std=module.init_std, init_depth=module.init_depth, share=module.share)
        setattr(parent, child, plain)
    return model
