"""`l3m lsp` driven as an editor drives it: a real server process, JSON-RPC over its stdin/stdout.

One server serves the whole module (starting one costs an interpreter and the front end's imports).
The process runs with a `torch` that records any import of it: the server must never load torch.
"""

from __future__ import annotations

import pytest
from lsp_client import LspClient

pytest.importorskip("pygls")

PROGRAM = """l3m 1
let dim = 32
data { train: TextBytes(seq_len = 8, batch_size = 2) -> tokens, targets }
model m {
  preprocessor { embed: TokenEmbedding(vocab = 256, dim = dim) tokns -> x }
  trunk { blocks: Transformer(dim = dim, depth = 2, heads = 4) x -> x }
  head { lm: LMHead(dim, 256) x -> logits }
}
loss ce: LMCrossEntropy() logits, targets -> loss
optimizer AdamW(lr = 1e-3)
train { steps = 10 }
"""
BAD_LINE = 4  # 0-based: the `tokns` typo
TORCH_SHIM = """import os
open(os.environ["L3M_TEST_TORCH_MARK"], "a").write("torch imported\\n")
raise ImportError("torch is blocked in this test")
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("lsp")
    shim = root / "shim"
    (shim / "torch").mkdir(parents=True)
    (shim / "torch" / "__init__.py").write_text(TORCH_SHIM)
    mark = root / "torch-imported.txt"
    client = LspClient(root, env={"PYTHONPATH": str(shim), "L3M_TEST_TORCH_MARK": str(mark)})
    client.root, client.mark = root, mark
    client.capabilities = client.initialize(root)["capabilities"]
    uri = client.open(root / "prog.l3m", PROGRAM)
    client.opened = (uri, client.wait_diagnostics(uri, 1))
    yield client
    if client.proc.poll() is None:
        client.proc.kill()


def _line_col(text: str, needle: str, nth: int = 0) -> tuple[int, int]:
    """(line, character) of the `nth` occurrence of `needle`."""
    start = -1
    for _ in range(nth + 1):
        start = text.index(needle, start + 1)
    line = text.count("\n", 0, start)
    return line, start - (text.rfind("\n", 0, start) + 1)


def test_capabilities(server):
    caps = server.capabilities
    for cap in ("hoverProvider", "definitionProvider", "completionProvider", "documentFormattingProvider",
                "documentSymbolProvider"):
        assert caps.get(cap), cap


def test_open_publishes_the_lint_error_at_its_exact_range(server):
    _uri, diags = server.opened
    assert len(diags) == 1, diags
    d = diags[0]
    assert d["code"] == "E101" and d["severity"] == 1 and d["source"] == "l3m"
    col = PROGRAM.split("\n")[BAD_LINE].index("tokns")
    assert d["range"] == {"start": {"line": BAD_LINE, "character": col},
                          "end": {"line": BAD_LINE, "character": col + len("tokns")}}
    assert "'tokns'" in d["message"] and "help: did you mean 'tokens'?" in d["message"]


def test_an_edit_that_fixes_it_clears_the_diagnostics(server):
    uri, _ = server.opened
    col = PROGRAM.split("\n")[BAD_LINE].index("tokns")
    rng = {"start": {"line": BAD_LINE, "character": col}, "end": {"line": BAD_LINE, "character": col + 5}}
    server.change(uri, 2, "tokens", rng)  # incremental, as editors send it
    assert server.wait_diagnostics(uri, 2) == []
    server.change(uri, 3, "tokns", {"start": rng["start"], "end": {"line": BAD_LINE, "character": col + 6}})
    again = server.wait_diagnostics(uri, 3)
    assert [d["code"] for d in again] == ["E101"]
    server.change(uri, 4, PROGRAM.replace("tokns", "tokens"))  # a whole-text change too
    assert server.wait_diagnostics(uri, 4) == []


FIXED = PROGRAM.replace("tokns", "tokens")


def test_a_burst_of_edits_ends_with_the_diagnostics_of_the_last_text(server):
    uri, _ = server.opened
    for v in range(20, 30):  # typing: alternately broken and fixed, faster than a compile
        server.change(uri, v, PROGRAM if v % 2 == 0 else FIXED)
    assert server.wait_diagnostics(uri, 29) == []
    server.change(uri, 30, FIXED)
    assert server.wait_diagnostics(uri, 30) == []
    with server.lock:
        burst = [p for p in server.published if p["uri"] == uri and 20 <= p["version"] <= 30]
    versions = [p["version"] for p in burst]
    assert versions == sorted(versions) and versions[-2:] == [29, 30]
    for p in burst:  # whatever was published is right for the text of the version it names
        broken = p["version"] % 2 == 0 and p["version"] < 30
        assert [d["code"] for d in p["diagnostics"]] == (["E101"] if broken else [])


def test_hover_on_a_block_type_shows_its_signature_and_doc(server):
    uri, _ = server.opened
    line, col = _line_col(FIXED, "Transformer")
    hover = server.at("textDocument/hover", uri, line, col + 3)
    text = hover["contents"]["value"]
    assert "Transformer(" in text and "heads: int" in text and "depth: int" in text
    assert "Ports: `x, mask?" in text
    assert hover["range"]["start"] == {"line": line, "character": col}


def test_hover_on_an_argument_and_a_setting(server):
    uri, _ = server.opened
    line, col = _line_col(FIXED, "heads = 4")
    assert "heads: int" in server.at("textDocument/hover", uri, line, col + 1)["contents"]["value"]
    line, col = _line_col(FIXED, "steps = 10")
    text = server.at("textDocument/hover", uri, line, col + 1)["contents"]["value"]
    assert "train.steps: int = 1000" in text


def test_hover_on_a_key_shows_its_shape_and_writer(server):
    uri, _ = server.opened
    line, col = _line_col(FIXED, "x -> x")  # the trunk reads x
    text = server.at("textDocument/hover", uri, line, col)["contents"]["value"]
    assert "written by block `embed`" in text
    assert "key x: float[B, 8, 32]" in text  # its shape, as lint inferred it


def test_definition_of_a_key_is_the_node_that_wrote_that_version(server):
    uri, _ = server.opened
    line, col = _line_col(FIXED, "x -> logits")  # the head reads the trunk's x (version 1), not embed's
    loc = server.at("textDocument/definition", uri, line, col)
    want_line, want_col = _line_col(FIXED, "x -> x", 0)
    want_col += len("x -> ")
    assert loc["uri"] == uri
    assert loc["range"]["start"] == {"line": want_line, "character": want_col}


def test_definition_of_a_let(server):
    uri, _ = server.opened
    line, col = _line_col(FIXED, "dim = dim", 0)
    loc = server.at("textDocument/definition", uri, line, col + len("dim = "))
    assert loc["range"]["start"] == {"line": 1, "character": 4}


def test_completion_inside_a_call_offers_its_arguments(server):
    text = FIXED.replace("head { lm: LMHead(dim, 256) x -> logits }", "head { lm: LMHead(dim, 256) x -> logits }\n"
                         "  trunk { more: Transformer(")
    uri = server.open(server.root / "typing.l3m", text)
    server.wait_diagnostics(uri, 1)  # it does not parse: a syntax error, and completion still works
    line, col = _line_col(text, "Transformer(", 1)
    items = server.at("textDocument/completion", uri, line, col + len("Transformer("))["items"]
    labels = {i["label"] for i in items}
    assert {"dim", "depth", "heads", "kv_heads", "rope"} <= labels
    assert "tokens" not in labels and "AdamW" not in labels


def test_completion_of_types_keys_and_settings(server):
    uri, _ = server.opened
    server.change(uri, 10, FIXED + "loss z: \n")
    server.wait_diagnostics(uri, 10)
    end = len(FIXED.split("\n")) - 1
    labels = {i["label"] for i in server.at("textDocument/completion", uri, end, len("loss z: "))["items"]}
    assert "LMCrossEntropy" in labels and "Transformer" not in labels  # losses only after `loss NAME:`
    line, col = _line_col(FIXED, "-> logits")
    labels = {i["label"] for i in server.at("textDocument/completion", uri, line, col + 3)["items"]}
    assert {"tokens", "targets", "x", "logits"} <= labels
    line, col = _line_col(FIXED, "steps = 10")
    labels = {i["label"] for i in server.at("textDocument/completion", uri, line, col)["items"]}
    assert {"steps", "dtype", "grad_accum"} <= labels
    server.change(uri, 11, FIXED)
    assert server.wait_diagnostics(uri, 11) == []


def test_formatting_returns_the_canonical_layout(server):
    from l3m.dsl.fmt import format_text

    messy = "l3m 1\nlet   dim=32\nlet depth = 2\ntrain {steps=10}\n"
    uri = server.open(server.root / "messy.l3m", messy)
    server.wait_diagnostics(uri, 1)
    opts = {"tabSize": 2, "insertSpaces": True}
    edits = server.request("textDocument/formatting", {"textDocument": {"uri": uri}, "options": opts})
    assert len(edits) == 1 and edits[0]["newText"] == format_text(messy)
    assert edits[0]["range"]["start"] == {"line": 0, "character": 0}
    server.change(uri, 2, format_text(messy))
    server.wait_diagnostics(uri, 2)
    assert server.request("textDocument/formatting", {"textDocument": {"uri": uri}, "options": opts}) == []


def test_document_symbols_outline_the_model(server):
    uri, _ = server.opened
    syms = server.request("textDocument/documentSymbol", {"textDocument": {"uri": uri}})
    names = [s["name"] for s in syms]
    assert names == ["dim", "data", "m", "ce", "optimizer", "train"]
    model = syms[2]
    assert [c["name"] for c in model["children"]] == ["preprocessor", "trunk", "head"]
    trunk = model["children"][1]
    assert [c["name"] for c in trunk["children"]] == ["blocks"]
    assert trunk["children"][0]["detail"] == "Transformer"
    assert model["range"]["end"]["line"] == 7  # the model's closing brace


def test_imports_are_checked_from_open_buffers_and_lead_to_their_file(server):
    root = server.root
    (root / "shared.l3m").write_text("l3m 1\nlet width = 16\n")
    main = "l3m 1\nimport \"shared.l3m\" as s\nlet dim = s.width * 2\n"
    uri = server.open(root / "main.l3m", main)
    assert server.wait_diagnostics(uri, 1) == []
    loc = server.at("textDocument/definition", uri, 1, 10)
    assert loc["uri"] == (root / "shared.l3m").as_uri()
    loc = server.at("textDocument/definition", uri, 2, len("let dim = s.w"))
    assert loc["uri"] == (root / "shared.l3m").as_uri() and loc["range"]["start"] == {"line": 1, "character": 4}
    # The imported file, opened and broken without saving: the importer is re-checked against the buffer.
    shared = server.open(root / "shared.l3m", "l3m 1\nlet width = 16 / 0\n")
    server.wait_diagnostics(shared, 1)
    diags = server.wait_diagnostics(uri)
    assert [d["code"] for d in diags] == ["E404"]
    assert diags[0]["range"]["start"] == {"line": 1, "character": 7}  # at the import's path
    assert "shared.l3m:2:13" in diags[0]["message"]


def test_shutdown_exits_cleanly_without_ever_importing_torch(server):
    assert server.close() == 0
    assert not server.mark.exists(), "the language server imported torch"
