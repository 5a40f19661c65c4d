"""Whole-program fusions: what the compiler can do because it sees every reader of a key.

An LM head's `logits` are `[tokens, vocab]`; at a 50k vocabulary they (with their float32 copy, the
softmax and their gradient) are most of an LLM step's activation memory. When the program shows that
nothing but the cross-entropy (and a perplexity, which is the exponential of the same sum) reads
them, training computes that sum from the hidden states and the head weight in chunks of tokens
(`l3m.model.fused_ce`) and never forms them. `plan_lm_loss_fusions` decides from the program alone
(so `l3m plan` shows it); `apply_lm_loss_fusions` sets a built training model up for it. The weights,
their names and what the model computes in evaluation and generation stay the same: there the head
still writes logits. A fused head writes, in place of the logits, the 1-D tensor
`[loss sum, cross-entropy sum]`, which `LMCrossEntropy` and `Perplexity` read as such.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

from l3m.dsl.ir import Node, Program
from l3m.model.fused_ce import auto_chunk


@dataclass(frozen=True)
class LMLossFusion:
    """One LM head whose logits only a cross-entropy (and perplexity metrics) read."""

    head: str  # the head's block path (its module path in the MetaModel)
    loss: str  # the LMCrossEntropy node's path
    metrics: tuple[str, ...]  # Perplexity node paths
    targets: str  # the key the loss reads its targets from
    shift: bool
    ignore_index: int
    z_loss: float
    vocab: int
    chunk: int  # tokens per chunk

    def describe(self) -> str:
        """The line `l3m plan` prints."""
        readers = ", ".join([self.loss, *self.metrics])
        return (f"fused: lm head {self.head} + cross-entropy ({readers}), chunk {self.chunk:,} tokens: "
                f"no [tokens, {self.vocab:,}] logits in training")


def node_args(node: Node) -> dict[str, Any] | None:
    """The node's arguments with its class's defaults filled in; None when its name is unknown."""
    from l3m.registry import load_builtins, lookup

    load_builtins()
    entry = lookup(node.call.type_name)
    if entry is None:
        return None
    sig = entry.signature
    out = {n: p.default for n, p in sig.parameters.items() if p.default is not inspect.Parameter.empty}
    out.update(node.call.kwargs_for(sig))
    return out


def why_not_mesh(program: Program) -> str | None:
    mesh = program.section("mesh")
    for dim in ("tp", "cp", "pp"):
        if int(mesh.get(dim, 1) or 1) > 1:
            return f"mesh.{dim} > 1"
    return None


def plan_lm_loss_fusions(program: Program) -> list[LMLossFusion]:
    """Every LM head whose logits training can leave unformed (see the module doc)."""
    chunk = int(program.section("train").get("lm_loss_chunk", -1) or 0)
    if chunk == 0 or why_not_mesh(program) is not None:
        return []
    out = []
    written_by_blocks = [k for n in program.blocks for k in n.write_keys]
    for head in program.blocks:
        if head.call.type_name != "LMHead" or [b.port for b in head.writes] != ["logits"]:
            continue
        args = node_args(head)
        key = head.writes[0].key
        if args is None or written_by_blocks.count(key) != 1:
            continue
        readers = [n for n in program.nodes if key in n.read_keys]
        losses = [n for n in readers if n.role == "loss" and n.call.type_name == "LMCrossEntropy"]
        metrics = [n for n in readers if n.role == "metric" and n.call.type_name == "Perplexity"]
        if len(losses) != 1 or len(losses) + len(metrics) != len(readers):
            continue
        loss = losses[0]
        ports = loss.ports_in()
        largs = node_args(loss)
        if largs is None or ports.get("logits") != key or "targets" not in ports:
            continue
        targets = ports["targets"]
        if targets in written_by_blocks:
            continue
        same = all(m.ports_in() == ports and (a := node_args(m)) is not None and a["shift"] == largs["shift"]
                   and a["ignore_index"] == largs["ignore_index"] for m in metrics)
        if not same:
            continue
        vocab = int(args["vocab"])
        out.append(LMLossFusion(head.path, loss.path, tuple(m.path for m in metrics), targets, bool(largs["shift"]),
                                int(largs["ignore_index"]), float(largs["z_loss"]), vocab,
                                chunk if chunk > 0 else auto_chunk(vocab)))
    return out


def apply_lm_loss_fusions(model: Any, fusions: list[LMLossFusion]) -> None:
    """Point each fused head at its loss's settings and hand it the targets key (a side input, not
    one of the model's inputs: `input_keys` and the data the model asks for stay the same)."""
    for f in fusions:
        head = model.get_submodule(f.head)
        head.fuse_loss(shift=f.shift, ignore_index=f.ignore_index, z_loss=f.z_loss, chunk=f.chunk)
        model.add_side_input(f.head, "targets", f.targets)
