"""Check what names parameters before any parameter exists: `tie`, `freeze`, `no_decay`, `init_include`.

The built-in blocks' parameters are known statically (`l3m.dsl.shapes.params`), so lint lists the
model's full parameter names without torch and reports:

- E640: a `train.freeze` or `train.init_include` glob that matches no parameter (the builder / the
  loader would refuse it later; `init_exclude` may name tensors only the `init_from` file has, and
  `init_include` is not checked under `init_rename`, which renames the file's tensors after it);
- N640: an optimizer `no_decay` glob that matches no parameter (shared recipes list globs for
  other models, so it is only a note);
- E780: a `tie` target that has no weight to share; E781: a tie between weights of other shapes.

A block whose parameters are not known statically (an extension's, or arguments lint cannot read)
could hold any name under its path: a glob that could match there is not checked.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Any

from l3m.dsl.diagnostics import Diagnostic, suggest
from l3m.dsl.ir import Node, Program, Span
from l3m.dsl.shapes.params import Params, Shape, static_params, weight_name
from l3m.dsl.sigparams import component_args
from l3m.model.naming import param_name, tie_matches

GLOB = "E640"
GLOB_NOTE = "N640"
TIE_NO_WEIGHT = "E780"
TIE_SHAPE = "E781"
CRITERION = "criterion"  # the prefix of the losses' and metrics' parameters (l3m.plan, the optimizer)


def block_prefix(node: Node) -> str:
    """Where a block's parameters sit in the built model: the block's own path (contract C5,
    `<model>.<stage>.<node>`, `l3m.model.naming`). With `full_name`, the one place static full names
    are made; a test keeps them equal to the built model's."""
    return node.path


def full_name(node: Node, relative: str, prefix: str | None = None) -> str:
    """A parameter's full name, as the built model's `named_parameters()` gives it (`prefix`: the
    node's `block_prefix`, when the caller has it)."""
    return param_name(block_prefix(node) if prefix is None else prefix, relative)


@dataclass
class ModelParams:
    """The model's parameters as far as they are known without building it."""

    relative: dict[str, Params | None] = field(default_factory=dict)  # block node path -> its own (None: unknown)
    shapes: dict[str, Shape] = field(default_factory=dict)  # full name -> shape (tied weights listed twice)
    unknown: list[str] = field(default_factory=list)  # prefixes of blocks whose parameters are not known

    def names(self) -> list[str]:
        return list(self.shapes)

    def could_match_unknown(self, glob: str) -> bool:
        """Whether `glob` might match a parameter of a block whose parameters are not known."""
        return any(_prefix_could_match(glob, prefix + ".") for prefix in self.unknown)


def block_args(node: Node) -> dict[str, Any]:
    """A node's constructor arguments by name (positional ones folded in by the registry's signature)."""
    from l3m.registry import lookup

    entry = lookup(node.call.type_name)
    if entry is None:
        return {k: component_args(v) for k, v in node.call.kwargs.items()}
    try:
        return {k: component_args(v) for k, v in node.call.kwargs_for(entry.signature).items()}
    except (TypeError, ValueError):
        return {k: component_args(v) for k, v in node.call.kwargs.items()}


def node_params(node: Node) -> Params | None:
    """A node's own parameters (relative names), or None when not known statically."""
    if not node.valid:
        return None
    return static_params(node.call.type_name, block_args(node))


def model_params(program: Program) -> ModelParams:
    out = ModelParams()
    if any(node_params(n) is None for n in program.nodes if n.role in ("loss", "metric")):
        out.unknown.append(CRITERION)  # an extension's loss or metric may have parameters of its own
    for node in sorted(program.blocks, key=lambda n: n.index):
        params = node_params(node)
        out.relative[node.path] = params
        prefix = block_prefix(node)
        if params is None:
            out.unknown.append(prefix)
            continue
        for rel, shape in params:
            out.shapes[full_name(node, rel, prefix)] = shape
    return out


def _prefix_could_match(glob: str, prefix: str) -> bool:
    """Whether some name starting with `prefix` could match `glob` (over-approximated: the glob's
    literal head, up to its first wildcard, must agree with the prefix as far as both go)."""
    head = _literal_head(glob)
    n = min(len(head), len(prefix))
    return head[:n] == prefix[:n]


def _setting_span(program: Program, section: str, key: str) -> Span | None:
    sec = program.sections.get(section)
    if sec is None:
        return None
    return sec.spans.get(key) or (None if key.endswith("]") else sec.span)


def _unmatched(globs: Any, params: ModelParams) -> list[str]:
    if not isinstance(globs, list):
        return []
    names = params.names()
    return [g for g in globs if isinstance(g, str) and not params.could_match_unknown(g)
            and not any(fnmatch.fnmatchcase(n, g) for n in names)]


def _literal_head(glob: str) -> str:
    """The part of a glob before its first wildcard (`gpt.trunk.block` of `gpt.trunk.block.*`)."""
    for i, c in enumerate(glob):
        if c in "*?[":
            return glob[:i]
    return glob


def _help(glob: str, params: ModelParams, root: str | None = None) -> str:
    """Where full names start, with the block path the glob probably meant."""
    names = params.names()
    text = "patterns match full parameter names" + (f", such as '{names[0]}'" if names else "")
    head = _literal_head(glob).rstrip(".")
    blocks = list(dict.fromkeys(p for p in params.relative))
    near = suggest(head, blocks) if head and head not in blocks else None
    if near is not None:
        text += f"; did you mean '{near}{glob[len(head):]}'?"
    elif glob.startswith("model.") and root is not None and root != "model":
        text += f"; did you mean '{root}.{glob[len('model.'):]}'? (names start with the model's name)"
    return text


def check_globs(program: Program, params: ModelParams) -> list[Diagnostic]:
    diags = []
    train = program.section("train")
    settings = [("freeze", "train.freeze: freeze pattern {g!r} matches no parameter of the model"),
                ("trainable", "train.trainable: pattern {g!r} matches no parameter of the model")]
    if not train.get("init_rename"):
        settings.append(("init_include", "train.init_include pattern {g!r} matches no parameter of the model "
                                         "(no tensor of the init_from file could load under such a name)"))
    for key, message in settings:
        globs = train.get(key)
        for g in _unmatched(globs, params):
            at = _setting_span(program, "train", f"{key}[{globs.index(g)}]") or _setting_span(program, "train", key)
            diags.append(Diagnostic(GLOB, message.format(g=g), at, _help(g, params, _root(program))))
    call = program.optimizer
    if call is not None:
        for g in _unmatched(call.kwargs.get("no_decay"), params):
            diags.append(Diagnostic(GLOB_NOTE, f"no_decay pattern {g!r} matches no parameter of the model "
                                    "(weight decay applies as if it were not there)",
                                    call.kwarg_spans.get("no_decay", call.type_span), _help(g, params, _root(program))))
    return diags


def _tie_target(tie: str, blocks: list[Node]) -> Node | None:
    """The one block a `tie` names, as the builder finds it; None otherwise (E208 says why)."""
    hits = tie_matches(tie, blocks)
    return hits[0] if len(hits) == 1 else None


def _fmt(shape: Shape) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


@dataclass
class Tie:
    """A `tie` lint can follow: `node`'s parameter `mine` is to share `target`'s `shared` (relative names;
    `shared` is None when the target has no weight)."""

    node: Node
    target: Node
    mine: str
    shared: str | None


def ties(program: Program, params: ModelParams) -> list[Tie]:
    """The ties between blocks whose parameters are known (a tie to nothing is E208's)."""
    blocks = sorted(program.blocks, key=lambda n: n.index)
    out = []
    for node in blocks:
        tie = node.call.kwargs.get("tie") if node.valid else None
        if not isinstance(tie, str) or not tie:
            continue
        target = _tie_target(tie, blocks)
        own, theirs = params.relative.get(node.path), params.relative.get(target.path) if target else None
        if target is None or target is node or own is None or theirs is None:
            continue
        mine = weight_name(node.call.type_name, own)
        if mine is not None:  # else the tying block has nothing to replace: its own constructor decides
            out.append(Tie(node, target, mine, weight_name(target.call.type_name, theirs)))
    return out


def tied_copies(program: Program, params: ModelParams) -> dict[str, str]:
    """Full name of each tied parameter -> the full name of the one it shares (counted once)."""
    return {full_name(t.node, t.mine): full_name(t.target, t.shared) for t in ties(program, params)
            if t.shared is not None and params.shapes.get(full_name(t.node, t.mine)) ==
            params.shapes.get(full_name(t.target, t.shared))}


def check_ties(program: Program, params: ModelParams) -> list[Diagnostic]:
    diags = []
    for t in ties(program, params):
        node, target, tie = t.node, t.target, t.node.call.kwargs["tie"]
        span = node.call.kwarg_spans.get("tie", node.span)
        note = [(f"'{target.name}' is declared here", target.span)]
        if t.shared is None:
            diags.append(Diagnostic(
                TIE_NO_WEIGHT, f"block '{node.name}' ties to '{tie}', a {target.call.type_name}, which has no "
                "weight to share", span, "tie to a block with a `.weight`, such as the TokenEmbedding", note))
            continue
        a, b = dict(params.relative[node.path])[t.mine], dict(params.relative[target.path])[t.shared]
        if a != b:
            diags.append(Diagnostic(
                TIE_SHAPE, f"block '{node.name}' ties its {_fmt(a)} weight to '{tie}', whose weight is {_fmt(b)}",
                span, "tied weights need the same shape: check both blocks' dim and vocab", note))
    return diags


def check_params(program: Program) -> list[Diagnostic]:
    """Lint's parameter checks (E640, N640, E780, E781)."""
    if not program.blocks:
        return []
    params = model_params(program)
    return check_ties(program, params) + check_globs(program, params)


def _root(program: Program) -> str | None:
    root = program.root_model
    return root.name if root is not None else None
