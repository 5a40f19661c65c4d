"""Traits: what a block tells the parallelizer about itself, so that no code lists classes by name.

A trait is a class attribute with one of the names below. A block declares it in its class body or,
equivalently, as a keyword of its registration (`@register("block", context_parallel="local")`), which
sets the class attribute; the two forms must agree when both are written. Torch-free: the registry
imports this module at lint time.

- `tp_plan`: how the block's layers split under tensor parallelism, `{relative module name: style}`.
  A dict (class attribute or registration keyword) or a method returning one. A style is a torch
  `ParallelStyle` or one of the names in `TP_STYLES`. A block without a plan is searched through (its
  children's plans apply); layers that no plan names stay replicated.
- `tp_problem(self, tp)`: a method returning why this module cannot be split over `tp` ranks (e.g. a
  key/value head group would be cut), or None.
- `context_parallel`: whether the block runs on one rank's slice of the token sequence (`mesh.cp > 1`):
  "local" (token-local, or its sequence-aware parts declare "aware"), "aware" (it reads its `cp`
  attribute, a `l3m.dist.cp.ContextParallel` the parallelizer sets, and handles the slice), or "whole"
  (it needs the whole sequence: `l3m.dist.cp_whole` runs it on the gathered sequence and shares its sequence
  outputs out again). A block that declares nothing runs whole too; a part inside a block that declares
  nothing is covered by its block, one that declares "whole" is refused. May be a property
  when it depends on the instance (self-attention "aware", cross-attention "whole").
- `expert_parallel`: names of the block's parameters stacked by expert (dim 0 indexes the experts) that
  expert parallelism (`mesh.ep > 1`, `l3m.dist.ep`) splits over the `ep` ranks; the block then reads its
  `ep` attribute (a `l3m.dist.ep.ExpertParallel` the parallelizer sets) to dispatch tokens to them.
- `layer_lists`: names of the block's `nn.ModuleList`s whose entries are repeated layers: the units of
  activation checkpointing, per-layer `torch.compile` and FSDP. Default: `("layers",)`.
- `ac_parts`: `{activation_checkpointing mode: attribute names}`: the parts of a repeated layer that a
  sub-layer mode checkpoints. Default: `{"mlp": ("mlp",)}` (the layer's feed-forward).
- `fsdp_units`: dotted names of sub-modules of the block that FSDP shards as units of their own (besides
  the repeated layers and the block itself), e.g. a large embedding table inside a bigger block.
- `fixed_tables`: names of the module's buffers that are frozen tables (sin-cos position tables): `plan`
  counts them apart, as codebases that store them as frozen parameters would count them. May be a
  property.
- `group_over`: (losses) the ranks a loss reduces or gathers over, set as its `group`: "samples" (the
  data-parallel ranks, e.g. a contrastive loss's gather) or "tokens" (data- and context-parallel ranks,
  e.g. a per-token mean). Losses also declare `context_parallel` ("whole": refused under `mesh.cp > 1`),
  with `context_parallel_note` saying why or what to do instead.
- `token_policy`: (data sources) how the checker reads the source's tokenizer: "stream", "caption" or
  "manifest".

Initialisation is not a trait but a method every module that owns parameters or buffers defines:
`init_weights(self)`, filling its own tensors (never its children's); see `l3m.model.init`.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from typing import Any

CONTEXT_PARALLEL = ("local", "aware", "whole")
# Named tensor-parallel styles (`l3m.dist.tp_styles` turns them into torch's ParallelStyle objects).
TP_STYLES = {
    "colwise": "split the output features (ColwiseParallel): the first layer of a pair",
    "rowwise": "split the input features, outputs summed (RowwiseParallel): the second layer of a pair",
    "colwise_gather": "split the output features, then gather them (ColwiseParallel(output_layouts=Replicate()))",
    "rowwise_embedding": "split an embedding table's rows (RowwiseParallel(input_layouts=Replicate()))",
}
DEFAULT_LAYER_LISTS = ("layers",)
DEFAULT_AC_PARTS = {"mlp": ("mlp",)}
# Trait name -> checker of a declared value (returns the value as stored, or raises ValueError/TypeError).
_CHECKS: dict[str, Callable[[Any], Any]] = {}


def _trait(name: str) -> Callable[[Callable[[Any], Any]], Callable[[Any], Any]]:
    def wrap(fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
        _CHECKS[name] = fn
        return fn

    return wrap


def _names(value: Any, what: str) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, (tuple, list)) or not all(
            isinstance(v, str) and v for v in value):
        raise TypeError(f"{what} must be a tuple of names, not {value!r}")
    return tuple(value)


@_trait("tp_plan")
def _tp_plan(value: Any) -> Any:
    if callable(value):
        return value
    if not isinstance(value, Mapping):
        raise TypeError(f"tp_plan must be a dict {{module name: style}} or a method, not {type(value).__name__}")
    for k, style in value.items():
        if not isinstance(k, str):
            raise TypeError(f"tp_plan names modules with strings, not {k!r}")
        if isinstance(style, str) and style not in TP_STYLES:
            raise ValueError(f"tp_plan[{k!r}]: unknown style {style!r}{_suggest(style, TP_STYLES)}; "
                             f"expected one of {', '.join(TP_STYLES)} (or a torch ParallelStyle)")
    return dict(value)


@_trait("tp_problem")
def _tp_problem(value: Any) -> Any:
    if not callable(value):
        raise TypeError("tp_problem must be a method `(self, tp: int) -> str | None`")
    return value


@_trait("context_parallel")
def _context_parallel(value: Any) -> Any:
    if isinstance(value, property):
        return value
    if value not in CONTEXT_PARALLEL:
        raise ValueError(f"context_parallel must be one of {', '.join(map(repr, CONTEXT_PARALLEL))}, not {value!r}"
                         f"{_suggest(value, CONTEXT_PARALLEL)}")
    return value


@_trait("expert_parallel")
def _expert_parallel(value: Any) -> Any:
    return _names(value, "expert_parallel")


@_trait("layer_lists")
def _layer_lists(value: Any) -> Any:
    return _names(value, "layer_lists")


@_trait("ac_parts")
def _ac_parts(value: Any) -> Any:
    if not isinstance(value, Mapping):
        raise TypeError(f"ac_parts must be a dict {{mode: attribute names}}, not {type(value).__name__}")
    return {str(mode): _names(parts, f"ac_parts[{mode!r}]") for mode, parts in value.items()}


@_trait("fsdp_units")
def _fsdp_units(value: Any) -> Any:
    return _names(value, "fsdp_units")


@_trait("fixed_tables")
def _fixed_tables(value: Any) -> Any:
    return value if isinstance(value, property) else _names(value, "fixed_tables")


@_trait("group_over")
def _group_over(value: Any) -> Any:
    if value not in ("samples", "tokens"):
        raise ValueError(f"group_over must be 'samples' or 'tokens', not {value!r}")
    return value


@_trait("context_parallel_note")
def _context_parallel_note(value: Any) -> Any:
    if not isinstance(value, (str, property)):
        raise TypeError("context_parallel_note must be a string")
    return value


@_trait("token_policy")
def _token_policy(value: Any) -> Any:
    if value not in ("stream", "caption", "manifest"):
        raise ValueError(f"token_policy must be 'stream', 'caption' or 'manifest', not {value!r}")
    return value


TRAITS: tuple[str, ...] = tuple(_CHECKS)


def _suggest(word: Any, options: Any) -> str:
    if not isinstance(word, str):
        return ""
    close = difflib.get_close_matches(word, list(options), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def misspelt_trait(keyword: str) -> str | None:
    """The trait (or `shapes` / `checks`) a registration keyword was probably meant to be (`tp_pln`,
    `shape`), if any."""
    close = difflib.get_close_matches(keyword, (*TRAITS, "shapes", "checks"), n=1, cutoff=0.75)
    return close[0] if close else None


_ABSENT = object()


def declare(obj: Any, who: str, declared: Mapping[str, Any]) -> None:
    """Set the traits (and `shapes` / `checks`) given at registration as class attributes of `obj`.

    `who` names the registration in errors. A value the class body already sets must be the same."""
    for name, value in declared.items():
        try:
            value = check_trait(name, value)
        except (TypeError, ValueError) as e:
            raise type(e)(f"{who}: {e}") from None
        own = obj.__dict__.get(name, _ABSENT) if hasattr(obj, "__dict__") else _ABSENT
        if own is not _ABSENT and own != value:
            raise ValueError(f"{who}: `{name}` is declared both in the class body ({own!r}) and at "
                             f"registration ({value!r}); keep one")
        setattr(obj, name, value)


def check_trait(name: str, value: Any) -> Any:
    """`value` as a class stores trait (or `shapes` / `checks`) `name`; TypeError/ValueError saying what is
    wrong with it."""
    return _CHECKS[name](value) if name in _CHECKS else _declaration(name, value)


def _declaration(name: str, value: Any) -> Any:
    """`shapes` (a string) and `checks` ((expression, message) pairs), as the shape engine reads them."""
    if name == "shapes":
        if not isinstance(value, str):
            raise TypeError(f"shapes must be a string such as \"x: [B, N, dim] -> x: [B, N, dim]\", not {value!r}")
        return value
    if name == "checks":
        pairs = tuple(tuple(c) if isinstance(c, (tuple, list)) else c for c in value) \
            if isinstance(value, (tuple, list)) else None
        if pairs is None or not all(isinstance(c, tuple) and len(c) == 2 and all(isinstance(x, str) for x in c)
                                    for c in pairs):
            raise TypeError("checks must be a sequence of (expression, message) string pairs, e.g. "
                            "[(\"dim % heads == 0\", \"heads ({heads}) must divide dim ({dim})\")]")
        return pairs
    raise KeyError(name)


# -- reading traits off modules (torch-free: plain attribute access) ---------------------------------


def context_parallel(module: Any) -> str | None:
    """The module's declared context-parallel trait (None when it declares none)."""
    value = getattr(module, "context_parallel", None)
    if value is None and getattr(module, "context_parallel_safe", False):  # the older spelling
        return "local"
    return value if value in CONTEXT_PARALLEL else None


def expert_parallel(module: Any) -> tuple[str, ...]:
    """The names of the module's expert-stacked parameters (empty when it declares none)."""
    return tuple(getattr(module, "expert_parallel", None) or ())


def layer_lists(module: Any) -> tuple[str, ...]:
    """The names of the module's lists of repeated layers."""
    value = getattr(module, "layer_lists", None)
    return tuple(value) if value is not None else DEFAULT_LAYER_LISTS


def ac_parts(layer: Any, mode: str) -> tuple[str, ...] | None:
    """The attributes of `layer` that sub-layer mode `mode` checkpoints; None when `mode` checkpoints
    whole layers."""
    parts = getattr(layer, "ac_parts", None)
    parts = DEFAULT_AC_PARTS if parts is None else parts
    if mode in parts:
        return tuple(parts[mode])
    return () if mode in DEFAULT_AC_PARTS else None


def fsdp_units(module: Any) -> tuple[str, ...]:
    return tuple(getattr(module, "fsdp_units", None) or ())
