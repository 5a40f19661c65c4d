"""The language server's incremental parser gives exactly the whole-file parse, and its compile exactly
`l3m lint`'s diagnostics, after random edits (valid and broken) of the shipped files and of a long file;
and it really reuses the pieces an edit did not touch."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from l3m.dsl.parser import ParseFailure, item_keywords, parse
from l3m.lsp import incremental
from l3m.lsp.documents import compile_text
from l3m.lsp.incremental import IncrementalParser
from l3m.lsp.resolve_memo import ResolveMemo

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = sorted([*ROOT.glob("models/*.l3m"), *ROOT.glob("examples/*.l3m")])
NOISE = ["a", "(", ")", "{", "}", ":", '"', "#", "\n", " ", ",", "=", "->", "1", "x"]


def long_file(layers: int) -> str:
    out = ["l3m 1", "# a long model", "let dim = 16", "",
           "data { train: TextBytes(seq_len = 8, batch_size = 2) -> tokens, targets }", "",
           "model big {", "  preprocessor {", "    embed: TokenEmbedding(vocab = 256, dim = dim)  tokens -> x0", "  }",
           "  trunk {"]
    for i in range(1, layers + 1):
        out += [f"    # layer {i}", f"    t{i}: Transformer(dim = dim, depth = 1, heads = 4,",
                f"                      causal = true)  x{i - 1} -> h{i}",
                f"    p{i}: Linear(dim, dim, bias = false)  h{i} -> x{i}", ""]
    out += ["  }", f"  head {{ lm: LMHead(dim, 256)  x{layers} -> logits }}", "}", "",
            "loss ce: LMCrossEntropy() logits, targets -> loss", "optimizer AdamW(lr = 1e-3)", "train { steps = 10 }"]
    return "\n".join(out) + "\n"


def mutate(text: str, rng: random.Random) -> str:
    """One editor-like change: a character typed or deleted, a line added, removed, doubled or started with
    an item keyword (which may or may not start an item there)."""
    lines = text.split("\n")
    i = rng.randrange(len(lines))
    op = rng.randrange(7)
    if op == 0:
        del lines[i]
    elif op == 1:
        lines.insert(i, lines[i])
    elif op == 2:
        lines.insert(i, rng.choice(["", "    # a note", "  "]))
    elif op == 3:
        lines[i] = rng.choice(sorted(item_keywords())) + " " + lines[i]
    elif op == 4 and lines[i]:
        j = rng.randrange(len(lines[i]))
        lines[i] = lines[i][:j] + lines[i][j + 1:]
    else:
        j = rng.randrange(len(lines[i]) + 1)
        lines[i] = lines[i][:j] + rng.choice(NOISE) + lines[i][j:]
    return "\n".join(lines)


def outcome(fn, text: str, file: str):
    """The module, or the syntax diagnostics, of one parse."""
    try:
        return fn(text, file)
    except ParseFailure as e:
        return [(d.code, d.message, d.span, d.help, d.notes) for d in e.diagnostics]


def diagnostics(compiled) -> list[tuple]:
    return [(d.code, d.message, d.span, d.help, d.notes) for d in compiled.diagnostics]


@pytest.fixture
def split_small(monkeypatch):
    """Cut items into nodes from 3 lines on, so that the shipped (short) files exercise the cut too."""
    monkeypatch.setattr(incremental, "SPLIT_MIN_LINES", 3)


def test_item_keywords_come_from_the_grammar():
    words = item_keywords()
    assert {"let", "import", "model", "data", "loss", "optimizer", "train", "def"} <= words
    assert "trunk" not in words and "weight" not in words


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_random_edits_parse_as_the_whole_file(path, split_small):
    rng = random.Random(path.name)
    original = path.read_text()
    ip = IncrementalParser()
    text = original
    for step in range(20):
        text = original if step % 7 == 6 else mutate(text, rng)
        assert outcome(ip.parse, text, "f.l3m") == outcome(parse, text, "f.l3m"), (step, text)
    assert ip.stats["reused"] > 0


def test_random_edits_of_a_long_file_parse_as_the_whole_file(split_small):
    rng = random.Random(7)
    original = long_file(12)
    ip = IncrementalParser()
    text = original
    for step in range(40):
        text = original if step % 8 == 7 else mutate(text, rng)
        assert outcome(ip.parse, text, "big.l3m") == outcome(parse, text, "big.l3m"), (step, text)


def test_an_edit_reparses_only_its_node():
    text = long_file(100)
    ip = IncrementalParser()
    ip.parse(text, "big.l3m")
    for k, new in enumerate([text.replace("x49 -> h50", "xq49 -> h50"), text.replace("p50:", "\np50:")]):
        before = dict(ip.stats)
        assert ip.parse(new, "big.l3m") == parse(new, "big.l3m")
        parsed, reused = ip.stats["parsed"] - before["parsed"], ip.stats["reused"] - before["reused"]
        moved = ip.stats["moved"] - before["moved"]
        assert ip.stats["whole"] == 0
        assert parsed <= 3, parsed  # the node (and the header and the long item's skeleton are cheap)
        assert reused + moved >= 190
        if k == 1:  # a line inserted: the nodes below it moved down one line
            assert moved >= 90


def test_a_cut_that_does_not_hold_falls_back_to_the_whole_parse():
    """`data` at the start of a line that continues the loss's keys: not an item, and still parsed right."""
    text = long_file(50).replace("logits, targets -> loss", "logits,\ndata -> loss")
    assert "\ndata -> loss" in text
    ip = IncrementalParser()
    assert ip.parse(text, "big.l3m") == parse(text, "big.l3m")
    assert ip.stats["whole"] == 1


def test_compile_equals_lint_after_edits_of_a_long_file(tmp_path):
    """Diagnostics (codes, messages, positions, notes) identical to a full compile, edit after edit,
    with the same parser reused throughout (nothing it keeps is changed by a compile)."""
    path = str(tmp_path / "big.l3m")
    original = long_file(40)
    edits = [original.replace("x19 -> h20", "xq19 -> h20"),  # one E101
             original.replace("p7:", "\n\np7:"),  # lines moved
             original.replace("heads = 4,\n                      causal = true)  x3", "heads = 4,\n  causal = tru)  x3"),
             original.replace("p30: Linear(dim, dim", "p30: Linear(dim dim"),  # a syntax error in one node
             original.replace("bias = false)  h12", "bias = flase)  h12"),
             original.replace("let dim = 16", 'let dim = "wide"'),  # every node reading `dim` is wrong now
             original.replace("let dim = 16", "let dim = 16.0"),  # equal to 16, but not an int
             original.replace("let dim = 16", "let dimm = 16"),  # `dim` undefined: E403 with a suggestion
             original]
    ip, memo = IncrementalParser(), ResolveMemo()
    compile_text(path, original, parser=ip, memo=memo)
    for k, text in enumerate(edits):
        assert text != original or k == len(edits) - 1
        got = diagnostics(compile_text(path, text, parser=ip, memo=memo))
        assert got == diagnostics(compile_text(path, text)), k
    assert ip.stats["reused"] > 100 and memo.stats["reused"] > 50


def test_the_memo_replays_unchanged_nodes_only():
    """After a one-node edit every other node call is replayed; after a let changes, none is."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "big.l3m")
        text = long_file(30)
        ip, memo = IncrementalParser(), ResolveMemo()
        compile_text(path, text, parser=ip, memo=memo)
        nodes = memo.stats["resolved"]
        assert nodes >= 60 and memo.stats["reused"] == 0
        compile_text(path, text.replace("x9 -> h10", "xq9 -> h10"), parser=ip, memo=memo)
        # the edited node, and the one-line `head { lm: ... }`, which is parsed with the long item's skeleton
        assert (memo.stats["resolved"], memo.stats["reused"]) == (nodes + 2, nodes - 2)
        compile_text(path, text.replace("let dim = 16", "let dim = 32"), parser=ip, memo=memo)
        assert memo.stats["resolved"] == 2 * nodes + 2
        # Enter pressed above node p20: the nodes below it moved and are replayed moved, diagnostics too
        moved = text.replace("let dim = 16", "let dim = 32").replace("xq", "x").replace("    p20:", "\n    p20:")
        moved = moved.replace("h25 -> x25", "h25 -> xq25")  # and an error below the new line
        got = diagnostics(compile_text(path, moved, parser=ip, memo=memo))
        assert got == diagnostics(compile_text(path, moved)) and len(got) == 2  # W101 and E101
        assert memo.stats["moved"] >= 20


@pytest.mark.parametrize("path", SHIPPED[::3], ids=lambda p: p.name)
def test_compile_equals_lint_after_edits_of_shipped_files(path, split_small):
    rng = random.Random(path.name + "compile")
    original = path.read_text()
    target = str(path)  # in place, so its imports resolve; nothing is written (unsaved buffer)
    ip, memo = IncrementalParser(), ResolveMemo()
    text = original
    compile_text(target, text, parser=ip, memo=memo)
    for step in range(5):
        text = mutate(text, rng) if step % 2 == 0 else text.replace("\n", "\n\n", 1)
        got = diagnostics(compile_text(target, text, parser=ip, memo=memo))
        assert got == diagnostics(compile_text(target, text)), step


def test_the_server_publishes_what_lint_says_edit_after_edit(tmp_path):
    """Over JSON-RPC: a long document edited (a typo, Enter pressed above it, a broken node, the fix) gets,
    each time, the diagnostics of a full compile of that text: codes, messages and positions."""
    pytest.importorskip("pygls")
    from lsp_client import LspClient

    path = tmp_path / "big.l3m"
    original = long_file(45)
    texts = [original.replace("x30 -> h31", "xq30 -> h31"),
             original.replace("x30 -> h31", "xq30 -> h31").replace("p10:", "\n\np10:"),
             original.replace("p10:", "\n\np10:").replace("p40: Linear(dim, dim", "p40: Linear(dim dim"),
             original.replace("p10:", "\n\np10:"), original]
    client = LspClient(tmp_path)
    try:
        client.initialize(tmp_path)
        uri = client.open(path, original)
        client.wait_diagnostics(uri, 1, timeout=120)
        for version, text in enumerate(texts, start=2):
            client.change(uri, version, text)
            got = [(d["code"], d["range"]["start"]["line"], d["range"]["start"]["character"], d["message"])
                   for d in client.wait_diagnostics(uri, version, timeout=120)]
            want = compile_text(str(path), text).diagnostics
            assert [g[:3] for g in got] == [(d.code, d.span.line - 1, d.span.col - 1) for d in want], version
            assert all(g[3].startswith(d.message) for g, d in zip(got, want)), version
            assert any(d.is_error for d in want) == (version in (2, 3, 4)), version
    finally:
        client.close()
