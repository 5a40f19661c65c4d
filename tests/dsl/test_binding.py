"""The one binding routine (`l3m.dsl.resolver.binding`): arguments and ports bind by the same rules."""

from __future__ import annotations

import textwrap

from l3m.dsl.ast import Arg
from l3m.dsl.ir import Span
from l3m.dsl.resolve import resolve
from l3m.dsl.resolver.binding import Slot, argument_words, bind, port_words, report_unbound
from l3m.dsl.resolver.context import Reporter

HEAD = "l3m 1\n"


def _at(col: int) -> Span:
    return Span("f.l3m", 1, col, 1, col + 1)


def _bind(items, slots, words):
    report = Reporter()
    got = bind([Arg(name, value, _at(i + 1)) for i, (name, value) in enumerate(items)], slots, words, report)
    return [(slot, a.value) for slot, a in got], [(d.code, d.span.col if d.span else None) for d in report.diagnostics]


SLOTS = [Slot("a"), Slot("b", required=False), Slot("c", positional=False, required=False)]


def test_positional_then_named_in_the_order_written():
    got, errors = _bind([("c", 3), (None, 1), (None, 2)], SLOTS, argument_words("T"))
    assert got == [("a", 1), ("b", 2), ("c", 3)] and errors == []


def test_a_keyword_only_slot_takes_no_position_and_extra_positions_are_said_once():
    got, errors = _bind([(None, 1), (None, 2), (None, 3), (None, 4)], SLOTS, argument_words("T"))
    assert got == [("a", 1), ("b", 2)] and errors == [("E206", 3)]


def test_ports_report_each_key_without_a_port():
    slots = [Slot("x")]
    got, errors = _bind([(None, "k1"), (None, "k2"), (None, "k3")], slots, port_words("Linear", "input", slots))
    assert got == [("x", "k1")] and errors == [("E301", 2), ("E301", 3)]


def test_unknown_and_twice_are_reported_and_the_first_binding_wins():
    got, errors = _bind([(None, 1), ("a", 2), ("zz", 3)], SLOTS, argument_words("T"))
    assert got == [("a", 1)] and errors == [("E207", 2), ("E203", 3)]


def test_open_slots_accept_any_name():
    got, errors = _bind([("zz", 3)], SLOTS, argument_words("T", open=True))
    assert got == [("zz", 3)] and errors == []


def test_a_variadic_slot_takes_the_rest_and_repeated_names():
    slots = [Slot("first"), Slot("rest", required=False, variadic=True)]
    got, errors = _bind([(None, "a"), (None, "b"), (None, "c"), ("rest", "d")], slots,
                        port_words("Concat", "input", slots))
    assert got == [("first", "a"), ("rest", "b"), ("rest", "c"), ("rest", "d")] and errors == []


def test_required_slots_left_empty():
    report = Reporter()
    slots = [Slot("x"), Slot("y", required=False), Slot("z")]
    report_unbound(slots, ["x"], port_words("Add", "input", slots), _at(9), report)
    (d,) = report.diagnostics
    assert (d.code, d.message, d.help) == ("E302", "input port 'z' of 'Add' is not bound", "'Add' reads: x, y?, z")


LIB = HEAD + textwrap.dedent("""
    def Tower(dim, depth = 1) tokens -> feats {
      trunk { blocks: Transformer(dim = dim, depth = depth, heads = 2) tokens -> feats }
    }
""")


def _resolve(tmp_path, body: str):
    path = tmp_path / "prog.l3m"
    path.write_text(LIB + "data { train: TextBytes(seq_len = 8, batch_size = 2) -> tokens, targets }\n"
                    + textwrap.dedent(body))
    return resolve(str(path))


def test_template_ports_bind_like_a_blocks_ports(tmp_path):
    c = _resolve(tmp_path, """
        model m {
          model a = Tower(16) tokens -> (feats = f, feats = g)
          head { lm: LMHead(16, 256) f -> logits }
        }
    """)
    (d,) = [d for d in c.diagnostics if d.code == "E207"]
    assert d.message == "output port 'feats' of template 'Tower' is bound twice"
    assert (d.span.line, d.span.col) == (9, 53)  # the second binding (its key)


def test_template_arguments_bind_like_a_calls_arguments(tmp_path):
    c = _resolve(tmp_path, """
        model m {
          model a = Tower(16, dim = 32, width = 2) tokens -> f
          head { lm: LMHead(16, 256) f -> logits }
        }
    """)
    assert sorted((d.code, d.span.col) for d in c.diagnostics) == [("E203", 33), ("E207", 23)]
    blocks = next(n for n in c.program.nodes if n.path == "m.a.trunk.blocks")
    assert blocks.call.kwargs["dim"] == 16  # the first binding wins, as for a block's arguments


def test_a_templates_private_key_passed_to_a_nested_instance_stays_private(tmp_path):
    path = tmp_path / "prog.l3m"
    path.write_text(HEAD + textwrap.dedent("""
        def Inner() x -> y { trunk { l: Linear(16, 16) x -> y } }
        def Outer() x -> y {
          model a = Inner() x -> h
          model b = Inner() h -> y
        }
        data { train: TextBytes(seq_len = 8, batch_size = 2) -> tokens, targets }
        model m {
          preprocessor { embed: TokenEmbedding(vocab = 256, dim = 16) tokens -> x }
          model o1 = Outer() x -> z1
          model o2 = Outer() z1 -> z2
          head { lm: LMHead(16, 256) z2 -> logits }
        }
    """))
    res = resolve(str(path))
    keys = {n.path: (n.read_keys, n.write_keys) for n in res.program.nodes}
    assert keys["m.o1.a.trunk.l"] == (["x"], ["m.o1.h"]) and keys["m.o1.b.trunk.l"] == (["m.o1.h"], ["z1"])
    assert keys["m.o2.a.trunk.l"] == (["z1"], ["m.o2.h"])  # each instance its own `h`
