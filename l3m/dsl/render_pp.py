"""The pipeline cut in `l3m graph` (`mesh { pp = N }`), without torch.

The graph has no built model, so its split uses the static parameter counts the graph already shows
(a block's count as its cost, spread evenly over a Transformer's layers; embedding tables, which are
looked up, cost nothing) and honours `pp_split`. The trainer balances measured FLOPs instead, so on a
model whose attention dominates the two may differ by a layer: `l3m plan` prints the split training uses.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from l3m.dsl.ir import Node, Program
from l3m.dsl.ppcheck import LAYERED
from l3m.pp_partition import Split, Unit, partition, stage_count, stage_ranks, transformer_units, unit_index

LOOKUPS = ("TokenEmbedding", "PosEmbed", "Embedding")


@dataclass
class GraphSplit:
    split: Split
    ranks: list[int]  # the pipeline rank of each stage
    stages_of: dict[str, list[int]]  # block path -> the stages it runs in (several: cut between its layers)

    def label(self, path: str) -> str | None:
        stages = self.stages_of.get(path)
        if not stages:
            return None
        if len(stages) == 1:
            return f"pipeline stage {stages[0]}"
        spans = []
        for s in stages:
            layers = [u.layer for u in self.split.stage_units(s) if u.block == path and u.layer is not None]
            spans.append(f"{s}: layers {layers[0]}-{layers[-1]}" if layers else str(s))
        return "pipeline stages " + ", ".join(spans)


def _units(program: Program, order: list[str], params: Mapping[str, int | None]) -> list[Unit]:
    nodes = {n.path: n for n in program.blocks}
    out: list[Unit] = []
    for path in order:
        n: Node | None = nodes.get(path)
        if n is None:
            continue
        count = params.get(path) or 0
        cost = 0.0 if n.call.type_name in LOOKUPS else float(count)
        depth = n.call.kwargs.get("depth")
        if (n.call.type_name in LAYERED and isinstance(depth, int) and depth > 1
                and not n.call.kwargs.get("return_hidden") and not n.call.kwargs.get("share_layers")):
            x = n.ports_in().get("x") or n.read_keys[0]
            host = [k for k in n.read_keys if k != x]
            out += transformer_units(path, depth, [x], host, n.write_keys, [cost / depth] * depth,
                                     [4 * count // depth] * depth)
        else:
            out.append(Unit(path, path, tuple(n.read_keys), tuple(n.write_keys), cost, 4 * count))
    return out


def graph_split(program: Program, order: list[str], params: Mapping[str, int | None]) -> GraphSplit | None:
    """The static split of a program whose mesh declares `pp > 1`; None otherwise or when it cannot be made."""
    mesh = program.section("mesh")
    pp = mesh.get("pp", 1)
    if not isinstance(pp, int) or pp < 2:
        return None
    stages = stage_count(pp, mesh.get("pp_schedule"), mesh.get("pp_virtual"))
    units = _units(program, order, params)
    pins = [i for i in (unit_index(units, name) for name in mesh.get("pp_split") or []) if i is not None]
    reads = [k for n in (*program.of_role("loss"), *program.of_role("metric")) for k in n.read_keys]
    written = {k for n in program.blocks for k in n.write_keys}
    needed = list(dict.fromkeys(k for k in reads if k in written))
    try:
        split = partition(units, stages, pins, needed)
    except ValueError:
        return None
    ranks = stage_ranks(stages, pp)
    stages_of: dict[str, list[int]] = {}
    for s in range(stages):
        for u in split.stage_units(s):
            if s not in stages_of.setdefault(u.block, []):
                stages_of[u.block].append(s)
    return GraphSplit(split, ranks, stages_of)


def pipeline_lines(g: GraphSplit) -> list[str]:
    """The text rendering's `pipeline` section: each stage, what it runs and the keys crossing into it."""
    split = g.split
    lines = [f"pipeline: {split.stages} stages (static split by parameter counts; `l3m plan` shows the trained one)"]
    for s in range(split.stages):
        crossing = f"   <- {', '.join(split.received(s))}" if s > 0 else ""
        lines.append(f"  stage {s} (pp rank {g.ranks[s]}): {split.describe(s)}{crossing}")
    return lines
