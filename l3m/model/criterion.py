"""The objective: every loss and metric of a program as one module.

`Criterion(data_dict)` returns the weighted total loss (what the trainer differentiates) and a
dictionary of detached values to log: each loss term unweighted under its node name, and each
metric. A loss with several outputs differentiates its first and logs the others as
`<name>/<port>`; a metric with several outputs logs each as `<name>/<port>`. Metrics run
without autograd. Losses may own parameters (a learnable temperature): they are parameters
of this module, for the optimizer to include.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from l3m.dsl.ir import Node, Program
from l3m.model.blame import BlockFailure
from l3m.model.build import entry_for, instantiate
from l3m.model.core import Binding, ReadWriteBlock, bind_ports


class Criterion(nn.Module):
    """Losses and metrics bound to their keys; `forward(d) -> (total, logs)`.

    `losses` holds `(name, bound module, output port names, weight)`, `metrics`
    `(name, bound module, output port names)`. Each loss and metric module is a child under its
    own name, so a learnable loss parameter is `<loss>.<param>` (`clip.logit_scale`; the trainer
    shows it as `criterion.clip.logit_scale`); the keys each one reads stay beside the module tree.
    """

    def __init__(
        self,
        losses: Sequence[tuple[str, ReadWriteBlock, Sequence[str], float]],
        metrics: Sequence[tuple[str, ReadWriteBlock, Sequence[str]]] = (),
    ):
        super().__init__()
        if not losses:
            raise ValueError("a criterion needs at least one loss")
        names = [t[0] for t in [*losses, *metrics]]
        if len(set(names)) != len(names):
            raise ValueError(f"loss and metric names must be unique: {names}")
        self._losses = [name for name, *_ in losses]
        self._metrics = [name for name, *_ in metrics]
        self._weights = {name: float(w) for name, _, _, w in losses}
        self._ports = {name: tuple(ports) for name, _, ports, *_ in [*losses, *metrics]}
        self._bindings: dict[str, Binding] = {}
        for name, rw, *_ in [*losses, *metrics]:
            # A class or instance attribute (`train`, `weights`, ...) would shadow the module.
            if hasattr(type(self), name) or name in self.__dict__:
                raise ValueError(f"cannot name a loss or metric {name!r}: the name is reserved (an attribute "
                                 f"of {type(self).__name__})")
            self.add_module(name, rw.block)
            self._bindings[name] = rw.binding

    @property
    def weights(self) -> dict[str, float]:
        """Each loss term's weight, in declaration order."""
        return dict(self._weights)

    @property
    def ports(self) -> dict[str, tuple[str, ...]]:
        """Each loss and metric's output port names."""
        return dict(self._ports)

    @property
    def losses(self) -> dict[str, ReadWriteBlock]:
        """Each loss bound to its keys, in declaration order."""
        return {name: ReadWriteBlock.of(getattr(self, name), self._bindings[name]) for name in self._losses}

    @property
    def metrics(self) -> dict[str, ReadWriteBlock]:
        """Each metric bound to its keys, in declaration order."""
        return {name: ReadWriteBlock.of(getattr(self, name), self._bindings[name]) for name in self._metrics}

    def _log(self, logs: dict[str, torch.Tensor], name: str, values: Sequence[Any], skip: int) -> None:
        ports = self._ports[name]
        for port, value in list(zip(ports, values))[skip:]:
            if isinstance(value, torch.Tensor):
                logs[name if len(ports) == 1 else f"{name}/{port}"] = value.detach()

    def forward(self, d: Mapping[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        total, logs = self._run(d, None, exact_losses=False)
        return total, logs

    def forward_stats(
        self, d: Mapping[str, Any], *, exact_losses: bool = False, unit: float = 1.0
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """`(total, logs, stats)`: `stats[key]` is a float64 `[sum, count]` for each 0-dim logged
        value and `"loss"`, to be added up over micro-batches and ranks; `finish(key, sum / count)`
        is then the value of the whole. Metrics with `statistics` give theirs (correct samples,
        summed token losses, ...); other values count with weight `unit` (1 in training: a mean
        of per-micro-batch values, which is what the gradient of the losses averages; the batch's
        samples in evaluation). With `exact_losses` (for evaluation, without gradients) losses
        with `statistics` give theirs too.
        """
        stats: dict[str, torch.Tensor] = {}
        total, logs = self._run(d, stats, exact_losses=exact_losses)
        weight = torch.full((), float(unit), dtype=torch.float64, device=total.device)
        for k, v in {"loss": total.detach(), **logs}.items():
            if k not in stats and v.dim() == 0:
                stats[k] = torch.stack([v.double() * weight, weight])
        return total, logs, stats

    def finish(self, key: str, mean: torch.Tensor) -> torch.Tensor:
        """A logged value from the mean of its statistics (`exp` for perplexity; most: the mean)."""
        fn = getattr(getattr(self, key.split("/", 1)[0], None), "finish", None) if key != "loss" else None
        return fn(mean) if callable(fn) else mean

    def _statistics(self, name: str, d: Mapping[str, Any], stats: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """Put a loss or metric's `[sum, count]` pairs into `stats`; its finished values, in port order."""
        b, module, ports = self._bindings[name], getattr(self, name), self._ports[name]
        pairs = module.statistics(*[d[k] for k in b.args], **{p: d[k] for p, k in b.kwargs.items()})
        values = []
        for port, (num, den) in zip(ports, pairs):
            stats[name if len(ports) == 1 else f"{name}/{port}"] = torch.stack([num.double(), den.double()])
            values.append(self.finish(name, num.double() / den.double().clamp(min=1.0)).float())
        return values

    def _run(self, d: Mapping[str, Any], stats: dict[str, torch.Tensor] | None,
             exact_losses: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        terms: list[torch.Tensor] = []
        logs: dict[str, torch.Tensor] = {}
        for name in self._losses:
            if stats is not None and exact_losses and hasattr(getattr(self, name), "statistics"):
                values = self._statistics(name, d, stats)
            else:
                values = self._bindings[name].call(getattr(self, name), d)
            term = values[0]
            if term.dim() != 0:
                raise ValueError(f"loss {name!r} must return a scalar, got shape {tuple(term.shape)}")
            weight = self._weights[name]
            terms.append(term if weight == 1.0 else term * weight)  # x * 1.0 would cost an op each way
            logs[name] = term.detach()
            self._log(logs, name, values, skip=1)
        with torch.no_grad():
            for name in self._metrics:
                if stats is not None and hasattr(getattr(self, name), "statistics"):
                    self._log(logs, name, self._statistics(name, d, stats), skip=0)
                else:
                    self._log(logs, name, self._bindings[name].call(getattr(self, name), d), skip=0)
        total = terms[0]
        for t in terms[1:]:
            total = total + t
        return total, logs

    def extra_repr(self) -> str:
        """The loss weights, then the keys each loss and metric reads and writes."""
        weights = "weights=" + ", ".join(f"{n}={w:g}" for n, w in self._weights.items())
        return "\n".join([weights, *(f"{n}: {b}" for n, b in self._bindings.items())])


def _log_names(nodes: Sequence[Node]) -> dict[str, str]:
    """Node name when names are unique across losses and metrics, otherwise the path (`loss_text`)."""
    names = [n.name for n in nodes]
    unique = len(set(names)) == len(names)
    return {n.path: n.name if unique else n.path.replace(".", "_") for n in nodes}


def _bind(node: Node, module: nn.Module, ports_out: Sequence[str]) -> ReadWriteBlock:
    """Bind a loss or metric's inputs; outputs need no key (the criterion returns them)."""
    where = f"{node.span}: {node.path}"
    if any(b.port is None for b in node.reads):
        raise ValueError(f"{where}: input keys are not bound to ports (run the resolver first)")
    entry = entry_for(node.call, (node.role,), where)
    args, kwargs = bind_ports(entry.inputs, [(b.port, b.key) for b in node.reads], where)
    written = {b.port: b.key for b in node.writes}
    return ReadWriteBlock(module, args, kwargs, [written.get(p) for p in ports_out])


def build_criterion(
    program: Program, *, device: str | torch.device | None = None, metrics: bool = True
) -> Criterion:
    """The program's losses (weighted by `node.weight`) and, unless `metrics=False`, its metrics."""
    roles = ("loss", "metric") if metrics else ("loss",)
    nodes = sorted([n for n in program.nodes if n.role in roles], key=lambda n: n.index)
    names = _log_names(nodes)
    losses: list[tuple[str, ReadWriteBlock, Sequence[str], float]] = []
    mets: list[tuple[str, ReadWriteBlock, Sequence[str]]] = []
    with torch.device(device) if device is not None else contextlib.nullcontext():
        for node in nodes:
            entry = entry_for(node.call, (node.role,), f"{node.span}: {node.path}")
            ports = [p.name for p in entry.outputs]
            try:
                module = instantiate(node.call, entry)
            except Exception as e:  # the loss's own constructor refused its arguments: the file's mistake
                raise BlockFailure(node, e, building=True) from e
            rw = _bind(node, module, ports)
            if node.role == "loss":
                losses.append((names[node.path], rw, ports, node.weight))
            else:
                mets.append((names[node.path], rw, ports))
    return Criterion(losses, mets)
