"""The server's analysis in process (no JSON-RPC): where the cursor stands for completion, positions in
UTF-16, compiling unsaved text, templates in hover and definition, the outline's ranges."""

from __future__ import annotations

import pytest

pytest.importorskip("lsprotocol")

from l3m.lsp.context import analyse  # noqa: E402
from l3m.lsp.positions import Pos, from_client, to_client  # noqa: E402

TRUNK = "l3m 1\nmodel m {\n  trunk {\n    t: "


@pytest.mark.parametrize("text, kind, extra", [
    (TRUNK + "Transformer(", "arg", {"call": "Transformer"}),
    (TRUNK + "Transformer(dim = 4, ", "arg", {"given": ["dim"]}),
    (TRUNK + "Transformer(dim = 4, mlp = ", "value", {"arg": "mlp"}),
    (TRUNK + "Trans", "type", {"kinds": ("block",), "prefix": "Trans"}),
    (TRUNK + "Transformer(dim = 4) x -> ", "key", {"call": "Transformer"}),
    (TRUNK + "Transformer(dim = 4) ", "key", {}),
    (TRUNK + "Transformer(dim = 4) x, ", "key", {}),
    (TRUNK + "Transformer(dim = 4) x -> y\n    ", "none", {}),
    (TRUNK + "Transformer(dim = 4) (x = ", "key", {}),
    (TRUNK + "Transformer(dim = 4) (", "port", {"call": "Transformer"}),
    ("l3m 1\ntrain {\n  steps = 10\n  dt", "section_key", {"section": "train", "prefix": "dt"}),
    ("l3m 1\ntrain { steps = 10, dtype = ", "section_value", {"setting": "dtype"}),
    ("l3m 1\nmesh { tp = 2 ", "section_key", {"section": "mesh"}),
    ("l3m 1\ndata {\n  train: Te", "type", {"kinds": ("source", "generator")}),
    ("l3m 1\ndata {\n  on_", "section_key", {"section": "data"}),
    ("l3m 1\ndata {\n  train: TextBytes(seq_len = 8) -> ", "key", {}),
    ("l3m 1\nloss ce: LM", "type", {"kinds": ("loss",)}),
    ("l3m 1\nmetric acc: ", "type", {"kinds": ("metric",)}),
    ("l3m 1\nloss ce: LMCrossEntropy() logits, ", "key", {}),
    ("l3m 1\noptimizer Ad", "type", {"kinds": ("optimizer",)}),
    ("l3m 1\nlet x = 3\n", "top", {}),
    ("l3m 1\nlet x = ", "value", {}),
    ("l3m 1\nmodel m {\n  ", "stage_item", {}),
    ("l3m 1\nmodel m {\n  model enc = Enc", "type", {"template": True}),
    ("l3m 1\nmodel m = Enc(", "arg", {"call": "Enc"}),
    ("l3m 1\n# a comment Tra", "none", {}),
    ('l3m 1\nlet s = "abc', "none", {}),
    ('l3m 1\nlet s = "a(b{"\ntrain { ', "section_key", {}),  # brackets in strings do not count
])
def test_completion_context(text, kind, extra):
    ctx = analyse(text)
    assert ctx.kind == kind, ctx
    for k, v in extra.items():
        assert getattr(ctx, k) == v, (k, ctx)


def test_positions_count_utf16_units():
    lines = ['let s = "😀" + 1', "x"]
    col = lines[0].index("+")  # 11 code points in, 12 UTF-16 units
    assert to_client(lines, 0, col) == (0, col + 1)
    assert to_client(lines, 0, col, "utf-32") == (0, col)
    assert from_client(lines, 0, col + 1) == Pos(0, col)
    assert to_client(lines, 1, 1) == (1, 1)


def test_unsaved_text_compiles_without_touching_the_disk(tmp_path):
    from l3m.lsp.documents import compile_text

    main = tmp_path / "main.l3m"
    shared = tmp_path / "shared.l3m"  # neither file exists
    c = compile_text(str(main), 'l3m 1\nimport "shared.l3m" as s\nlet d = s.w * 2\n', {str(shared): "l3m 1\nlet w = 8\n"})
    assert c.ok and c.program.lets["d"] == 16
    assert not main.exists() and not shared.exists()
    bad = compile_text(str(main), "l3m 1\nlet x = 1\0\n")
    assert [d.code for d in bad.diagnostics] == ["E002"]  # the same refusal as for a file with NUL bytes


def test_diagnostic_ranges_are_utf16_and_name_the_code():
    from l3m.lsp.diagnostics import to_lsp
    from l3m.lsp.documents import Document

    text = 'l3m 1\nlet s = "😀" + 1\n'
    doc = Document("file:///x/e.l3m", "/tmp/lsp-e.l3m", text)
    doc.compile()
    (d,) = to_lsp(doc)
    assert d.code == "E404" and d.severity == 1
    start = text.split("\n")[1].index('"')
    assert (d.range.start.line, d.range.start.character) == (1, start)
    assert d.range.end.character == len(text.split("\n")[1]) + 1  # one more unit for the emoji


TEMPLATE = """l3m 1
let width = 8
def Enc(dim, depth = 2) tokens -> x {
  preprocessor { e: TokenEmbedding(vocab = 256, dim = dim) tokens -> x }
}
data { train: TextBytes(seq_len = 8, batch_size = 2) -> tokens, targets }
model m = Enc(dim = width) tokens -> x
"""


def _doc(text: str):
    from l3m.lsp.documents import Document

    doc = Document("file:///x/t.l3m", "/tmp/lsp-t.l3m", text)
    doc.compile()
    return doc


def _pos(text: str, needle: str, nth: int = 0, shift: int = 0) -> Pos:
    i = -1
    for _ in range(nth + 1):
        i = text.index(needle, i + 1)
    line = text.count("\n", 0, i)
    return Pos(line, i - (text.rfind("\n", 0, i) + 1) + shift)


def test_templates_in_hover_and_definition():
    from l3m.lsp.definition import definition
    from l3m.lsp.hover import hover

    doc = _doc(TEMPLATE)
    h = hover(doc, _pos(TEMPLATE, "Enc(dim = width)", shift=1))
    assert "def Enc(dim, depth = 2) tokens -> x" in h.contents.value
    loc = definition(doc, _pos(TEMPLATE, "Enc(dim = width)", shift=1))
    assert (loc.range.start.line, loc.range.start.character) == (2, 4)
    loc = definition(doc, _pos(TEMPLATE, "dim = dim", shift=len("dim = ")))  # a template parameter
    assert (loc.range.start.line, loc.range.start.character) == (2, 8)
    loc = definition(doc, _pos(TEMPLATE, "dim = width", shift=1))  # the argument -> the parameter
    assert (loc.range.start.line, loc.range.start.character) == (2, 8)
    h = hover(doc, _pos(TEMPLATE, "width)", shift=1))
    assert "let width = 8" in h.contents.value


def test_outline_ranges_cover_their_blocks():
    from l3m.lsp.symbols import document_symbols

    syms = document_symbols(_doc(TEMPLATE))
    assert [s.name for s in syms] == ["width", "Enc", "data", "m"]
    enc = syms[1]
    assert enc.range.end.line == 4 and [c.name for c in enc.children] == ["preprocessor"]
    for s in syms:
        assert (s.range.start.line, s.range.start.character) <= \
            (s.selection_range.start.line, s.selection_range.start.character)


@pytest.mark.parametrize("text, want, unwanted", [
    ("l3m 1\ntrain { dtype = ", {"fp32", "bf16", "fp16"}, {"true", "steps"}),
    ("l3m 1\nlet w = 4\nmodel m { trunk { t: Transformer(dim = 4, mlp = ", {"swiglu", "gelu", "w"}, {"true"}),
    ("l3m 1\nlet w = 4\nmodel m { trunk { t: Transformer(dim = 4, depth = ", {"w", "true"}, {"swiglu"}),
    ("l3m 1\nmesh { ", {"dp_shard", "tp", "cp"}, {"steps"}),
    ("l3m 1\ndata { train: ", {"TextBytes", "DigitsImages", "RandomMask"}, {"Transformer", "AdamW"}),
    ("l3m 1\nmodel m { trunk { t: Transformer(dim = 4) (", {"x", "mask"}, {"dim"}),
])
def test_completion_items(text, want, unwanted):
    from l3m.lsp.completion import complete
    from l3m.lsp.documents import Document

    doc = Document("file:///x/c.l3m", "/tmp/lsp-c.l3m", text)
    doc.compile()
    lines = text.split("\n")
    labels = {i.label for i in complete(doc, Pos(len(lines) - 1, len(lines[-1]))).items}
    assert want <= labels and not (unwanted & labels), labels


def test_block_types_lead_to_their_python_source(tmp_path):
    from l3m.lsp.definition import definition
    from l3m.lsp.documents import Document
    from l3m.lsp.hover import hover

    (tmp_path / "myblocks.py").write_text(
        "from torch import nn\n\nfrom l3m import register\n\n\n@register(\"block\")\nclass Scale(nn.Module):\n"
        "    \"\"\"Multiplies by a constant.\"\"\"\n\n    outputs = (\"x\",)\n\n"
        "    def __init__(self, factor: float = 2.0):\n        super().__init__()\n        self.factor = factor\n\n"
        "    def forward(self, x):\n        return x * self.factor\n")
    text = ('l3m 1\nextension "myblocks"\n'
            "data { train: TextBytes(seq_len = 8, batch_size = 2) -> tokens, targets }\n"
            "model m {\n  preprocessor { e: TokenEmbedding(vocab = 256, dim = 8) tokens -> x }\n"
            "  trunk { s: Scale(factor = 3.0) x -> x }\n}\n")
    doc = Document((tmp_path / "p.l3m").as_uri(), str(tmp_path / "p.l3m"), text)
    doc.compile()
    at = _pos(text, "Scale(", shift=1)
    h = hover(doc, at).contents.value
    assert "factor: float = 2.0" in h and "Multiplies by a constant." in h
    loc = definition(doc, at)
    assert loc.uri == (tmp_path / "myblocks.py").as_uri() and loc.range.start.line == 6
    loc = definition(doc, _pos(text, "TokenEmbedding", shift=1))  # a built-in: its class in l3m's source
    assert loc.uri.endswith(".py") and "/l3m/" in loc.uri


def test_every_request_answers_on_every_shipped_file():
    """Hover and definition on everything in every shipped file, completion at every line's end, the outline
    and formatting: none may fail, and each hovered name or type says something."""
    from helpers import SHIPPED

    from l3m.lsp.completion import complete
    from l3m.lsp.definition import definition
    from l3m.lsp.documents import Document
    from l3m.lsp.formatting import format_document
    from l3m.lsp.hover import hover
    from l3m.lsp.symbols import document_symbols

    for path in SHIPPED:
        try:
            text = path.read_text()
        except FileNotFoundError:  # listed at import, gone since (another tool's scratch file)
            continue
        doc = Document(path.as_uri(), str(path), text)
        doc.compile()
        assert doc.module() is not None, path
        for occ in doc.occurrences():
            at = Pos(occ.span.line - 1, occ.span.col)
            h = hover(doc, at)
            if occ.kind in ("type", "arg", "key", "let", "setting", "def"):
                assert h is not None and h.contents.value, (path, occ.kind, occ.span)
            definition(doc, at)
        lines = text.split("\n")
        for i, line in enumerate(lines):
            complete(doc, Pos(i, len(line)))
        assert document_symbols(doc), path
        assert format_document(doc) is not None, path


def test_an_edit_to_a_comment_reuses_the_last_compile():
    from l3m.lsp.documents import Document

    text = "l3m 1\nlet a = 1  # one\nlet b = a / 0\n"
    doc = Document("file:///x/r.l3m", "/tmp/lsp-r.l3m", text)
    first = doc.compile()
    assert [d.code for d in first.diagnostics] == ["E404"]
    doc.text = text.replace("# one", '# "one", # not a string   ').replace("/ 0\n", "/ 0   \n")
    assert doc.compile() is first and doc.fresh()  # nothing the lexer sees moved: the same result stands
    doc.text = text.replace("# one", "# one\0")
    assert [d.code for d in doc.compile().diagnostics] == ["E002"]  # a NUL byte is refused, even in a comment
    doc.text = text + 'let s = "x#y"\n'
    second = doc.compile()
    doc.text = text + 'let s = "x#z"\n'  # a `#` in a string starts no comment: this is a change of code
    assert doc.compile() is not second and doc.compiled.program.lets["s"] == "x#z"
    second = doc.compile(force=True)
    assert doc.compile() is second and doc.compile(force=True) is not second
    doc.text = text.replace("let b", "\nlet b")  # lines moved: compiled again
    assert doc.compile() is not second
