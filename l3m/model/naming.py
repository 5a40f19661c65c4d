"""One name per thing: the path `plan` and `graph` print for a block is its name everywhere.

A block node's path is `<model>.<stage>.<node>` (`vit.trunk.blocks`; in a nested model or a
template instance `clip.image.trunk.blocks`). That same string is

- the override prefix of the block's arguments (`vit.trunk.blocks.depth=2`); a template
  instance's own arguments are `<model path>.<param>` (`vit.dim=32`);
- the module path of the block inside the built `MetaModel`, so the prefix of its parameter
  names (`vit.trunk.blocks.layers.0.norm1.weight`), of `freeze`/`no_decay`/`init_*` globs, of the
  tensors of a checkpoint's `model` state and of a safetensors export.

The root model's name is part of every name (no segment is left out). Older l3m left it out of
parameter names and spelt overrides `model.<...>`: those spellings are refused with the new
one suggested (E502 for an override; a named error for weights, see `missing_model_prefix`).
Torch-free: lint, the language server and static parameter names (C4) use it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from l3m.dsl.ir import Node

# Override paths that start with one of these name a section or a data/loss/metric node, so a
# model may not be called so (E503). `l3m.config.SECTION_SCHEMAS` adds the settings sections.
ROLE_ROOTS = ("data", "loss", "metric", "optimizer", "schedule")

# The first segment of every model override before names were unified (`model.trunk.blocks.depth`).
LEGACY_OVERRIDE_ROOT = "model"

# Attributes of the built containers (`MetaModel`, `Stage`: torch modules): a model or block of one of
# these names would be shadowed in the module tree, so it is refused at lint (E503). A test keeps this
# list a superset of the live attributes.
_RESERVED = """
    T_destination add_module add_side_input apply bfloat16 block_items buffers call_super_init children code compile cpu cuda
    double dump_patches eval extra_repr float forward forward_eager get_buffer get_extra_state get_parameter
    get_submodule half input_keys ipu load_state_dict modules mtia named_buffers named_children named_modules
    named_parameters output_keys parameters register_backward_hook register_buffer register_forward_hook
    register_forward_pre_hook register_full_backward_hook register_full_backward_pre_hook
    register_load_state_dict_post_hook register_load_state_dict_pre_hook register_module register_parameter
    register_state_dict_post_hook register_state_dict_pre_hook requires_grad_ retie schedule set_extra_state
    set_submodule share_memory state_dict tie ties to to_empty train training type xpu zero_grad
"""
RESERVED = frozenset(_RESERVED.split())


def block_path(model: str, stage: str, node: str) -> str:
    """The one name of a block: `<model path>.<stage>.<node>` (`vit.trunk.blocks`)."""
    return f"{model}.{stage}.{node}"


def param_name(block: str, relative: str) -> str:
    """A parameter's full name from its block's path and its name inside the block module
    (`vit.trunk.blocks` + `layers.0.norm1.weight`): what `named_parameters()` of the built model,
    checkpoints, exports and globs use."""
    return f"{block}.{relative}" if relative else block


def tie_matches(tie: str, nodes: Sequence[Node]) -> list[Node]:
    """The blocks a `tie` argument names: by path (`gpt.preprocessor.embed`), else by (unique) name."""
    return [n for n in nodes if n.path == tie] or [n for n in nodes if n.name == tie]


def legacy_override(path: str, model: str) -> str | None:
    """The new spelling of an old override path `model.<rest>` for the root model `model`
    (None when `path` is not in the old spelling)."""
    root, dot, rest = path.partition(".")
    if root != LEGACY_OVERRIDE_ROOT or not dot or model == LEGACY_OVERRIDE_ROOT:
        return None
    return f"{model}.{rest}"


def missing_model_prefix(names: Iterable[str], expected: Iterable[str], model: str) -> str | None:
    """A sentence when a weights file names its tensors the old way, without the root model's
    name (`trunk.blocks.x` for `vit.trunk.blocks.x`); None otherwise.

    Said only when no file name carries the prefix and some file name does once it is added, so
    a file of another model entirely gets the ordinary missing/unexpected report.
    """
    names = list(names)
    wanted = set(expected)
    prefix = f"{model}."
    if not names or any(n.startswith(prefix) for n in names):
        return None
    hits = [n for n in names if prefix + n in wanted]
    if not hits:
        return None
    return (f"its tensor names lack the prefix '{prefix}': they were written before parameter names started "
            f"with the model's name ('{hits[0]}' is '{prefix}{hits[0]}' now)")


def root_of(names: Iterable[str]) -> str | None:
    """The root model's name: the first segment shared by every parameter name (None if not one)."""
    roots = {n.split(".", 1)[0] for n in names}
    return next(iter(roots)) if len(roots) == 1 else None


def rename_fix(model: str) -> str:
    """The setting that loads an old-named file: every name gets the model's prefix."""
    return f'train.init_rename = ["={model}."]'
