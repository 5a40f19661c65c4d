"""Static shapes: the spec parser, unification, each diagnostic E750-E756, and the shipped files."""

from __future__ import annotations

import glob
from pathlib import Path

import pytest

from l3m import registry
from l3m.dsl import compile_file
from l3m.dsl.shapes import ShapeError, SpecSyntaxError, TensorType, parse_spec
from l3m.dsl.shapes.rules import concat
from l3m.dsl.shapes.spec import check_names, eval_check, eval_dim, format_message, validate
from l3m.dsl.shapes.unify import Env, match

ROOT = Path(__file__).resolve().parents[2]


# -- fake entries: blocks whose declarations the tests control ----------------------------------------------

class FEmbed:
    outputs = ("x",)
    shapes = "tokens: long[B, N] < vocab -> x: float[B, N, dim]"

    def __init__(self, vocab: int, dim: int): ...
    def forward(self, tokens): ...


class FLinear:
    outputs = ("x",)
    shapes = "x: float[..., in_features] -> x: float[..., out_features]"

    def __init__(self, in_features: int, out_features: int): ...
    def forward(self, x): ...


class FPos:
    outputs = ("x",)
    shapes = "x: [B, N, dim] -> x: [B, N, dim]"
    checks = (("N <= max_len", "the sequence ({N}) is longer than the table ({max_len})"),)

    def __init__(self, dim: int, max_len: int = 16): ...
    def forward(self, x): ...


class FAttn:
    outputs = ("x",)
    shapes = "x: [B, N, dim] -> x: [B, N, dim]"
    checks = (("dim % heads == 0", "heads ({heads}) must divide dim ({dim})"),)

    def __init__(self, dim: int, heads: int, out: int | None = None): ...
    def forward(self, x): ...


class FPool:
    outputs = ("x",)
    shapes = "x: [B, N, dim] -> x: [B, dim]"

    def __init__(self): ...
    def forward(self, x): ...


class FHead:
    outputs = ("logits",)
    shapes = "x: [B, dim] -> logits: float[B, num_classes]"

    def __init__(self, dim: int, num_classes: int): ...
    def forward(self, x): ...


class FJoin:
    outputs = ("x",)
    shapes = "@concat"

    def __init__(self): ...
    def forward(self, *xs): ...


class FBad:
    outputs = ("x",)
    shapes = "x: [B,, N] -> x: [B]"

    def __init__(self): ...
    def forward(self, x): ...


class FOpaque:
    """No declaration: its outputs are unknown and nothing after it is checked."""

    outputs = ("x",)

    def __init__(self, dim: int = 0): ...
    def forward(self, x): ...


class FCE:
    outputs = ("out",)
    shapes = "logits: float[B, C], label: long[B] < C ->"

    def __init__(self): ...
    def forward(self, logits, label): ...


FAKES = {"block": [FEmbed, FLinear, FPos, FAttn, FPool, FHead, FJoin, FBad, FOpaque], "loss": [FCE]}


@pytest.fixture(autouse=True)
def fakes():
    for kind, classes in FAKES.items():
        for cls in classes:
            registry.register(kind)(cls)
    yield
    for kind, classes in FAKES.items():
        for cls in classes:
            registry._REGISTRY[kind].pop(cls.__name__, None)
    registry._version += 1


def prog(model: str, data: str = "train: TextBytes(seq_len = 8, batch_size = 2) -> tokens, targets",
         extra: str = "") -> str:
    return f"l3m 1\n{extra}data {{ {data} }}\nmodel m {{\n{model}\n}}\n"


def errors(compiled, prefix="E75"):
    return [d for d in compiled.diagnostics if d.code.startswith(prefix)]


# -- the spec parser ---------------------------------------------------------------------------------------

def test_parse_ports_dims_dtypes_and_bounds():
    s = parse_spec("tokens: long[B, N] < vocab, mask: bool -> x: [B, (H // p) * (W // p), dim + 1]")
    tok, mask = s.inputs
    assert (tok.name, tok.dtype, tok.dims, tok.bound) == ("tokens", "long", ("B", "N"), "vocab")
    assert (mask.dtype, mask.dims) == ("bool", None)
    assert s.outputs[0].dims == ("B", ("*", ("//", "H", "p"), ("//", "W", "p")), ("+", "dim", 1))
    assert parse_spec("@concat").rule == "concat"
    assert parse_spec("-> label: long[B] < 10").outputs[0].bound == 10
    assert parse_spec("x: [..., _, d] ->").inputs[0].dims == ("...", "_", "d")
    assert parse_spec("x: float[] -> y: float[]").outputs[0].dims == ()


@pytest.mark.parametrize("bad", ["x: [B,, N] -> x: [B]", "x: [..., ...] ->", "x: [B] x: [B]", "x: [B]",
                                 "x: -> y: [B]", "x: [B] -> x: [B], x: [N]", "x: [B + ] ->", "x: [(B] ->"])
def test_parse_errors(bad):
    with pytest.raises(SpecSyntaxError):
        parse_spec(bad)


def test_checks_are_evaluated_without_eval():
    assert eval_check("dim % heads == 0", {"dim": 64, "heads": 4}) is True
    assert eval_check("dim % heads == 0", {"dim": 64, "heads": 5}) is False
    assert eval_check("top_k <= experts", {"experts": 4}) is None  # top_k unknown: skipped
    assert eval_check("pool in ['cls', 'avg'] and len(xs) < 3", {"pool": "avg", "xs": [1, 2]}) is True
    assert eval_check("0 <= start < end", {"start": 0, "end": 4}) is True
    assert check_names("N <= max_len and dim % heads == 0") == ["N", "max_len", "dim", "heads"]
    assert validate(None, (("__import__('os').system('x')", "m"),))  # calls other than len/min/max refused
    assert validate(None, (("x.__class__", "m"),))
    assert validate("@no_such_rule")
    assert not validate("x: [B] -> x: [B]", (("a < b", "m"),))
    assert format_message("{heads} / {dim} {x.__class__}", {"heads": 3, "dim": 8}) == "3 / 8 {x.__class__}"


def test_tensor_type_text():
    assert str(TensorType("long", ("B", 256), 50432)) == "long[B, 256] < 50432"
    assert str(TensorType(None, ("B", "N", 64), None)) == "[B, N, 64]"


# -- unification ----------------------------------------------------------------------------------------

def test_unification_binds_symbols_and_reports_conflicts():
    env = Env({"dim": 64})
    assert match(("B", "N", "dim"), ("B", 10, 64), env, "x") == []
    assert env.symbols == {"B": "B", "N": 10}
    (m,) = match(("B", "N", "dim"), ("B", 12, 64), env, "y")  # N is 10 already
    assert (m.index, m.expected, m.actual) == (1, 10, 12)
    (m,) = match(("B", "N", "dim"), ("B", 10, 32), Env({"dim": 64}), "x")
    assert (m.index, m.expected, m.actual) == (2, 64, 32)
    (rank,) = match(("B", "N"), ("B", 4, 4), Env({}), "x")
    assert rank.index is None and (rank.expected, rank.actual) == (2, 3)


def test_unification_ellipsis_and_unknowns():
    env = Env({"d": 8})
    assert match(("...", "d"), (2, 3, 8), env, "x") == [] and env.captured == (2, 3)
    assert match(("B", "...", "d"), ("B", "..."), Env({"d": 8}), "x") == []  # unknown middle: nothing to say
    assert match(("B", "N"), ("?", "?"), Env({}), "x") == []
    assert match(("B", "dim"), ("B", 5), Env({"dim": "?"}), "x") == []  # an argument that is not an int
    assert eval_dim(("+", "N", 1), {"N": 4}) == 5 and eval_dim(("+", "N", 1), {"N": "N"}) == "N + 1"


def test_concat_rule():
    a, b = TensorType("float", ("B", 4, 8), None), TensorType("float", ("B", 1, 8), None)
    assert concat({}, {"xs[0]": a, "xs[1]": b}) == {"x": TensorType("float", ("B", 5, 8), None)}
    with pytest.raises(ShapeError, match="differ in dim 2"):
        concat({}, {"xs[0]": a, "xs[1]": TensorType("float", ("B", 1, 9), None)})
    assert concat({}, {"xs[0]": a, "xs[1]": TensorType()}) == {}


# -- propagation ----------------------------------------------------------------------------------------

def test_shapes_propagate_through_declared_blocks(compile_text):
    c = compile_text(prog("""
  preprocessor { e: FEmbed(vocab = 256, dim = 16) tokens -> x
                 p: FPos(16, max_len = 8) x -> x }
  trunk { a: FAttn(dim = 16, heads = 4) x -> x }
  head  { l: FLinear(16, 32) x -> y }"""))
    assert c.ok, c.errors
    assert str(c.shapes.of(("tokens", 0))) == "long[B, 8] < 256"
    assert str(c.shapes.of(("x", 0))) == "float[B, 8, 16]"
    assert str(c.shapes.of(("key", "y", 0))) == "float[B, 8, 32]"
    assert c.shapes.writers("y") == ("m.head.l",)


def test_unknown_rules_make_outputs_unknown(compile_text):
    c = compile_text(prog("""
  preprocessor { e: FEmbed(vocab = 256, dim = 16) tokens -> x
                 o: FOpaque() x -> x }
  head { l: FLinear(99, 32) x -> y }"""))
    assert not errors(c) and c.shapes.of(("x", 1)) is None
    assert str(c.shapes.of("y")) == "float[..., 32]"


# -- each diagnostic ------------------------------------------------------------------------------------

def test_E750_dimension_mismatch_names_writer_and_reader(compile_text):
    c = compile_text(prog("""
  preprocessor { e: FEmbed(vocab = 256, dim = 16) tokens -> x }
  head { l: FLinear(in_features = 24, out_features = 4) x -> y }"""))
    (d,) = errors(c)
    assert d.code == "E750"
    assert "'m.head.l' (FLinear) expects x: [..., 24]" in d.message
    assert "'x' is [B, 8, 16], written by 'm.preprocessor.e' (FEmbed)" in d.message
    assert (d.span.line, d.span.col) == (6, 21)  # at in_features
    assert any("writes 'x'" in text for text, _ in d.notes)


def test_E750_rank_mismatch(compile_text):
    c = compile_text(prog("""
  preprocessor { e: FEmbed(vocab = 256, dim = 16) tokens -> x }
  head { h: FHead(16, 10) x -> y }"""))
    (d,) = errors(c)
    assert d.code == "E750" and "(2 dims)" in d.message and "(3 dims)" in d.message


def test_E751_dtype_mismatch(compile_text):
    c = compile_text(prog("head { l: FLinear(8, 4) tokens -> y }"))
    (d,) = errors(c)
    assert d.code == "E751" and "float" in d.message and "long" in d.message


def test_E752_keys_declaration_disagrees_with_the_source(compile_text):
    c = compile_text(prog("head { e: FEmbed(vocab = 256, dim = 16) tokens -> x }",
                          extra="keys { tokens: long[B, 128] }\n"))
    (d,) = errors(c)
    assert d.code == "E752" and "dim 1 is 8, not 128" in d.message and (d.span.line, d.span.col) == (2, 8)
    ok = compile_text(prog("head { e: FEmbed(vocab = 256, dim = 16) tokens -> x }",
                           extra="keys { tokens: long[B, N] }\n"))
    assert not errors(ok)
    dtype = compile_text(prog("head { e: FEmbed(vocab = 256, dim = 16) tokens -> x }",
                              extra="keys { tokens: float[B, N] }\n"))
    assert [d.code for d in errors(dtype)] == ["E752"]


def test_keys_declaration_gives_the_type_of_an_undeclared_writer(compile_text):
    c = compile_text(prog("preprocessor { o: FOpaque() tokens -> x }\n head { l: FLinear(24, 4) x -> y }",
                          extra="keys { x: float[B, N, 16] }\n"))
    assert [d.code for d in errors(c)] == ["E750"]


def test_E753_ids_beyond_the_embedding(compile_text):
    c = compile_text(prog("head { e: FEmbed(vocab = 100, dim = 16) input -> x }",
                          data="train: Synthetic(kind = tokens, vocab = 300, seq_len = 8) -> input, target"))
    (d,) = errors(c)
    assert d.code == "E753" and "up to 299" in d.message and "tokens < 100" in d.message
    assert (d.span.line, d.span.col) == (4, 18)  # at vocab
    assert d.help == "make vocab at least 300"


def test_a_tokenizer_vocabulary_is_reported_once(compile_text):
    """Bytes (< 256) into vocab = 100: E812 says it (tokcheck); the shape checker does not repeat it."""
    c = compile_text(prog("head { e: FEmbed(vocab = 100, dim = 16) tokens -> x }"))
    assert [d.code for d in c.errors] == ["E812"]
    assert str(c.shapes.of("tokens")) == "long[B, 8] < 256"


def test_E753_labels_beyond_the_classes(compile_text):
    c = compile_text(prog("trunk { p: FPool() image -> x }\n head { h: FHead(dim = 3, num_classes = 5) x -> logits }",
                          data="train: DigitsImages(image_size = 4) -> image, label")
                     + "loss ce: FCE() logits, label -> loss\n")
    codes = [d.code for d in errors(c)]
    assert "E753" in codes, c.diagnostics
    d = next(d for d in errors(c) if d.code == "E753")
    assert "'label' holds values up to 9" in d.message and "C = 5" in d.message


def test_E754_failing_check_at_the_argument(compile_text):
    c = compile_text(prog("trunk { e: FEmbed(vocab = 256, dim = 16) tokens -> x\n a: FAttn(dim = 16, heads = 5) x -> x }"))
    (d,) = errors(c)
    assert d.code == "E754" and d.message.endswith("heads (5) must divide dim (16)")
    assert (d.span.line, d.span.col) == (5, 11)  # `dim` is the first name of the check the call wrote


def test_E754_sequence_longer_than_the_table(compile_text):
    c = compile_text(prog("trunk { e: FEmbed(vocab = 256, dim = 16) tokens -> x\n p: FPos(16, max_len = 4) x -> x }"))
    (d,) = errors(c)
    assert d.code == "E754" and "the sequence (8) is longer than the table (4)" in d.message
    assert (d.span.line, d.span.col) == (5, 14)
    c = compile_text(prog("trunk { e: FEmbed(vocab = 256, dim = 16) tokens -> x\n p: FPos(16, max_len = 4) x -> x }"),
                     overrides=["data.train.seq_len=4"])
    assert not errors(c)


def test_E755_rule_error(compile_text):
    c = compile_text(prog("""
  preprocessor { a: FEmbed(vocab = 256, dim = 16) tokens -> a
                 b: FEmbed(vocab = 256, dim = 8) tokens -> b }
  trunk { j: FJoin() a, b -> x }"""))
    (d,) = errors(c)
    assert d.code == "E755" and "differ in dim 2: 16 and 8" in d.message
    ok = compile_text(prog("""
  preprocessor { a: FEmbed(vocab = 256, dim = 16) tokens -> a
                 b: FEmbed(vocab = 256, dim = 16) tokens -> b }
  trunk { j: FJoin() a, b -> x }"""))
    assert not errors(ok) and str(ok.shapes.of("x")) == "float[B, 16, 16]"


def test_E756_unreadable_declaration(compile_text):
    c = compile_text(prog("trunk { b: FBad() tokens -> x }"))
    (d,) = errors(c)
    assert d.code == "E756" and "expected a name" in d.message


# -- the shipped files ----------------------------------------------------------------------------------

SHIPPED = sorted(glob.glob(str(ROOT / "models" / "*.l3m")) + glob.glob(str(ROOT / "examples" / "*.l3m")))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: Path(p).relative_to(ROOT).as_posix())
def test_shipped_files_have_no_shape_errors(path):
    c = compile_file(path)
    assert c.shapes is not None
    assert not errors(c), [f"{d.span}: {d.code} {d.message}" for d in errors(c)]


def test_builtin_declarations_are_readable():
    bad = {e.name: validate(e.shapes, e.checks) for e in registry.entries() if e.name not in {"FBad"}}
    assert not {k: v for k, v in bad.items() if v}


def test_sources_declare_what_they_emit():
    c = compile_file(str(ROOT / "examples" / "vit_digits.l3m"))
    assert str(c.shapes.of(("image", 0))) == "float[B, 3, 16, 16]"
    assert str(c.shapes.of(("label", 0))) == "long[B] < 10"


def test_extension_declarations_are_read_without_importing(compile_text):
    """An extension block's literal `shapes`/`checks` are read from its source by lint (never run)."""
    ext = '''from torch import nn
from l3m import register


@register("block")
class ShapeExtProj(nn.Module):
    outputs = ("x",)
    shapes = "x: [..., d_in] -> x: [..., d_out]"
    checks = (("d_out % 2 == 0", "d_out ({d_out}) must be even"),)

    def __init__(self, d_in: int, d_out: int):
        super().__init__()

    def forward(self, x):
        return x
'''
    text = prog("trunk { e: FEmbed(vocab = 256, dim = 16) tokens -> x\n p: ShapeExtProj(8, 3) x -> x }",
                extra='extension "shape_ext_mod"\n')
    c = compile_text(text, **{"shape_ext_mod.py": ext})
    assert sorted(d.code for d in errors(c)) == ["E750", "E754"]
    assert "shape_ext_mod" not in __import__("sys").modules


# -- real blocks (their declarations live on the classes) ---------------------------------------------------

def _real(path: str, *overrides: str):
    return compile_file(str(ROOT / path), list(overrides))


def test_shipped_files_get_concrete_shapes():
    """Proves the engine is wired to the real declarations: main keys are known, not silently unknown."""
    vit = _real("examples/vit_digits.l3m")
    assert str(vit.shapes.of("logits")) == "float[B, 10]"
    assert str(vit.shapes.of(("vit.x", 1))) == "float[B, 17, 64]"  # patches (16) + the cls token
    gpt = _real("examples/llm_bytes.l3m")
    assert str(gpt.shapes.of("tokens")) == "long[B, 64] < 2048"
    assert str(gpt.shapes.of("logits")) == "float[B, 64, 2048]"
    clip = _real("examples/clip_digits.l3m")
    assert str(clip.shapes.of("image_emb")) == str(clip.shapes.of("text_emb")) == "float[B, 32]"
    llm = _real("models/llm.l3m")
    assert str(llm.shapes.of("logits")) == "float[B, 2047, 50432]"


def test_real_blocks_report_at_the_argument(compile_text):
    c = compile_text("""l3m 1
data { train: DigitsImages(image_size = 16, batch_size = 8) -> image, label }
model vit {
  preprocessor { patches: PatchEmbed(dim = 64, patch = 4) image -> x
                 cls: ClsToken(dim = 64) x -> x
                 pos: PosEmbed(dim = 64, num = 16) x -> x }
  postprocessor { pool: ClsPool() x -> x }
  head { fc: Classifier(dim = 48, num_classes = 5) x -> logits }
}
loss ce: ClassificationCE() logits, label -> loss
""")
    got = {d.code: d for d in errors(c)}
    assert set(got) == {"E750", "E753", "E754"}, c.diagnostics
    assert "shorter than the 17 tokens" in got["E754"].message and got["E754"].span.line == 6
    assert (got["E750"].span.line, got["E750"].span.col) == (8, 25)  # Classifier's dim
    assert "up to 9" in got["E753"].message and "C = 5" in got["E753"].message
    assert any("Classifier" in text and "[B, 5]" in text for text, _ in got["E753"].notes)


def test_seq_len_beyond_the_context_is_reported():
    c = _real("examples/llm_bytes.l3m", "data.train.seq_len=100", "data.eval.seq_len=100")
    (d,) = errors(c)
    assert d.code == "E754" and "shorter than the 100 tokens" in d.message


def test_plan_lists_every_key_with_its_writer_and_shape():
    """`l3m plan`'s "keys" section (the plan itself builds on meta: here only its table is formatted)."""
    from l3m.plan import format_plan, key_shapes

    keys = key_shapes(_real("examples/llm_bytes.l3m").shapes)
    assert {"key": "logits", "version": 0, "writer": "gpt.head.lm", "shape": "float[B, 64, 2048]"} in keys
    p = {"params": {"total": 1, "trainable": 1, "by_model": {}, "by_stage": {}, "by_block": {}},
         "flops_per_sample": None, "activation_bytes_per_sample": None, "mesh": {"dp_shard": 1}, "world_size": 1,
         "memory_per_rank": {"total": 0, "params": 0, "grads": 0, "optimizer": 0}, "keys": keys}
    out = format_plan(p)
    lines = out[out.index("\nkeys\n") + 6:].splitlines()
    assert [line.split() for line in lines[:2]] == [["tokens", "data.train,", "data.eval", "long[B,", "64]", "<", "2048"],
                                                    ["targets", "data.train,", "data.eval", "long[B,", "64]", "<", "2048"]]
    assert lines[0].index("data.train") == lines[-1].index(lines[-1].split()[1])  # aligned columns


def test_a_rule_that_trips_makes_outputs_unknown_not_errors(compile_text, monkeypatch):
    from l3m.dsl.shapes import rules

    monkeypatch.setattr(rules, "boom", lambda args, inputs: 1 // 0, raising=False)
    monkeypatch.setattr(FJoin, "shapes", "@boom")
    c = compile_text(prog("trunk { e: FEmbed(vocab = 256, dim = 16) tokens -> a\n j: FJoin() a, a -> x\n"
                          " l: FLinear(99, 4) x -> y }"))
    assert not errors(c) and c.shapes.of("x") is None and str(c.shapes.of("y")) == "float[..., 4]"


def test_a_check_cannot_build_a_number_that_never_finishes():
    from l3m.dsl.shapes.spec import eval_check

    assert eval_check("((((2**64)**64)**64)**64)**64 > 1", {}) is None  # skipped, not computed
    assert eval_check("dim % heads == 0", {"dim": 64, "heads": 3}) is False


def test_each_data_source_is_checked_on_its_own_when_sources_disagree():
    """An eval set at another image size makes the merged dims unknown; it is still checked alone."""
    from pathlib import Path

    from l3m.dsl import compile_file

    example = str(Path(__file__).resolve().parents[2] / "examples/vit_digits.l3m")
    assert compile_file(example).ok
    compiled = compile_file(example, ["data.eval.image_size=32"])
    [d] = [d for d in compiled.diagnostics if d.is_error]
    assert d.code == "E754" and "65 tokens" in d.message
    assert any("data.eval" in note for note, _ in d.notes)
