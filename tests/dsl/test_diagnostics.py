"""Every diagnostic code: a program that triggers it, where it points, and its explanation."""

from __future__ import annotations

import pytest

from l3m.dsl.diagnostics import CODES, explain, render_github, render_text

HEAD = "l3m 1\n"
GPT = """data { train: TextBytes(seq_len = 8, batch_size = 2) -> tokens, targets }
model gpt {
  preprocessor { embed: TokenEmbedding(vocab = 256, dim = 16) tokens -> x }
  trunk        { blocks: Transformer(dim = 16, depth = 1, heads = 2) x -> x }
  head         { lm: LMHead(16, 256) x -> logits }
}
loss ce: LMCrossEntropy() logits, targets -> loss
"""

CASES = {
    # code: (program, substring of the message, (line, col) of the caret or None)
    "E001": (HEAD + "model m { trunk { a: X() x y } }", "unexpected name 'y'", (2, 28)),
    "E003": ("l3m 2\n", "version 2", (1, 5)),
    "E004": (HEAD + "let a = " + "[" * 100 + "]" * 100, "nest deeper", None),
    "E101": (HEAD + GPT.replace("logits, targets", "logits, targts"), "'targts', which nothing writes", (8, 35)),
    "E102": (HEAD + GPT.replace("head         { lm: LMHead(16, 256) x -> logits }",
                                "head { lm: LMHead(16, 256) x -> logits\n e: Linear(16, 16) targets -> x }"),
             "already written", None),
    "E103": (HEAD + GPT.replace("embed: TokenEmbedding(vocab = 256, dim = 16) tokens -> x",
                                "embed: Linear(16, 16) y -> x\n  e2: Linear(16, 16) x -> y"), "cycle", None),
    "E104": (HEAD + GPT.replace("trunk        { blocks: Transformer(dim = 16, depth = 1, heads = 2) x -> x }",
                                "trunk { blocks: Transformer(dim = 16, depth = 1, heads = 2) z -> x }")
             .replace("x -> logits }", "x -> logits\n z0: Linear(16, 16) x -> z }"), "later head", None),
    "E105": (HEAD + GPT.replace("-> tokens, targets }", "-> tokens, targets\n eval: TextBytes() -> (tokens = tokens, targets = t2) }"),
             "does not write 'targets'", None),
    "E201": (HEAD + GPT.replace("Transformer(", "Transfomer("), "unknown block 'Transfomer'", (5, 26)),
    "E202": (HEAD + GPT.replace("loss ce: LMCrossEntropy()", "loss ce: Transformer(dim=1, depth=1, heads=1)"),
             "is a block, but a loss is expected", None),
    "E203": (HEAD + GPT.replace("depth = 1,", "depht = 1,"), "no argument 'depht'", (5, 48)),
    "E204": (HEAD + GPT.replace("depth = 1, ", ""), "needs the argument 'depth'", None),
    "E205": (HEAD + GPT.replace("depth = 1", "depth = 1.5"), "must be an integer, not a number", None),
    "E206": (HEAD + GPT.replace("LMHead(16, 256)", "LMHead(16, 256, false, \"\", false, \"normal\", 0.1, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9)"),
             "positional", None),
    "E207": (HEAD + "let a = 1\nlet a = 2\n" + GPT, "defined twice", (3, 5)),
    "E301": (HEAD + GPT.replace("x -> logits", "x, tokens -> logits"), "no port to bind", None),
    "E302": (HEAD + GPT.replace("loss ce: LMCrossEntropy() logits, targets", "loss ce: LMCrossEntropy() (logits = logits)"),
             "input port 'targets'", None),
    "E401": (HEAD + 'import "missing.l3m" as m\n' + GPT, "no such file", (2, 8)),
    "E403": (HEAD + GPT.replace("dim = 16)", "dim = size)"), "'size' is not defined", None),
    "E404": (HEAD + "let a = 1 // 0\n" + GPT, "division by zero", None),
    "E405": (HEAD + 'extension "l3m_no_such_module_xyz"\n' + GPT, "extension 'l3m_no_such_module_xyz'", None),
    "E410": (HEAD + 'import "notes.txt" as n\n' + GPT, "is not a .l3m file", (2, 8)),
    "E411": (HEAD + 'import "dir.l3m" as d\n' + GPT, "is a directory, not a regular file", (2, 8)),
    "E413": (HEAD + 'import "nul.l3m" as n\n' + GPT, "NUL bytes", (2, 8)),
    "E420": (HEAD + 'let t = "run-${MY_API_KEY:-x}"\n' + GPT, "looks like a credential", (2, 14)),
    "E430": (HEAD + "let a = [0] * 10 ** 9\n" + GPT, "values are limited to 1,000,000", (2, 9)),
    "E503": (HEAD + GPT.replace("model gpt {", "model train {"), "a model cannot be named 'train'", (3, 7)),
    "E602": (HEAD + GPT + "train { stpes = 3 }", "no setting 'stpes'", None),
    "E603": (HEAD + GPT + "optimizer AdamW()\noptimizer SGD()", "declared twice", None),
    "E604": (HEAD + GPT + "mesh { dp_shard = 2 }\ntrain { grad_accum = 2 }", "does not split over 2", (2, 38)),
    "W101": (HEAD + GPT.replace("x -> logits", "x -> logits\n extra: Linear(16, 16) x -> unused"), "never read", None),
    "W102": (HEAD + "keys { ghost: float[B, N] }\n" + GPT, "declared but never written", None),
    "W103": (HEAD + 'import "lib.l3m" as lib\n' + GPT, "never used", None),
}


@pytest.mark.parametrize("code", sorted(CASES))
def test_code_is_reported(compile_text, code):
    src, needle, where = CASES[code]
    compiled = compile_text(src, **{"lib.l3m": "l3m 1\nlet z = 1\n", "dir.l3m__x.l3m": "l3m 1\n",
                                    "nul.l3m": "l3m 1\0\n"})
    hits = [d for d in compiled.diagnostics if d.code == code]
    assert hits, f"{code} not reported; got {[(d.code, d.message) for d in compiled.diagnostics]}"
    d = hits[0]
    assert needle in d.message, d.message
    if where:
        assert (d.span.line, d.span.col) == where
    if code.startswith("E"):
        assert not compiled.ok
    # The rendering shows the source line and a caret under it.
    text = render_text(d, compiled.sources)
    assert f"error[{code}]" in text or f"warning[{code}]" in text
    if d.span and not d.span.file.startswith("<"):
        assert "^" in text


def test_import_cycle_prints_the_chain(compile_text):
    compiled = compile_text(HEAD + 'import "a.l3m" as a\nlet x = a.y\n',
                            **{"a.l3m": HEAD + 'import "b.l3m" as b\nlet y = b.z\n',
                               "b.l3m": HEAD + 'import "a.l3m" as a\nlet z = 1\n'})
    (d,) = [d for d in compiled.diagnostics if d.code == "E402"]
    assert "a.l3m -> " in d.message and "b.l3m" in d.message


def test_error_in_imported_file_carries_the_import_chain(compile_text):
    compiled = compile_text(HEAD + 'import "lib.l3m" as lib\nlet x = lib.y\n', **{"lib.l3m": HEAD + "let y = 1 // 0\n"})
    (d,) = [d for d in compiled.diagnostics if d.code == "E404"]
    assert d.span.file.endswith("lib.l3m")
    assert d.span.chain and "prog.l3m:2" in d.span.chain[0]
    assert "imported from" in render_text(d, compiled.sources)


def test_mesh_must_fit_the_world_size(compile_text):
    src = HEAD + GPT + "mesh { dp_shard = -1, tp = 4 }\n"
    assert compile_text(src, world_size=8).ok
    bad = compile_text(src, world_size=6)
    (d,) = [d for d in bad.diagnostics if d.code == "E601"]
    assert "world size 6" in d.message


def test_one_bad_name_does_not_cascade(compile_text):
    compiled = compile_text(HEAD + GPT.replace("TokenEmbedding(", "TokenEmbeding("))
    assert [d.code for d in compiled.errors] == ["E201"]


def test_a_missing_import_does_not_cascade(compile_text):
    """Names used through a namespace whose import failed are not reported again (no 'not a template',
    no 'not an imported namespace' with a did-you-mean naming the very namespace)."""
    src = HEAD + 'import "missing.l3m" as base\nlet d = base.dim * 2\n' + GPT.replace("LMHead(", "base.Head(")
    compiled = compile_text(src)
    assert [d.code for d in compiled.errors] == ["E401"], compiled.errors
    # a model instance of a template from it: its readers (losses, metrics) are not reported either
    inst = HEAD + ('import "missing.l3m" as base\ndata { train: TextBytes(seq_len = 8, batch_size = 2) -> tokens, '
                   'targets }\nmodel m = base.GPT(dim = 8)  tokens -> logits\n'
                   'loss ce: LMCrossEntropy()  logits, targets -> loss\n')
    assert [d.code for d in compile_text(inst).errors] == ["E401"]


def test_an_undefined_name_in_a_let_is_said_once_at_the_let(compile_text):
    src = HEAD + "let width = undefind\n" + GPT.replace("dim = 16", "dim = width")
    (d,) = compile_text(src).errors
    assert (d.code, d.span.line, d.span.col) == ("E403", 2, 13) and "'undefind' is not defined" in d.message


def test_several_errors_are_all_reported(compile_text):
    src = HEAD + GPT.replace("Transformer(", "Transfomer(").replace("logits, targets", "logits, targts")
    codes = {d.code for d in compile_text(src).errors}
    assert {"E201", "E101"} <= codes


@pytest.mark.parametrize("code", sorted(CODES))
def test_every_code_explains_itself(code):
    text = explain(code)
    assert text.startswith(code) and len(text) > 40
    assert explain(code.lower()) == text


def test_every_code_has_a_test():
    tested = set(CASES) | {"E002", "E402", "E501", "E601", "E701", "N001", "W104",
                            "E412"}  # E412: tests/dsl/test_hostile_input.py  # W104: tests/dsl/test_extension_static.py
    tested |= {"E811", "E812", "E813"}  # tests/dsl/test_tokenizer_lint.py
    tested |= {"E821", "W821"}  # tests/data/test_shards_lint.py
    tested |= {"E830", "E831"}  # tests/data/test_segments.py, tests/data/test_mixture.py
    tested |= {"E106", "E208", "E640", "E901", "E902"}  # tests/faults/test_no_internal_errors.py, test_bad_inputs.py
    tested |= {"N640", "E780", "E781"}  # tests/dsl/test_paramcheck.py
    tested |= {"E502"}  # tests/dsl/test_override_names.py
    tested |= {"E750", "E751", "E752", "E753", "E754", "E755", "E756"}  # tests/dsl/test_shapes.py
    tested |= {"W105"}  # tests/dsl/test_defaults.py
    tested |= {"E790", "E791", "E792"}  # tests/model/test_sharing.py
    tested |= {"E605", "W605", "W606"}  # tests/parallel/test_float8.py
    tested |= {"E606"}  # tests/pp/test_pp_partition.py
    assert set(CODES) <= tested


def test_github_annotation_format(compile_text):
    compiled = compile_text(HEAD + GPT.replace("Transformer(", "Transfomer("))
    line = render_github(compiled.errors[0])
    assert line.startswith("::error file=") and ",line=5,col=26,title=E201::" in line


def test_load_raises_the_public_compile_error_with_every_diagnostic(tmp_path):
    import l3m

    bad = tmp_path / "bad.l3m"
    bad.write_text("l3m 1\nlet a = (1\nlet b = 2 +\n")
    with pytest.raises(l3m.CompileError) as e:
        l3m.load(str(bad))
    assert [d.code for d in e.value.diagnostics if d.is_error] == ["E001"]
    assert "bad.l3m:3:1: error[E001]" in str(e.value)
