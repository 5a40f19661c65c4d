"""Parameter-name patterns that match nothing: settings that would silently do nothing.

`train.freeze` is checked where it is applied (`build_model`) and `train.init_include` /
`init_exclude` against the `init_from` file (both error E640). An optimizer's `no_decay` globs
only get a note (plan) or an info line (train): shared recipes list patterns for other models too.
Lint already checks these globs against the static parameter names (l3m.dsl.paramcheck); here
only those it could not judge (a block or loss whose parameters only its module knows) are said.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable

from l3m.dsl.diagnostics import Diagnostic
from l3m.dsl.ir import Program


def unused_no_decay(program: Program, names: Iterable[str]) -> list[str]:
    """A line for each `no_decay` glob of the optimizer that matches no parameter name."""
    from l3m.train.optim import clean_name

    call = program.optimizer
    globs = call.kwargs.get("no_decay") if call is not None else None
    if not isinstance(globs, list) or not globs:
        return []
    from l3m.dsl.paramcheck import model_params

    clean = [clean_name(n) for n in names]
    span = call.kwarg_spans.get("no_decay", call.type_span)
    static = model_params(program)  # lint judged (N640) every glob that cannot match an unknown block
    return [f"{span}: no_decay pattern {g!r} matches no parameter (weight decay applies as if it were not there)"
            for g in globs if isinstance(g, str) and static.could_match_unknown(g)
            and not any(fnmatch.fnmatchcase(n, g) for n in clean)]


def check_init_globs(program: Program, source: str, names: Iterable[str]) -> None:
    """Raise `ProgramError` (E640) when a `train.init_include` / `init_exclude` glob matches no tensor
    name of the `init_from` file: a misspelt selection would load nothing (or everything) silently."""
    from l3m.model.blame import GLOB_CODE, ProgramError, setting_span

    train = program.section("train")
    names = list(names)
    for key in ("init_include", "init_exclude"):
        for g in train.get(key) or []:
            if not any(fnmatch.fnmatchcase(n, g) for n in names):
                example = f", such as '{names[0]}'" if names else ""
                raise ProgramError(Diagnostic(GLOB_CODE, f"train.{key} pattern {g!r} matches no tensor of '{source}'",
                                              setting_span(program, "train", key),
                                              f"patterns match the file's own tensor names{example}"))
