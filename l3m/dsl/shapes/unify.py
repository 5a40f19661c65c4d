"""Matching a port's declared dims against the dims a key actually has, binding symbols on the way.

Only what is certainly wrong is reported: two different integers where one dim must be, or ranks that
cannot agree. Symbols (`B`, `N`) and unknown dims ("?", "...") never cause an error.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from l3m.dsl.shapes.spec import Dim, dim_names, eval_dim

ELLIPSIS = "..."


@dataclass
class Env:
    """Constructor arguments (ints, or "?" when not an int) and symbols bound so far."""

    args: dict[str, int | str]
    symbols: dict[str, int | str] = field(default_factory=dict)
    origin: dict[str, str] = field(default_factory=dict)  # symbol -> input port that bound it
    captured: tuple[int | str, ...] | None = None  # the dims the first "..." of an input matched

    def values(self) -> dict[str, int | str]:
        return {**self.symbols, **self.args}

    def value(self, d: Dim) -> int | str | None:
        return eval_dim(d, self.values())


@dataclass
class Mismatch:
    index: int | None  # the actual dim at fault (None: the rank)
    dim: Dim | None
    expected: int | str | None
    actual: int | str | None


def match(spec: tuple[Dim, ...], actual: tuple[int | str, ...], env: Env, port: str) -> list[Mismatch]:
    """Unify `spec` (a port's declared dims) with `actual`; binds symbols into `env`."""
    s_ell, a_ell = ELLIPSIS in spec, ELLIPSIS in actual
    ns, na = len(spec), len(actual)
    if (not s_ell and not a_ell and ns != na) or (s_ell and not a_ell and na < ns - 1) or \
            (a_ell and not s_ell and na - 1 > ns):
        return [Mismatch(None, None, ns - s_ell, na - a_ell)]
    out: list[Mismatch] = []
    i = 0
    while i < ns and i < na and spec[i] != ELLIPSIS and actual[i] != ELLIPSIS:
        _one(spec[i], actual[i], i, env, port, out)
        i += 1
    j = 0
    while j < ns - i and j < na - i and spec[-1 - j] != ELLIPSIS and actual[-1 - j] != ELLIPSIS:
        _one(spec[-1 - j], actual[-1 - j], na - 1 - j, env, port, out)
        j += 1
    if s_ell and env.captured is None:
        stopped_at_spec = i < ns and spec[i] == ELLIPSIS and ns - 1 - j == i
        env.captured = tuple(actual[i:na - j]) if stopped_at_spec else (ELLIPSIS,)
    return out


def _one(sd: Dim, ad: int | str, index: int, env: Env, port: str, out: list[Mismatch]) -> None:
    if sd == "_" or ad == "?":
        return
    if isinstance(sd, str) and sd not in env.args and sd not in env.symbols:
        env.symbols[sd] = ad
        env.origin[sd] = port
        return
    expected = env.value(sd)
    if isinstance(expected, int) and isinstance(ad, int) and expected != ad:
        out.append(Mismatch(index, sd, expected, ad))


def names_in(dims: tuple[Dim, ...] | None) -> set[str]:
    return set().union(*(dim_names(d) for d in dims)) if dims else set()
