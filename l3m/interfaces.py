"""Interfaces: the kinds of component a block argument accepts (torch-free, read by lint).

A block parameter annotated with an interface (`norm: Norm`, `attn: AttentionLayer | None`) takes a
*component*: a call of a registered entry that implements the interface, written as an argument value
(`Transformer(attn = Attention(pos = Rope2d()))`). An entry implements an interface by subclassing it
(`class RMSNorm(nn.Module, Norm)`); the manifest records the interfaces of every entry.

The host block builds its components itself, because only it knows their context (its width, its heads,
its depth). It receives each one as a `l3m.model.components.Factory` and calls it with that context; the
arguments written in the file (and `default` statements) win over what the host supplies. `supplied` names
the constructor parameters every host of the interface provides, so a component may leave them out.

A signature default that is a component is written `use("Attention")`: the resolver materialises it as if
the file had written `Attention()` there, so `default Attention(...)` and `plan --why` reach it too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class Interface:
    """Base of every interface; `supplied`: the parameters a host always provides."""

    supplied: tuple[str, ...] = ()


class Norm(Interface):
    """A normalisation layer over the last dimension: `x -> x`."""

    supplied = ("dim",)


class FeedForward(Interface):
    """A position-wise feed-forward layer `x -> x` (or `x -> x, aux_loss` for mixture-of-experts)."""

    supplied = ("dim",)


class AttentionLayer(Interface):
    """A (self- or cross-) attention layer over `[B, N, dim]` tokens."""

    supplied = ("dim", "heads")


class Positional(Interface):
    """A relative position encoding applied to queries and keys inside attention (RoPE and its kin).
    Its host, an attention, knows its head size and its query and key/value heads."""

    supplied = ("head_dim", "heads", "kv_heads")


class LinearAdapter(Interface):
    """A trainable update of a host's linear projections (LoRA): the host hands it each projection to wrap."""


class BranchAdapter(Interface):
    """A small module on a residual branch's output, `x -> x` (a bottleneck adapter)."""

    supplied = ("dim",)


INTERFACES: dict[str, type[Interface]] = {
    c.__name__: c for c in (Norm, FeedForward, AttentionLayer, Positional, LinearAdapter, BranchAdapter)
}


@dataclass(frozen=True)
class Use:
    """A component named in a signature default: `attn: AttentionLayer | None = use("Attention")`."""

    name: str
    kwargs: tuple[tuple[str, Any], ...] = ()

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.kwargs)
        return f"use({self.name!r}{', ' if args else ''}{args})"


def use(name: str, **kwargs: Any) -> Use:
    """The default `name(**kwargs)` for a component parameter."""
    return Use(name, tuple(sorted(kwargs.items())))


def interfaces_of(cls: Any) -> tuple[str, ...]:
    """The names of the interfaces a registered class implements (its `Interface` bases)."""
    if not isinstance(cls, type):
        return ()
    return tuple(c.__name__ for c in cls.__mro__ if c in INTERFACES.values())
