"""Whole-program pruning: a trunk's last layer computes only the tokens its pooling reads.

A ViT classifier reads the cls token of its trunk's output and nothing else; CLIP's text tower reads
one token per caption, its end. The trunk cannot know that, the program does. When the only reader
of a trunk's output is a pooling block that says which rows it reads (`pooled_rows`), training runs
the trunk's last layer for those rows alone: their queries, residuals, norms and feed-forward (the
keys and values still cover every token). The pooled values and every gradient are those of the
full computation; a depth-L trunk saves about 3/(4L) of its FLOPs, the q/k/v projections still
covering every token (`l3m plan` counts 3.1% for ViT-L/16, 17.7% for the 4-layer ViT of
`benchmarks/peers.py`).

`plan_row_pruning` decides from the program alone (so `l3m plan` shows it), `apply_row_pruning`
sets a built training model up for it; `train.prune_rows = false` turns it off. Evaluation,
generation and exports compute every row, as the file says.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from l3m.dsl.ir import Program
from l3m.model.fusion import node_args, why_not_mesh


@dataclass(frozen=True)
class RowPruning:
    """One trunk whose output only a pooling block reads."""

    trunk: str  # the trunk's block path (its module path in the MetaModel)
    pool: str  # the pooling block's path
    inputs: tuple[tuple[str, str], ...]  # the pooling's other (port, key): passed to the trunk beside its own

    def describe(self) -> str:
        """The line `l3m plan` prints."""
        return f"pruned: {self.trunk}'s last layer computes only the tokens {self.pool} reads, in training"


def _prunable(cls: Any, attr: str) -> bool:
    return cls is not None and callable(getattr(cls, attr, None))


def plan_row_pruning(program: Program) -> list[RowPruning]:
    """Every trunk whose last layer training can run on the pooled rows alone (see the module doc)."""
    from l3m.dsl.schedule import dataflow
    from l3m.registry import lookup

    if not program.section("train").get("prune_rows", True) or why_not_mesh(program) is not None:
        return []
    flow = dataflow(program)
    out = []
    for trunk in program.blocks:
        entry = lookup(trunk.call.type_name)
        args = node_args(trunk)
        ports = trunk.ports_out()
        if (
            not _prunable(entry and entry.obj, "read_rows")
            or args is None
            or "mask" in trunk.ports_in()
            or "hidden" in ports
            or "x" not in ports
            or args.get("return_hidden")
            or args.get("moe_every")
            and args["depth"] % args["moe_every"] == 0
        ):
            continue
        write = next(w for w in flow.writes[ports["x"]] if w.node is trunk)
        if len(write.readers) != 1:
            continue
        pool = write.readers[0]
        pentry = lookup(pool.call.type_name)
        if pool.role != "block" or not _prunable(pentry and pentry.obj, "pooled_rows"):
            continue
        reads = [(i, b) for i, b in enumerate(pool.reads) if b.key != ports["x"]]
        if any(b.port in ("x", "mask", "context") for _, b in reads):  # the trunk's own arguments
            continue
        # the pooling's other inputs must be there before the trunk runs: the batch's own keys
        if any(flow.reads[(pool.path, i)].node.role not in ("source", "generator") for i, _ in reads):
            continue
        out.append(RowPruning(trunk.path, pool.path, tuple((b.port, b.key) for _, b in reads)))
    return out


def apply_row_pruning(model: Any, prunings: list[RowPruning]) -> None:
    """Hand each pruned trunk its pooling's `pooled_rows` and the pooling's other inputs."""
    for p in prunings:
        model.get_submodule(p.trunk).read_rows(model.get_submodule(p.pool).pooled_rows)
        for port, key in p.inputs:
            model.add_side_input(p.trunk, port, key)


def apply_training_rewrites(model: Any, program: Program) -> None:
    """Every whole-program rewrite a training session makes to its built model (l3m.model.fusion's
    fused LM-head losses, then the pruned trunks), in one place so that `l3m plan` simulates what
    training runs."""
    from l3m.model.fusion import apply_lm_loss_fusions, plan_lm_loss_fusions

    apply_lm_loss_fusions(model, plan_lm_loss_fusions(program))
    apply_row_pruning(model, plan_row_pruning(program))
