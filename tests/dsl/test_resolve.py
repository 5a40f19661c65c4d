"""Resolution: lets, overrides, strings, imports, templates, extensions."""

from __future__ import annotations

import sys
import textwrap

HEAD = "l3m 1\n"
GPT = """let dim = 16
let heads = dim // 8
data { train: TextBytes(root = "${TEXT_ROOT:-stdlib}", seq_len = 8, batch_size = 2) -> tokens, targets }
model gpt {
  preprocessor { embed: TokenEmbedding(vocab = 256, dim = dim) tokens -> x }
  trunk        { blocks: Transformer(dim = dim, depth = 1, heads = heads) x -> x }
  head         { lm: LMHead(dim, 256) x -> logits }
}
loss ce: LMCrossEntropy() logits, targets -> loss weight 0.5
optimizer AdamW(lr = 1e-3)
train { steps = 10, dtype = bf16 }
"""


def node(compiled, path):
    return next(n for n in compiled.program.nodes if n.path == path)


def test_lets_are_evaluated_after_overrides(compile_text):
    c = compile_text(HEAD + GPT, overrides=["dim=64"])
    assert c.ok, [d.message for d in c.errors]
    written = node(c, "gpt.trunk.blocks").call  # plus the materialised `use(...)` component defaults
    assert {k: v for k, v in written.kwargs.items() if written.origins[k].kind != "use"} == \
        {"dim": 64, "depth": 1, "heads": 8}
    assert node(c, "gpt.head.lm").call.kwargs == {"dim": 64, "vocab": 256}


def test_overrides_reach_every_kind_of_path(compile_text):
    c = compile_text(HEAD + GPT, overrides=["train.steps=3", "gpt.trunk.blocks.depth=4", "optimizer.lr=0.5",
                                            "data.train.batch_size=7", "loss.ce.weight=2", "mesh.tp=1",
                                            "data.train.root=/tmp/some dir"])
    assert c.ok, [d.message for d in c.errors]
    p = c.program
    assert p.section("train") == {"steps": 3, "dtype": "bf16"}
    assert node(c, "gpt.trunk.blocks").call.kwargs["depth"] == 4
    assert node(c, "gpt.trunk.blocks").repeat == 4
    assert p.optimizer.kwargs["lr"] == 0.5
    assert node(c, "data.train").call.kwargs["batch_size"] == 7
    assert node(c, "data.train").call.kwargs["root"] == "/tmp/some dir"
    assert node(c, "loss.ce").weight == 2.0


def test_unknown_override_is_an_error_with_a_suggestion(compile_text):
    c = compile_text(HEAD + GPT, overrides=["train.stesp=3", "dimm=3", "gpt.trunk.blocks.dpth=2"])
    msgs = {d.message: d.help for d in c.errors if d.code == "E501"}
    assert msgs["override 'train.stesp' names nothing in the program"] == "did you mean 'train.steps'?"
    assert msgs["override 'dimm' names nothing in the program"] == "did you mean 'dim'?"
    assert msgs["override 'gpt.trunk.blocks.dpth' names nothing in the program"] == \
        "did you mean 'gpt.trunk.blocks.depth'?"


def test_malformed_override(compile_text):
    c = compile_text(HEAD + GPT, overrides=["train steps"])
    assert [d.code for d in c.errors] == ["E501"]


def test_override_value_is_type_checked(compile_text):
    c = compile_text(HEAD + GPT, overrides=["train.steps=many"])
    (d,) = c.errors
    assert d.code == "E602" and d.span.file == "<override 1>"


def test_interpolation_reads_lets_then_environment(compile_text, monkeypatch):
    monkeypatch.setenv("L3M_TEST_ROOT", "/data/x")
    src = HEAD + GPT.replace('"${TEXT_ROOT:-stdlib}"', '"${L3M_TEST_ROOT}/d${dim}"')
    assert node(compile_text(src), "data.train").call.kwargs["root"] == "/data/x/d16"
    monkeypatch.delenv("L3M_TEST_ROOT")
    c = compile_text(src)
    assert [d.code for d in c.errors] == ["E403"]
    assert node(compile_text(HEAD + GPT), "data.train").call.kwargs["root"] == "stdlib"


def test_bare_names_are_symbols_only_where_strings_fit(compile_text):
    c = compile_text(HEAD + GPT)
    assert c.program.section("train")["dtype"] == "bf16"
    bad = compile_text(HEAD + GPT.replace("depth = 1", "depth = one"))
    (d,) = bad.errors
    assert d.code == "E403" and "'one' is not defined" in d.message


def test_let_arithmetic_and_self_reference(compile_text):
    c = compile_text(HEAD + "let a = 2 ** 3 + 7 % 4 - -1\nlet b = [1, 2] + [3]\nlet c = \"x\" + \"y\"\n" + GPT)
    assert c.program.lets["a"] == 12 and c.program.lets["b"] == [1, 2, 3] and c.program.lets["c"] == "xy"
    bad = compile_text(HEAD + "let a = b\nlet b = a + 1\n" + GPT)
    assert any("depends on itself" in d.message for d in bad.errors)


def test_imports_bind_namespaces(compile_text):
    lib = HEAD + "let width = 32\n"
    c = compile_text(HEAD + 'import "lib/common.l3m" as common\n' + GPT.replace("let dim = 16", "let dim = common.width"),
                     **{"lib__common.l3m": lib})
    assert c.ok and node(c, "gpt.trunk.blocks").call.kwargs["dim"] == 32


TEMPLATE_LIB = HEAD + textwrap.dedent("""
    def Tower(dim, depth = 1) tokens -> feats {
      preprocessor { embed: TokenEmbedding(vocab = 256, dim = dim) tokens -> x }
      trunk        { blocks: Transformer(dim = dim, depth = depth, heads = 2) x -> feats }
    }
""")


def test_templates_expand_into_nested_models_with_private_keys(compile_text):
    src = HEAD + textwrap.dedent("""
        import "towers.l3m" as t
        data { train: TextBytes(seq_len = 8, batch_size = 2) -> tokens, targets }
        model two {
          model a = t.Tower(dim = 16) tokens -> fa
          model b = t.Tower(16, depth = 2) tokens -> fb
          head { lm: LMHead(16, 256) fa -> logits }
        }
        loss ce: LMCrossEntropy() logits, targets -> loss
        metric m: Perplexity() logits, targets -> ppl
    """)
    c = compile_text(src, overrides=["two.b.depth=3"], **{"towers.l3m": TEMPLATE_LIB})
    assert [m.path for m in c.program.models] == ["two", "two.a", "two.b"]
    a = node(c, "two.a.preprocessor.embed")
    assert a.model == "two.a" and a.write_keys == ["two.a.x"]
    assert node(c, "two.a.trunk.blocks").write_keys == ["fa"]
    assert node(c, "two.b.trunk.blocks").call.kwargs["depth"] == 3
    # fb is never read: a warning, not an error
    assert c.ok and [d.code for d in c.diagnostics if d.code.startswith("W")] == ["W101"]


def test_template_errors_name_the_instance(compile_text):
    src = HEAD + textwrap.dedent("""
        import "towers.l3m" as t
        data { train: TextBytes(seq_len = 8, batch_size = 2) -> tokens, targets }
        model m { model a = t.Tower(dim = "wide") tokens -> fa }
    """)
    c = compile_text(src, **{"towers.l3m": TEMPLATE_LIB})
    d = next(d for d in c.errors if d.code == "E205")
    assert d.span.file.endswith("towers.l3m")
    assert any("instance of 'Tower'" in text for text, _ in d.notes)


def test_extension_registers_user_blocks(compile_text, tmp_path, monkeypatch):
    pkg = tmp_path / "ext_pkg_l3m_test"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(textwrap.dedent("""
        import torch
        from l3m import register

        @register("block")
        class ScaleByTwo(torch.nn.Module):
            outputs = ("x",)
            def __init__(self, factor: float = 2.0):
                super().__init__()
                self.factor = factor
            def forward(self, x):
                return x * self.factor
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    src = HEAD + 'extension "ext_pkg_l3m_test"\n' + GPT.replace(
        "head         {", "postprocessor { s: ScaleByTwo(factor = 3.0) x -> x }\n  head {")
    c = compile_text(src)
    assert c.ok, [d.message for d in c.errors]
    assert [d.code for d in c.diagnostics if d.code == "N001"] == ["N001"]
    assert node(c, "gpt.postprocessor.s").call.kwargs == {"factor": 3.0}
    sys.modules.pop("ext_pkg_l3m_test", None)
