"""ReadWriteBlock's dict contract and the MetaModel's generated straight-line forward."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from torch import nn

from l3m.model.core import MetaModel, ReadWriteBlock, Stage, bind_outputs, bind_ports, params_by_block
from l3m.registry import Port

torch.manual_seed(0)


class Recorder(nn.Module):
    """Returns (x + 1, x * 2, x.sum()) and remembers what it was called with."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(3))
        self.calls: list[tuple] = []

    def forward(self, x, y=None, z=None):
        self.calls.append((x, y, z))
        return x * self.w + 1, x * 2, x.sum()


class Lin(nn.Module):
    def __init__(self, n: int = 4):
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(n, n)])

    def forward(self, x, scale=None):
        y = self.layers[0](x)
        return y if scale is None else y * scale


class Split(nn.Module):
    def forward(self, x):
        return x.relu(), x.sum()


def rw(module: nn.Module, args=("x",), kwargs=None, writes=("x",)) -> ReadWriteBlock:
    return ReadWriteBlock(module, args, kwargs, writes)


# -- binding ports ------------------------------------------------------------------------------


def test_bind_ports_positional_then_keyword_after_a_gap():
    ports = [Port("x"), Port("y", optional=True), Port("z", optional=True)]
    assert bind_ports(ports, [("x", "a"), ("y", "b")]) == (("a", "b"), {})
    assert bind_ports(ports, [("z", "c"), ("x", "a")]) == (("a",), {"z": "c"})


def test_bind_ports_variadic_takes_every_key_in_order():
    ports = [Port("xs", optional=True, variadic=True)]
    assert bind_ports(ports, [("xs", "a"), ("xs", "b"), ("xs", "c")]) == (("a", "b", "c"), {})


@pytest.mark.parametrize(
    "reads, message",
    [([("q", "a")], "no input port 'q'"), ([("y", "b")], "required input port 'x'"),
     ([("x", "a"), ("x", "b")], "more than once")],
)  # fmt: skip
def test_bind_ports_errors(reads, message):
    with pytest.raises(ValueError, match=message):
        bind_ports([Port("x"), Port("y", optional=True)], reads)


def test_bind_outputs_drops_unbound_optional_and_rejects_unbound_required():
    ports = [Port("a"), Port("b"), Port("aux", optional=True)]
    assert bind_outputs(ports, [("b", "k2"), ("a", "k1")]) == ("k1", "k2", None)
    with pytest.raises(ValueError, match="'b' is not bound"):
        bind_outputs(ports, [("a", "k1")])
    with pytest.raises(ValueError, match="same key"):
        bind_outputs(ports, [("a", "k"), ("b", "k")])


# -- ReadWriteBlock -----------------------------------------------------------------------------


def test_read_write_block_reads_and_writes_only_its_keys():
    block = Recorder()
    bound = ReadWriteBlock(block, ["x"], {"z": "zz"}, ["out", "twice", None])
    d = {"x": torch.ones(3), "zz": torch.zeros(3), "y": torch.full((3,), 7.0), "other": 5}
    out = bound(d)
    x, y, z = block.calls[0]
    assert x is d["x"] and y is None and z is d["zz"]  # `y` is in the dict but not bound
    assert set(out) == {"x", "zz", "y", "other", "out", "twice"}  # the unbound optional `aux` is dropped
    assert torch.equal(out["out"], torch.full((3,), 2.0)) and torch.equal(out["twice"], torch.full((3,), 2.0))
    assert set(d) == {"x", "zz", "y", "other"}  # the caller's dict is left alone
    assert bound.read_keys == ("x", "zz") and bound.write_keys == ("out", "twice")


def test_read_write_block_checks_the_number_of_outputs():
    bound = ReadWriteBlock(Recorder(), ["x"], writes=["a", "b"])
    with pytest.raises(TypeError, match="must return 2 outputs, got 3"):
        bound({"x": torch.ones(3)})


# -- MetaModel ----------------------------------------------------------------------------------


def three_blocks() -> MetaModel:
    return MetaModel([
        ("preprocessor.inp", rw(Lin())),
        ("trunk.blocks", rw(Lin(), kwargs={"scale": "s"})),
        ("image.trunk.enc", rw(Lin(), args=("x",), writes=("y",))),
    ])  # fmt: skip


def test_parameter_names_follow_stage_block_and_submodel():
    names = [n for n, _ in three_blocks().named_parameters()]
    assert names[:2] == ["preprocessor.inp.layers.0.weight", "preprocessor.inp.layers.0.bias"]
    assert "trunk.blocks.layers.0.weight" in names
    assert "image.trunk.enc.layers.0.weight" in names
    assert not any(".block." in n for n in names)  # no wrapper segment: names follow the file


def test_stages_hold_the_blocks_themselves_and_bindings_stay_outside_the_module_tree():
    blocks = [Lin(), Lin(), Lin()]
    model = MetaModel([
        ("preprocessor.inp", rw(blocks[0])),
        ("trunk.blocks", rw(blocks[1], kwargs={"scale": "s"})),
        ("image.trunk.enc", rw(blocks[2], writes=("y",))),
    ])  # fmt: skip
    assert model.preprocessor.inp is blocks[0] and model.image.trunk.enc is blocks[2]
    assert {type(m) for m in model.modules()} == {MetaModel, Stage, Lin, nn.ModuleList, nn.Linear}
    items = model.block_items()
    assert [(p, b.block) for p, b in items] == [
        ("preprocessor.inp", blocks[0]), ("trunk.blocks", blocks[1]), ("image.trunk.enc", blocks[2])
    ]  # fmt: skip
    assert items[1][1].read_keys == ("x", "s") and items[2][1].write_keys == ("y",)
    assert set(model.state_dict()) == {n for n, _ in model.named_parameters()}
    assert "trunk.blocks: x, scale=s -> x\n" in repr(model)  # the keys still print with the model


def test_generated_forward_is_straight_line_and_matches_the_dict_contract():
    model = three_blocks()
    code = model.code
    assert "for " not in code and "if " not in code
    assert "self.trunk.blocks(x_1, scale=d['s'])" in code
    assert "self.image.trunk.enc(x_2)" in code  # reads the latest version of `x`
    d = {"x": torch.randn(2, 4), "s": torch.randn(2, 4)}
    out = model(d)
    assert set(out) == {"x", "s", "y"}
    expect = model.forward_eager(d)
    for k in out:
        torch.testing.assert_close(out[k], expect[k])
    by_hand = model.trunk.blocks(model.preprocessor.inp(d["x"]), d["s"])
    torch.testing.assert_close(out["x"], by_hand)
    torch.testing.assert_close(out["y"], model.image.trunk.enc(by_hand))
    assert model.input_keys == ["x", "s"] and model.output_keys == ["x", "y"]


def test_multiple_outputs_and_an_unbound_optional_output():
    model = MetaModel([("trunk.r", ReadWriteBlock(Recorder(), ["x"], writes=["a", "b", None]))])
    assert "a_1, b_1, _ = self.trunk.r(d['x'])" in model.code
    out = model({"x": torch.ones(3)})
    assert set(out) == {"x", "a", "b"}


def test_schedule_orders_execution_but_not_parameter_names():
    a, b = rw(Lin(), args=("y",), writes=("z",)), rw(Lin(), args=("x",), writes=("y",))
    model = MetaModel([("trunk.a", a), ("trunk.b", b)], schedule=["trunk.b", "trunk.a"])
    assert [n for n, _ in model.named_parameters()][0].startswith("trunk.a.")
    assert model.code.index("self.trunk.b(") < model.code.index("self.trunk.a(")
    x = torch.randn(2, 4)
    torch.testing.assert_close(model({"x": x})["z"], a.block(b.block(x)))
    with pytest.raises(ValueError, match="missing: \\['trunk.a'\\]"):
        MetaModel([("trunk.a", rw(Lin())), ("trunk.b", rw(Lin()))], schedule=["trunk.b"])


def test_key_text_is_only_ever_a_string_literal():
    evil = "x'] + __import__('os').getcwd() + d['"
    model = MetaModel([
        ("trunk.a", rw(Lin(), args=(evil,), writes=("y z",))),
        ("trunk.b", ReadWriteBlock(Split(), ["y z"], writes=["y-z", "y.z"])),
    ])  # fmt: skip
    assert repr(evil) in model.code and "y_z_2, y_z_2_ = " in model.code
    out = model({evil: torch.randn(2, 4)})
    assert set(out) == {evil, "y z", "y-z", "y.z"}
    torch.testing.assert_close(out["y.z"], out["y z"].sum())


def test_odd_module_names_are_reached_with_getattr_and_reserved_ones_are_refused():
    model = MetaModel([("trunk.lambda", rw(Lin()))])
    assert "getattr(self.trunk, 'lambda')(d['x'])" in model.code
    assert model({"x": torch.randn(1, 4)})["x"].shape == (1, 4)
    with pytest.raises(ValueError, match="'train' is reserved \\(an attribute of Stage\\)"):
        MetaModel([("trunk.train", rw(Lin()))])
    with pytest.raises(ValueError, match="'code' is reserved \\(an attribute of MetaModel\\)"):
        MetaModel([("code.a", rw(Lin()))])
    with pytest.raises(ValueError, match="collides"):
        MetaModel([("trunk", rw(Lin())), ("trunk.b", rw(Lin()))])


def test_copies_and_pickles_regenerate_the_forward():
    model = three_blocks()
    d = {"x": torch.randn(2, 4), "s": torch.randn(2, 4)}
    for other in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert other.code == model.code
        torch.testing.assert_close(other(d)["y"], model(d)["y"])
        torch.testing.assert_close(other.forward_eager(d)["y"], model(d)["y"])
        assert other.trunk.blocks is not model.trunk.blocks
        assert [(p, b.block) for p, b in other.block_items()][1] == ("trunk.blocks", other.trunk.blocks)


def test_replacing_a_block_in_place_is_seen_by_the_forward():
    model = three_blocks()
    model.image.trunk.enc = nn.Identity()
    d = {"x": torch.randn(2, 4), "s": torch.randn(2, 4)}
    out = model(d)
    torch.testing.assert_close(out["y"], out["x"])
    assert isinstance(dict(model.block_items())["image.trunk.enc"].block, nn.Identity)
    torch.testing.assert_close(model.forward_eager(d)["y"], out["x"])


def test_ties_share_one_parameter_and_survive_to_empty():
    model = MetaModel([("trunk.a", rw(Lin())), ("trunk.b", rw(Lin()))])
    model.tie("trunk.b.layers.0.weight", "trunk.a.layers.0.weight")
    assert model.trunk.b.layers[0].weight is model.trunk.a.layers[0].weight
    assert len(list(model.parameters())) == 3
    model.to_empty(device="cpu")
    model.retie()
    assert model.trunk.b.layers[0].weight is model.trunk.a.layers[0].weight
    assert [len(v) for v in params_by_block(model).values()] == [2, 1]


@pytest.mark.slow
def test_dynamo_sees_one_graph_without_breaks():
    model = MetaModel([
        ("preprocessor.a", rw(Lin())),
        ("trunk.b", rw(Lin(), kwargs={"scale": "s"})),
        ("head.c", ReadWriteBlock(Split(), ["x"], writes=["out", None])),
    ])  # fmt: skip
    d = {"x": torch.randn(2, 4), "s": torch.randn(2, 4)}
    torch._dynamo.reset()
    explained = torch._dynamo.explain(model)(d)
    assert explained.graph_count == 1
    assert explained.graph_break_count == 0
