"""Checkpoints of a pipelined model: each pipeline rank holds only its stages' tensors.

The tensors need nothing: DCP writes each rank's own under their usual names. The skeleton (the
state's structure, written by rank 0) is merged from every pipeline rank's, so that it names every
tensor, in the order one process would (`order`: the model's parameter names); on restore, each rank
keeps the part of it that names its own tensors. So a checkpoint moves between `pp` and non-`pp` meshes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import torch.distributed as dist


def _merge(a: Any, b: Any, rank_of: Mapping[str, int]) -> Any:
    if isinstance(a, dict) and isinstance(b, dict):
        out = dict(a)
        for k, v in b.items():
            out[k] = _merge(a[k], v, rank_of) if k in a else v
        return out
    if isinstance(a, list) and isinstance(b, list):
        if all(isinstance(x, str) for x in [*a, *b]):  # parameter names (an optimizer group's `params`)
            names = list(dict.fromkeys([*a, *b]))
            return sorted(names, key=lambda n: rank_of.get(n, len(rank_of)))
        if len(a) == len(b):
            return [_merge(x, y, rank_of) for x, y in zip(a, b)]
    return a


_NAMES = ("params", "param_names")


def _merge_groups(per_rank: Sequence[list[dict[str, Any]]], rank_of: Mapping[str, int]) -> list[dict[str, Any]]:
    """Optimizer groups matched by their settings (each rank made its own, in its own order), their
    parameters joined, in the order one process makes them (by their first parameter)."""
    merged: dict[str, dict[str, Any]] = {}
    for groups in per_rank:
        for g in groups:
            hyper = json.dumps({k: v for k, v in g.items() if k not in _NAMES}, sort_keys=True, default=str)
            into = merged.setdefault(hyper, {**g, **{k: [] for k in _NAMES if k in g}})
            for k in _NAMES:
                if k in g:
                    into[k] = sorted(dict.fromkeys([*into[k], *g[k]]), key=lambda n: rank_of.get(n, len(rank_of)))
    last = len(rank_of)
    return sorted(merged.values(), key=lambda g: min((rank_of.get(n, last) for n in g.get("params", [])), default=last))


def merge_skeletons(skeletons: Sequence[Any], order: Sequence[str]) -> Any:
    """The union of the pipeline ranks' skeletons; parameter lists in the model's order."""
    rank_of = {n: i for i, n in enumerate(order)}
    out = skeletons[0]
    for s in skeletons[1:]:
        out = _merge(out, s, rank_of)
    groups = [s["optim"]["param_groups"] for s in skeletons
              if isinstance(s, dict) and isinstance(s.get("optim"), dict) and "param_groups" in s["optim"]]
    if groups:
        out["optim"]["param_groups"] = _merge_groups(groups, rank_of)
    if isinstance(out, dict) and isinstance(out.get("model"), dict):  # model entries in parameter order
        model = out["model"]
        out["model"] = {k: model[k] for k in sorted(model, key=lambda n: rank_of.get(n, len(rank_of)))}
    return out


def gather_skeleton(skeleton: Any, group: Any, order: Sequence[str]) -> Any:
    """Every pipeline rank's skeleton merged (on each rank of `group`)."""
    parts: list[Any] = [None] * dist.get_world_size(group)
    dist.all_gather_object(parts, skeleton, group=group)
    return merge_skeletons(parts, order)


def restrict_skeleton(skeleton: dict[str, Any], live_model: set[str],
                      live_groups: Sequence[Mapping[str, Any]] = ()) -> dict[str, Any]:
    """The part of a whole model's skeleton naming this rank's parameters (`live_model`: names
    without the `model.` prefix) and everything that is not per-parameter; optimizer groups in the
    order of this rank's (`live_groups`), those without a parameter here dropped."""
    out = dict(skeleton)
    if isinstance(out.get("model"), dict):
        out["model"] = {k: v for k, v in out["model"].items() if k in live_model}
    optim = out.get("optim")
    if isinstance(optim, dict):
        optim = dict(optim)

        def keep(name: Any) -> bool:
            return not isinstance(name, str) or not name.startswith("model.") or name[len("model."):] in live_model

        if isinstance(optim.get("state"), dict):
            optim["state"] = {k: v for k, v in optim["state"].items() if keep(k)}
        if isinstance(optim.get("param_groups"), list):
            groups = [{**g, "params": [p for p in g.get("params", []) if keep(p)],
                       **({"param_names": [n for n in g["param_names"] if n in live_model or n.startswith("criterion.")]} if "param_names" in g else {})}
                      for g in optim["param_groups"]]
            where = {p: i for i, g in enumerate(live_groups) for p in g.get("params", [])}
            groups = [g for g in groups if g["params"]]
            optim["param_groups"] = sorted(groups, key=lambda g: where.get(g["params"][0], len(where)))
        out["optim"] = optim
    return out
