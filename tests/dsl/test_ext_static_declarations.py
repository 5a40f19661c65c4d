"""The static extension reader sees what `@register(...)` declares (shapes, checks, traits) and which
parameters take components (annotated with an `l3m.interfaces` interface), without importing anything."""

from __future__ import annotations

import sys
import textwrap

from l3m.dsl.ext_static import read_extension
from l3m.interfaces import FeedForward, Norm
from l3m.registry import register

SOURCE = textwrap.dedent('''
    from typing import Literal

    import l3m.interfaces as li
    from torch import nn

    import l3m
    from l3m import register
    from l3m.interfaces import Norm


    @register("block", shapes="x: [B, N, dim] -> x: [B, N, dim]",
              checks=[("dim % 2 == 0", "dim ({dim}) must be even")], tp_plan={"w": "colwise"},
              context_parallel="local")
    class DeclEven(nn.Module):
        outputs = ("x",)

        def __init__(self, dim: int, norm: Norm | Literal["layernorm"] = "layernorm", mlp: li.FeedForward | None = None,
                     other: l3m.interfaces.Norm | None = None):
            super().__init__()

        def forward(self, x):
            return x


    @register("block", shapes=SHAPES)  # computed: unknown, not an error
    class DeclComputed(nn.Module):
        def forward(self, x):
            return x
''')


def test_registration_declarations_and_interfaces_are_read_statically(tmp_path):
    (tmp_path / "decl_ext_mod.py").write_text(SOURCE)
    ext = read_extension("decl_ext_mod", [tmp_path])
    assert ext.error is None and "decl_ext_mod" not in sys.modules
    even = ext.entries["DeclEven"]
    assert even.shapes == "x: [B, N, dim] -> x: [B, N, dim]"
    assert even.checks == (("dim % 2 == 0", "dim ({dim}) must be even"),)
    assert even.extra["context_parallel"] == "local" and even.extra["tp_plan"] == {"w": "colwise"}
    hints = {p.name: p.annotation for p in even.signature.parameters.values()}
    assert Norm in hints["norm"].__args__ and FeedForward in hints["mlp"].__args__
    assert Norm in hints["other"].__args__
    assert ext.entries["DeclComputed"].shapes is None


def test_live_and_static_readings_agree(tmp_path):
    """Importing the same registration gives the class attributes the static reader reported."""
    from torch import nn

    @register("block", name="DeclLive", shapes="x: [B, dim] -> x: [B, dim]",
              checks=[("dim % 2 == 0", "dim ({dim}) must be even")], context_parallel="local")
    class Live(nn.Module):
        def forward(self, x):
            return x

    from l3m import registry

    try:
        entry = registry.lookup("DeclLive")
        assert (entry.shapes, entry.checks) == ("x: [B, dim] -> x: [B, dim]", (("dim % 2 == 0", "dim ({dim}) must be even"),))
        assert Live.context_parallel == "local"
    finally:
        registry._REGISTRY["block"].pop("DeclLive", None)


def test_a_registration_that_import_would_refuse_is_an_error(tmp_path):
    bad = SOURCE.replace('context_parallel="local"', 'context_parallel="locl"')
    (tmp_path / "decl_bad_mod.py").write_text(bad)
    ext = read_extension("decl_bad_mod", [tmp_path])
    assert ext.error.startswith("decl_bad_mod.py:") and "the registration of 'DeclEven': context_parallel must be " \
        "one of 'local', 'aware', 'whole', not 'locl' (did you mean 'local'?)" in ext.error
    (tmp_path / "decl_typo_mod.py").write_text(SOURCE.replace("tp_plan=", "tp_pln="))
    ext = read_extension("decl_typo_mod", [tmp_path])
    assert "unknown keyword 'tp_pln'; did you mean 'tp_plan'?" in ext.error
