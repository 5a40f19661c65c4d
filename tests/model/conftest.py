"""Tiny registered blocks and a hand-made `Program` builder for the model tests.

Programs are built here by hand (what the resolver would produce: ports filled in, paths,
models and stages), so the builder is tested independently of the front end.
"""

from __future__ import annotations

import contextlib
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from l3m import registry
from l3m.dsl.ir import STAGES, Binding, Call, KeyDecl, ModelInfo, Node, Program, Section, Span
from l3m.registry import register

# Parts of the built-in library may still be missing while it is being written.
with contextlib.suppress(ModuleNotFoundError):
    registry.load_builtins()

SPAN = Span("test.l3m", 1, 1, 1, 2)


# -- toy blocks: small, exact, and each exercising one port feature ---------------------------


@register("block")
class ToyEmbed(nn.Module):
    """Token ids to vectors (an nn.Embedding inside, for weight tying)."""

    outputs = ("x",)

    def __init__(self, vocab: int, dim: int):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.emb(tokens)


@register("block")
class ToyLinear(nn.Module):
    """A linear map with an optional multiplicative `scale` input."""

    outputs = ("x",)

    def __init__(self, dim_in: int, dim_out: int, bias: bool = True):
        super().__init__()
        self.lin = nn.Linear(dim_in, dim_out, bias=bias)

    def forward(self, x: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
        y = self.lin(x)
        return y if scale is None else y * scale


@register("block")
class ToySplit(nn.Module):
    """Three outputs, the last optional: a projection, a doubled copy and the mean."""

    outputs = ("a", "b", "aux?")

    def __init__(self, dim: int):
        super().__init__()
        self.lin = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.lin(x), x * 2, x.mean()


@register("block")
class ToySum(nn.Module):
    """A variadic port: sums any number of tensors."""

    outputs = ("x",)

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        out = xs[0]
        for x in xs[1:]:
            out = out + x
        return out


@register("block")
class ToyHead(nn.Module):
    """Vectors to logits; `tie` names a block whose weight the builder shares (`.weight`)."""

    outputs = ("logits",)

    def __init__(self, dim: int, vocab: int, tie: str = ""):
        super().__init__()
        self.proj = nn.Linear(dim, vocab, bias=False)

    @property
    def weight(self) -> nn.Parameter:
        return self.proj.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


@register("loss")
class ToyMSE(nn.Module):
    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(pred, target)


@register("loss")
class ToyCE(nn.Module):
    """Cross-entropy over the last dim, also reporting accuracy."""

    outputs = ("loss", "accuracy")

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        flat = logits.flatten(0, -2)
        loss = F.cross_entropy(flat, targets.flatten())
        return loss, (flat.argmax(-1) == targets.flatten()).float().mean()


@register("loss")
class ToyTempLoss(nn.Module):
    """A loss with a learnable parameter (like CLIP's temperature)."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.scale.fill_(1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x * self.scale).pow(2).mean()


@register("metric")
class ToyMean(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean()


# -- a Program by hand --------------------------------------------------------------------------


def _bind(ports: list[registry.Port], keys: Any) -> list[Binding]:
    """Bindings from a list of keys (positional, a variadic port takes the rest) or {port: key}."""
    if isinstance(keys, dict):
        return [Binding(k, SPAN, port=p) for p, k in keys.items()]
    out, i = [], 0
    for key in keys:
        port = ports[min(i, len(ports) - 1)]
        out.append(Binding(key, SPAN, port=port.name))
        if not port.variadic:
            i += 1
    return out


def node(
    role: str,
    path: str,
    type_name: str,
    reads: Any = (),
    writes: Any = (),
    *args: Any,
    weight: float = 1.0,
    **kwargs: Any,
) -> Node:
    """A node as the resolver makes it; a block's model and stage come from its path."""
    entry = registry.lookup(type_name)
    assert entry is not None, type_name
    parts = path.split(".")
    model, stage = "", None
    if role == "block":
        if len(parts) >= 2 and parts[-2] in STAGES:
            stage, model = parts[-2], ".".join(parts[:-2])
        else:
            model = ".".join(parts[:-1])
    call = Call(type_name, SPAN, args=list(args), kwargs=dict(kwargs))
    return Node(
        parts[-1],
        path,
        role,
        call,
        SPAN,
        index=-1,
        model=model,
        stage=stage,
        reads=_bind(list(entry.inputs), reads),
        writes=_bind(list(entry.outputs), writes),
        weight=weight,
    )


def block(path: str, type_name: str, reads: Any, writes: Any, *args: Any, **kwargs: Any) -> Node:
    return node("block", path, type_name, reads, writes, *args, **kwargs)


def loss(name: str, type_name: str, reads: Any, writes: Any = (), *args: Any, **kwargs: Any) -> Node:
    return node("loss", f"loss.{name}", type_name, reads, writes, *args, **kwargs)


def metric(name: str, type_name: str, reads: Any, writes: Any = (), *args: Any, **kwargs: Any) -> Node:
    return node("metric", f"metric.{name}", type_name, reads, writes, *args, **kwargs)


def source(name: str, type_name: str, writes: Any, *args: Any, **kwargs: Any) -> Node:
    return node("source", f"data.{name}", type_name, (), writes, *args, **kwargs)


def program(
    *nodes: Node,
    keys: dict[str, tuple[str, list]] | None = None,
    lets: dict | None = None,
    optimizer: Call | None = None,
    **sections: dict,
) -> Program:
    """Nodes indexed in the order given; models (with parents) derived from the block paths."""
    for i, n in enumerate(nodes):
        n.index = i
    models: dict[str, ModelInfo] = {}
    for n in nodes:
        if n.role != "block" or not n.model:
            continue
        parts = n.model.split(".")
        for j in range(1, len(parts) + 1):
            path = ".".join(parts[:j])
            models.setdefault(path, ModelInfo(path, parts[j - 1], SPAN, ".".join(parts[: j - 1]) or None))
    return Program(
        file="test.l3m",
        lets=dict(lets or {}),
        nodes=list(nodes),
        models=list(models.values()),
        keys={k: KeyDecl(k, dtype, shape, SPAN) for k, (dtype, shape) in (keys or {}).items()},
        optimizer=optimizer,
        sections={name: Section(name, SPAN, dict(values)) for name, values in sections.items()},
    )


def call(type_name: str, **kwargs: Any) -> Call:
    return Call(type_name, SPAN, kwargs=kwargs)


@pytest.fixture
def ir() -> SimpleNamespace:
    """The hand-made IR helpers: `ir.block(...)`, `ir.program(...)`, ..."""
    return SimpleNamespace(
        block=block, loss=loss, metric=metric, source=source, program=program, call=call, node=node, span=SPAN
    )


@pytest.fixture
def gpt(ir: SimpleNamespace) -> Program:
    """A toy byte LM: embed -> linear (x -> x) -> tied head, cross-entropy and a metric."""
    return ir.program(
        ir.block("gpt.preprocessor.embed", "ToyEmbed", ["tokens"], ["x"], vocab=11, dim=8),
        ir.block("gpt.trunk.mix", "ToyLinear", ["x"], ["x"], 8, 8),
        ir.block("gpt.head.lm", "ToyHead", ["x"], ["logits"], dim=8, vocab=11, tie="gpt.preprocessor.embed"),
        ir.loss("ce", "ToyCE", ["logits", "targets"], ["loss"]),
        ir.metric("mean", "ToyMean", ["x"]),
        keys={"tokens": ("long", ["B", "N"]), "targets": ("long", ["B", "N"])},
        lets={"N": 5},
        optimizer=ir.call("AdamW", lr=1e-3),
    )


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    """A one-rank gloo process group and a 1-D `tp` mesh, for tensor-parallel plans on one process."""
    from torch.distributed.device_mesh import init_device_mesh

    if dist.is_initialized():
        pytest.skip("a process group is already initialised in this process")
    store = dist.FileStore(str(tmp_path_factory.mktemp("pg") / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        yield init_device_mesh("cpu", (1,), mesh_dim_names=("tp",))
    finally:
        dist.destroy_process_group()
