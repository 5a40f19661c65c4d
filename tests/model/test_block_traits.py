"""Traits declared at registration (or in the class body) drive tensor/context parallelism, activation
checkpointing and FSDP units, with no list of class names: an extension block gets what a built-in gets."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from l3m import registry
from l3m.dist.ac import apply_ac
from l3m.dist.cp import check_cp
from l3m.dist.tp import check_tp
from l3m.dist.units import declared_units, repeated_layers
from l3m.model.blocks.layers import collect_tp_plan
from l3m.model.core import MetaModel, ReadWriteBlock


@pytest.fixture
def reg():
    """`register` for test-only names, removed from the live registry afterwards."""
    added: list[str] = []

    def register(*args, **kwargs):
        wrap = registry.register(*args, **kwargs)

        def inner(cls):
            added.append(kwargs.get("name") or cls.__name__)
            return wrap(cls)

        return inner

    yield register
    for name in added:
        for table in registry._REGISTRY.values():
            table.pop(name, None)


def model_of(**blocks: nn.Module) -> MetaModel:
    return MetaModel([(f"m.trunk.{name}", ReadWriteBlock(b, ["x"])) for name, b in blocks.items()])


class Pair(nn.Module):
    outputs = ("x",)

    def __init__(self, dim: int = 4):
        super().__init__()
        self.w1, self.w2 = nn.Linear(dim, 2 * dim), nn.Linear(2 * dim, dim)

    def forward(self, x):
        return self.w2(self.w1(x))


def test_registration_keywords_become_class_attributes(reg):
    @reg("block", shapes="x: [B, dim] -> x: [B, dim]", checks=[("dim > 1", "dim ({dim}) must exceed 1")],
         tp_plan={"w1": "colwise", "w2": "rowwise"}, context_parallel="local")
    class TraitPair(Pair):
        pass

    assert TraitPair.context_parallel == "local" and TraitPair.tp_plan == {"w1": "colwise", "w2": "rowwise"}
    entry = registry.lookup("TraitPair")
    assert entry.shapes == "x: [B, dim] -> x: [B, dim]"
    assert entry.checks == (("dim > 1", "dim ({dim}) must exceed 1"),)
    assert "tp_plan" not in entry.extra  # traits are class attributes, not extra metadata


def test_bad_declarations_name_the_class(reg):
    with pytest.raises(ValueError, match=r"of .*BadCP .*context_parallel must be one of.*did you mean 'local'"):
        @reg("block", context_parallel="locl")
        class BadCP(Pair):
            pass
    with pytest.raises(ValueError, match=r"BadStyle.*tp_plan\['w1'\]: unknown style 'colwize'.*did you mean 'colwise'"):
        @reg("block", tp_plan={"w1": "colwize"})
        class BadStyle(Pair):
            pass
    with pytest.raises(TypeError, match=r"Typo.*unknown keyword 'tp_pln'; did you mean 'tp_plan'"):
        @reg("block", tp_pln={"w1": "colwise"})
        class Typo(Pair):
            pass
    with pytest.raises(TypeError, match=r"Singular.*unknown keyword 'shape'; did you mean 'shapes'"):
        @reg("block", shape="x: [B] -> x: [B]")
        class Singular(Pair):
            pass
    with pytest.raises(ValueError, match=r"Twice.*`shapes` is declared both in the class body"):
        @reg("block", shapes="x: [B] -> x: [B]")
        class Twice(Pair):
            shapes = "x: [B, N] -> x: [B, N]"
    with pytest.raises(TypeError, match=r"BadChecks.*checks must be a sequence of \(expression, message\)"):
        @reg("block", checks=["dim > 1"])
        class BadChecks(Pair):
            pass


def test_named_tp_styles_become_torch_styles():
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel

    class Declared(Pair):
        tp_plan = {"w1": "colwise", "w2": "rowwise"}

    class Method(Pair):
        def tp_plan(self):
            return {"w1": "colwise_gather"}

    plan = collect_tp_plan(nn.ModuleDict({"a": Declared(), "b": Method()}))
    assert set(plan) == {"a.w1", "a.w2", "b.w1"}
    assert isinstance(plan["a.w1"], ColwiseParallel) and isinstance(plan["a.w2"], RowwiseParallel)
    assert isinstance(plan["b.w1"], ColwiseParallel)

    class Wrong(Pair):
        def tp_plan(self):
            return {"w1": "diagonal"}

    with pytest.raises(ValueError, match=r"holder \(Wrong\): unknown tensor-parallel style 'diagonal'"):
        collect_tp_plan(nn.ModuleDict({"holder": Wrong()}))


def test_tp_problem_trait_refuses_a_size():
    class Halves(Pair):
        def tp_problem(self, tp):
            return None if 8 % tp == 0 else f"needs its 8 hidden units to divide by {tp}"

    model = model_of(h=Halves())
    check_tp(model, 4)
    with pytest.raises(ValueError, match=r"over 3 ranks cannot split 'm.trunk.h' \(Halves\): it needs its 8 hidden"):
        check_tp(model, 3)


def test_context_parallel_follows_the_declared_traits():
    class Undeclared(Pair):
        pass

    class Local(Pair):
        context_parallel = "local"

    class Whole(nn.Module):
        context_parallel = "whole"

    assert check_cp(model_of(a=Local())) == []
    # a block that declares nothing runs on the gathered sequence (l3m.dist.cp_whole)
    assert check_cp(model_of(a=Local(), u=Undeclared())) == ["m.trunk.u"]
    inner = Local()
    inner.pool = Whole()
    with pytest.raises(ValueError, match=r"'m.trunk.a.pool' \(Whole, a part of block 'm.trunk.a' \(Local\)\)"):
        check_cp(model_of(a=inner))


def test_builtin_attention_declares_its_traits():
    """Self-attention handles a slice, cross-attention refuses; a head group split is refused."""
    from l3m.model.blocks.attention import Attention

    assert Attention(16, 4).context_parallel == "aware"
    assert Attention(16, 4, cross=True).context_parallel == "whole"
    assert Attention(16, 4, kv_heads=2).tp_problem(2) is None
    assert "key/value heads (2) to divide by 4" in Attention(16, 4, kv_heads=2).tp_problem(4)


class Layered(nn.Module):
    """Repeated layers under a name of its own choosing (not `layers`)."""

    layer_lists = ("stack",)

    def __init__(self, depth: int = 3):
        super().__init__()
        self.stack = nn.ModuleList(Pair() for _ in range(depth))
        self.layers = nn.ModuleList([Pair()])  # not declared: not a list of repeated layers

    def forward(self, x):
        for layer in self.stack:
            x = layer(x)
        return x


def test_layer_lists_are_the_checkpoint_units():
    model = model_of(s=Layered(3))
    (found,) = repeated_layers(model)
    assert found is model.get_submodule("m.trunk.s.stack")
    x = torch.randn(2, 4)
    before = model.get_submodule("m.trunk.s")(x)
    assert apply_ac(model, "full") == 3
    assert all(type(layer).__name__ == "CheckpointWrapper" for layer in model.get_submodule("m.trunk.s.stack"))
    torch.testing.assert_close(model.get_submodule("m.trunk.s")(x), before)


def test_ac_parts_name_what_a_sub_layer_mode_checkpoints():
    class Part(Pair):
        ac_parts = {"mlp": ("w2",)}

    class Host(Layered):
        def __init__(self):
            super().__init__(0)
            self.stack = nn.ModuleList([Part(), Part()])

    model = model_of(h=Host())
    assert apply_ac(model, "mlp") == 2
    stack = model.get_submodule("m.trunk.h.stack")
    assert all(type(p.w2).__name__ == "CheckpointWrapper" and isinstance(p.w1, nn.Linear) for p in stack)


def test_fsdp_units_resolve_inside_the_block():
    class Big(Pair):
        fsdp_units = ("w1",)

    block = Big()
    assert declared_units(block, "m.trunk.b") == [block.w1]
    Big.fsdp_units = ("w3",)
    with pytest.raises(ValueError, match=r"block 'm.trunk.b' \(Big\) declares fsdp_units 'w3'"):
        declared_units(block, "m.trunk.b")


def test_an_uninitialised_tensor_names_the_class_that_should_fill_it():
    from l3m.model.init import check_initialised

    class Forgetful(nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(torch.ones(4))

    class Partial(Pair):
        def __init__(self):
            super().__init__()
            self.gain = nn.Parameter(torch.ones(4))
            self.bias = nn.Parameter(torch.ones(4))

        def init_weights(self):
            nn.init.ones_(self.gain)

    with torch.device("meta"):
        m = nn.ModuleDict({"f": Forgetful(), "p": Partial()})
    m.to_empty(device="cpu")
    with pytest.raises(RuntimeError, match=r"2 tensor\(s\) were not initialised by init_weights\(\): f.scale "
                                           r"\(Forgetful has no init_weights\(\)\), p.bias "
                                           r"\(Partial.init_weights\(\) does not fill it\); every module"):
        check_initialised(m)


def test_no_parallelism_code_lists_block_classes():
    """Regression guard: the parallelizer and the planner import no block class (traits say it all)."""
    import ast
    from pathlib import Path

    import l3m

    root = Path(l3m.__file__).parent
    for path in [*sorted((root / "dist").glob("*.py")), root / "plan.py"]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("l3m.model.blocks"):
                assert node.module == "l3m.model.blocks.layers" and [a.name for a in node.names] == \
                    ["collect_tp_plan"], f"{path.name} imports {node.module}: {[a.name for a in node.names]}"
