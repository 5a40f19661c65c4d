"""Splitting a model's schedule into pipeline stages: pure Python over numbers, so that the runtime
(l3m.dist.pp), `l3m plan` and the torch-free `l3m graph` and lint all cut the same way.

A model is a sequence of units in schedule order: a block, or one layer of a block whose repeated
layers may be cut between (a Transformer's `layers`). Each unit reads and writes data_dict keys (the
layers of a cut block pass their running state under internal keys such as `gpt.trunk.blocks#x`) and
has a cost (FLOPs, or a proxy for them) and parameter bytes. `partition` chooses the contiguous split
into stages that minimises the most expensive stage (then the largest in parameter bytes), honouring
pinned stage starts; `live_keys` says which keys cross each cut: written before it (or read from the
batch) and read after it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

INTERNAL = "#"  # `<block path>#x`: the running state of a block cut between its layers


@dataclass(frozen=True)
class Unit:
    """One block, or one layer of a block (`layer` its index), in schedule order."""

    name: str  # "gpt.trunk.blocks" or "gpt.trunk.blocks.layers.3"
    block: str  # the block path
    reads: tuple[str, ...]
    writes: tuple[str, ...]
    cost: float = 1.0  # what the split balances (FLOPs, or a proxy)
    param_bytes: int = 0
    layer: int | None = None
    layers: int = 0  # how many layers the block has (with `layer`)


@dataclass
class Split:
    """Stages as `[start, stop)` unit ranges, and what each stage receives and sends on."""

    units: list[Unit]
    bounds: list[tuple[int, int]]
    live: list[list[str]] = field(default_factory=list)  # keys entering each stage (stage 0: from the batch)
    outputs: list[str] = field(default_factory=list)  # what the last stage hands the losses

    @property
    def stages(self) -> int:
        return len(self.bounds)

    def stage_units(self, i: int) -> list[Unit]:
        a, b = self.bounds[i]
        return self.units[a:b]

    def sends(self, i: int) -> list[str]:
        """The keys stage `i` hands on (the losses' inputs for the last stage)."""
        return self.live[i + 1] if i + 1 < self.stages else self.outputs

    def batch_keys(self, i: int) -> list[str]:
        """The keys live at the start of stage `i` that no earlier unit wrote: each pipeline rank reads
        them from its own copy of the batch, so they never cross a cut."""
        written = {k for u in self.units[: self.bounds[i][0]] for k in u.writes}
        return [k for k in self.live[i] if k not in written]

    def received(self, i: int) -> list[str]:
        """The keys that cross the cut into stage `i` (sent by stage i - 1)."""
        local = self.batch_keys(i)
        return [k for k in self.live[i] if k not in local]

    def cost(self, i: int) -> float:
        return sum(u.cost for u in self.stage_units(i))

    def param_bytes(self, i: int) -> int:
        return sum(u.param_bytes for u in self.stage_units(i))

    def describe(self, i: int) -> str:
        """`gpt.preprocessor.embed, gpt.preprocessor.pos, gpt.trunk.blocks.layers.0-5`: what stage `i` runs."""
        groups: list[list[Unit]] = []
        for u in self.stage_units(i):
            if groups and u.layer is not None and groups[-1][-1].layer is not None and groups[-1][-1].block == u.block:
                groups[-1].append(u)
            else:
                groups.append([u])
        parts = []
        for g in groups:
            if g[0].layer is None or (len(g) == g[0].layers):
                parts.append(g[0].block)
            elif len(g) == 1:
                parts.append(g[0].name)
            else:
                parts.append(f"{g[0].block}.layers.{g[0].layer}-{g[-1].layer}")
        return ", ".join(parts)


def live_keys(units: Sequence[Unit], needed: Sequence[str]) -> list[list[str]]:
    """For each unit index i (and len(units)), the keys live just before unit i: written earlier or
    taken from the batch, and read at i or later (or `needed` at the end) before being rewritten."""
    order: dict[str, int] = {}  # first mention, for a stable order
    for u in units:
        for k in (*u.reads, *u.writes):
            order.setdefault(k, len(order))
    for k in needed:
        order.setdefault(k, len(order))
    live: set[str] = set(needed)
    out: list[list[str]] = [sorted(live, key=order.__getitem__)]
    for u in reversed(units):
        live = (live - set(u.writes)) | set(u.reads)
        out.append(sorted(live, key=order.__getitem__))
    return out[::-1]


def unit_index(units: Sequence[Unit], name: str) -> int | None:
    """The unit a stage may start at, by its name (a block path, or `<block>.layers.K`)."""
    for i, u in enumerate(units):
        if u.name == name or (u.layer in (None, 0) and u.block == name):
            return i
    return None


def split_names(units: Sequence[Unit]) -> list[str]:
    """Every name a `pp_split` entry may give (for did-you-mean)."""
    return [u.name for u in units]


def partition(units: Sequence[Unit], stages: int, pins: Sequence[int] = (), needed: Sequence[str] = ()) -> Split:
    """The contiguous split of `units` into `stages` stages with the smallest most expensive stage, and
    among those the smallest largest stage in parameter bytes; every index in `pins` starts a stage.
    ValueError (one line) when it cannot be done."""
    n = len(units)
    if stages < 1:
        raise ValueError(f"a pipeline needs at least one stage, not {stages}")
    if stages > n:
        raise ValueError(f"{stages} pipeline stages need at least {stages} units to split, but the model has {n}")
    cuts = sorted(set(pins))
    if any(p <= 0 or p >= n for p in cuts):
        raise ValueError("a pinned split cannot be at the model's first unit")
    if len(cuts) > stages - 1:
        raise ValueError(f"{len(cuts)} pinned splits make more than {stages} stages")
    costs = [u.cost for u in units]
    if not any(costs):
        costs = [float(u.param_bytes) or 1.0 for u in units]
    prefix = [0.0]
    for c in costs:
        prefix.append(prefix[-1] + c)
    mem = [0]
    for u in units:
        mem.append(mem[-1] + u.param_bytes)
    pinned = set(cuts)
    inf = (float("inf"), float("inf"))
    # best[s][i]: the smallest (max-stage cost, then max-stage parameter bytes) of units[:i] in s stages
    # (equal-cost splits, common with identical layers, go to the one whose largest stage holds least);
    # back[s][i]: where the last stage starts
    best = [[inf] * (n + 1) for _ in range(stages + 1)]
    back = [[-1] * (n + 1) for _ in range(stages + 1)]
    best[0][0] = (0.0, 0)
    for s in range(1, stages + 1):
        for i in range(s, n + 1):
            for j in range(i - 1, s - 2, -1):  # the last stage is units[j:i]
                if best[s - 1][j] < inf:
                    done_cost, done_mem = best[s - 1][j]
                    cand = (max(done_cost, prefix[i] - prefix[j]), max(done_mem, mem[i] - mem[j]))
                    if cand < best[s][i]:
                        best[s][i], back[s][i] = cand, j
                if j in pinned:  # a stage cannot reach back across a pinned start
                    break
    if best[stages][n] == inf:
        raise ValueError(f"the pinned splits leave no way to make {stages} stages")
    bounds: list[tuple[int, int]] = []
    i = n
    for s in range(stages, 0, -1):
        j = back[s][i]
        bounds.append((j, i))
        i = j
    bounds.reverse()
    live = live_keys(units, needed)
    return Split(list(units), bounds, [live[a] for a, _ in bounds], list(needed))


def transformer_units(block: str, layers: int, args: Sequence[str], host: Sequence[str], writes: Sequence[str],
                      layer_costs: Sequence[float], layer_bytes: Sequence[int], has_aux: bool = False,
                      tail_bytes: int = 0) -> list[Unit]:
    """The units of a block cut between its layers: layer 0 reads the block's input `args[0]`
    and every layer its `host` keys (mask, context); the running `x` (and the MoE balancing sum)
    pass under internal keys; the last layer (with the final norm, `tail_bytes`) writes the block's keys."""
    state = [f"{block}{INTERNAL}x"] + ([f"{block}{INTERNAL}aux"] if has_aux else [])
    out: list[Unit] = []
    for i in range(layers):
        reads = ((args[0],) if i == 0 else tuple(state)) + tuple(host)
        last = i == layers - 1
        w = tuple(writes) if last else tuple(state)
        out.append(Unit(f"{block}.layers.{i}", block, reads, w, layer_costs[i],
                        layer_bytes[i] + (tail_bytes if last else 0), i, layers))
    return out


def stage_count(pp: int, schedule: str | None, virtual: int | None) -> int:
    """Pipeline stages of a mesh: `pp`, times `pp_virtual` (default 2) with the interleaved 1F1B schedule."""
    return pp * ((virtual or 2) if schedule == "interleaved_1f1b" else 1)


def interleave(split_stages: int, ranks: int) -> list[list[int]]:
    """The stages each pipeline rank runs (round-robin, as the interleaved schedules expect)."""
    return [list(range(r, split_stages, ranks)) for r in range(ranks)]


def stage_ranks(split_stages: int, ranks: int) -> list[int]:
    """The pipeline rank of each stage: `interleave` read the other way."""
    return [s % ranks for s in range(split_stages)]
