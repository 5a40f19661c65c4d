"""`train.float8`: train the model's Linear layers with float8 matmuls (torchao's float8 training).

Which layers: plain Linear layers (l3m's `Linear` or `nn.Linear`; LoRA and other subclasses have a forward
of their own) whose both dims are multiples of 16 (what float8 tensor-core matmuls need), outside the
model's `preprocessor` and `head` stages: the embeddings in and the logits out keep full precision, where
float8's few mantissa bits cost the most accuracy; so does an MoE router, whose top-k choice is sensitive
to small changes. `float8_targets` says which layers, on a meta model and without torchao, so tests and
tools can tell before a GPU is allocated.

When: on the meta-device model, before tensor parallelism and FSDP wrap it (torchao swaps the modules;
the parallel styles and FSDP2 then shard the float8 layers' weights). Float8 needs a CUDA GPU with float8
tensor cores (compute capability 8.9: Ada, Hopper and newer) and the `torchao` package; anything else
is refused with one line before any training (`float8_refusal`), and so is tensor parallelism, whose
plans do not use torchao's float8 parallel styles yet (`float8_tp_refusal`).
"""

from __future__ import annotations

import functools
import importlib.util
from typing import Literal

import torch
from torch import nn

Recipe = Literal["tensorwise", "rowwise"]
MIN_CAPABILITY = (8, 9)
KEEP_PRECISION_STAGES = ("preprocessor", "head")  # a model's input embeddings and output projection
INSTALL_HINT = "pip install 'l3m[float8]'"


def float8_recipe(setting: bool | str) -> Recipe | None:
    """The scaling recipe `train.float8` asks for: `true` is tensorwise (torchao's default, and the
    one whose weights FSDP2 can all-gather in float8); `false` is no float8."""
    if setting is True:
        return "tensorwise"
    if setting is False:
        return None
    if setting in ("tensorwise", "rowwise"):
        return setting  # type: ignore[return-value]
    raise ValueError(f"train.float8 must be true, false, 'tensorwise' or 'rowwise', not {setting!r}")


def torchao_installed() -> bool:
    return importlib.util.find_spec("torchao") is not None


def float8_refusal(device: torch.device) -> str | None:
    """Why float8 training cannot run on `device` (one line), or None when it can."""
    if device.type != "cuda":
        return (f"float8 needs a GPU with float8 tensor cores (compute capability >= 8.9); this run is on the "
                f"{device.type.upper()}")
    major, minor = torch.cuda.get_device_capability(device)
    if (major, minor) < MIN_CAPABILITY:
        name = torch.cuda.get_device_name(device)
        return (f"float8 needs a GPU with float8 tensor cores (compute capability >= 8.9); {name} has "
                f"{major}.{minor} (train in bf16 instead: `train.float8 = false`)")
    if not torchao_installed():
        return f"float8 training needs the torchao package: {INSTALL_HINT}"
    return None


def float8_tp_refusal(tp: int) -> str:
    """Tensor parallelism would need torchao's float8 parallel styles, which l3m's plans do not use yet."""
    return (f"train.float8 with tensor parallelism (mesh.tp = {tp}) is not supported yet: "
            "use mesh.tp = 1 (FSDP shards float8 layers) or train.float8 = false")


def _stage(name: str) -> str | None:
    """The model stage a module path is in (`gpt.trunk.blocks...` -> "trunk")."""
    from l3m.dsl.ir import STAGES

    return next((part for part in name.split(".") if part in STAGES), None)


def _is_router(model: nn.Module, name: str, module: nn.Module) -> bool:
    parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
    return getattr(parent, "router", None) is module


def float8_eligible(model: nn.Module, name: str, module: nn.Module) -> bool:
    """Whether the layer at `name` would be trained in float8 (the module docstring says which and why)."""
    # torch's own Linear, or a block that declares the `float8` trait (l3m's Linear; not its LoRA subclass)
    if not (type(module) is nn.Linear or getattr(module, "float8", False) is True):
        return False
    if module.in_features % 16 or module.out_features % 16:
        return False
    if _stage(name) in KEEP_PRECISION_STAGES:
        return False
    return not _is_router(model, name, module)


def float8_targets(model: nn.Module) -> list[str]:
    """Paths of the layers `apply_float8` converts (works on a meta-device model, without torchao)."""
    return [name for name, m in model.named_modules() if float8_eligible(model, name, m)]


def apply_float8(model: nn.Module, recipe: Recipe, *, fsdp_all_gather: bool = False) -> list[str]:
    """Swap the eligible Linear layers for torchao's `Float8Linear` (in place); their paths.

    `fsdp_all_gather` (tensorwise only): FSDP2 all-gathers those weights in float8, halving the traffic
    of bf16."""
    from torchao.float8 import Float8LinearConfig, convert_to_float8_training

    if recipe == "tensorwise":
        config = Float8LinearConfig(enable_fsdp_float8_all_gather=fsdp_all_gather)
    else:
        config = Float8LinearConfig.from_recipe_name(recipe)
    targets = float8_targets(model)
    originals = {name: model.get_submodule(name) for name in targets}
    convert_to_float8_training(model, module_filter_fn=lambda _m, fqn: fqn in originals, config=config)
    keep_init(model, originals)
    return targets


def keep_init(model: nn.Module, originals: dict[str, nn.Module]) -> None:
    """Give each swapped layer the init of the layer it replaced: the model is still on the meta device
    and is initialised later, and the new class only knows `nn.Linear`'s `reset_parameters`, not the
    init style (`trunc_normal`, depth-scaled...) of l3m's `Linear`."""
    from l3m.model.init import init_linear_

    for name, old in originals.items():
        new = model.get_submodule(name)
        if new is old or not hasattr(old, "init_std"):  # l3m's Linear knows its init style
            continue
        new.init, new.init_std, new.init_depth = old.init, old.init_std, old.init_depth
        new.init_weights = functools.partial(init_linear_, new, old.init, std=old.init_std, depth=old.init_depth)
