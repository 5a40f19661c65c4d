"""Text sources read samples from disk on demand: an index of document offsets, never the whole corpus.

Samples must be the ones the old full read gave (expected values are rebuilt here from the files
with plain Python), memory must stay flat for a big JSONL, and bad lines must name file:line.
"""

from __future__ import annotations

import json
import tracemalloc

import pytest
import torch

from l3m.data.errors import DataError
from l3m.data.loader import build_loader
from l3m.data.sources.text import TextFiles, TextJSONL
from l3m.data.sources.textindex import DocIndex
from l3m.data.tokenizers import load_tokenizer
from l3m.data.tokenizers.policy import CaptionEncoder

WORDS = ["<pad>", "</s>", "<unk>", "the", "cat", "sat", "on", "mat", "dog", "ran"]


@pytest.fixture(scope="module")
def word_tok(tmp_path_factory):
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    path = tmp_path_factory.mktemp("tok") / "words.json"
    tok.save(str(path))
    return str(path)


def _write_jsonl(path, texts, blank_every=0):
    with open(path, "w") as f:
        for i, t in enumerate(texts):
            if blank_every and i % blank_every == 0:
                f.write("\n")  # blank lines are not documents
            f.write(json.dumps({"text": t}) + "\n")


def test_rows_match_an_encoder_over_the_whole_corpus(tmp_path, word_tok):
    texts = [" ".join(WORDS[3 + (i + j) % 7] for j in range(i % 9)) for i in range(40)]
    _write_jsonl(tmp_path / "a.jsonl", texts[:25], blank_every=7)
    _write_jsonl(tmp_path / "b.jsonl", texts[25:])
    src = TextJSONL(str(tmp_path / "*.jsonl"), seq_len=5, tokenizer=word_tok, pack=False, pad_token="</s>",
                    test_fraction=0.25)
    test = TextJSONL(str(tmp_path / "*.jsonl"), seq_len=5, tokenizer=word_tok, pack=False, pad_token="</s>",
                     test_fraction=0.25, split="test")
    enc = CaptionEncoder(load_tokenizer(word_tok, "stream"), 6, "none", "</s>")
    want = [enc(t) for t in texts]
    got = [src[i] for i in range(len(src))] + [test[i] for i in range(len(test))]
    assert len(src) == 30 and len(test) == 10
    for row, w in zip(got, want, strict=True):
        assert row["tokens"].tolist() == w[:-1] and row["targets"].tolist() == w[1:]


def test_byte_windows_cross_documents_and_files(tmp_path):
    texts = [f"doc{i}:" + "x" * (i % 5) for i in range(30)]
    _write_jsonl(tmp_path / "a.jsonl", texts[:10])
    _write_jsonl(tmp_path / "b.jsonl", texts[10:])
    src = TextJSONL(str(tmp_path / "*.jsonl"), seq_len=7, batch_size=1, separator="|", test_fraction=0.2)
    stream = "|".join(texts).encode()
    train = stream[: int(len(stream) * 0.8)]
    assert len(src) == (len(train) - 1) // 7
    for i in range(len(src)):
        w = train[i * 7 : i * 7 + 8]
        assert bytes(src[i]["tokens"].tolist()) == w[:-1] and bytes(src[i]["targets"].tolist()) == w[1:]
    capped = TextJSONL(str(tmp_path / "*.jsonl"), seq_len=3, batch_size=1, separator="|", max_bytes=40)
    kept = "|".join(texts[:5]).encode()  # the scan stops after the document that reaches 40 bytes
    assert len(kept) == 39 and bytes(capped.stream.tolist()) == kept[: int(39 * 0.95)]


def test_files_are_read_by_seek(tmp_path):
    (tmp_path / "a.txt").write_bytes(bytes(range(32, 127)) * 3)
    (tmp_path / "b.txt").write_bytes(b"\xff not utf8")
    (tmp_path / "c.txt").write_text("tail of the corpus " * 4)
    src = TextFiles(str(tmp_path), seq_len=16, batch_size=1, test_fraction=0.1)
    stream = (tmp_path / "a.txt").read_bytes() + (tmp_path / "c.txt").read_bytes()
    part = stream[: int(len(stream) * 0.9)]
    got = b"".join(bytes(src[i]["tokens"].tolist()) for i in range(len(src)))
    assert got == part[: len(src) * 16]


def test_a_big_jsonl_is_never_read_whole(tmp_path, word_tok):
    """8 MB of JSONL: indexing and reading samples allocates a fraction of it (8 bytes per document)."""
    path = tmp_path / "big.jsonl"
    line = json.dumps({"text": "the cat sat on the mat " * 12}) + "\n"
    n = 8_000_000 // len(line)
    with open(path, "w") as f:
        for _ in range(n // 1000):
            f.write(line * 1000)
    size = path.stat().st_size
    src = TextJSONL(str(path), seq_len=31, tokenizer=word_tok, pack=False, pad_token="</s>", batch_size=4)
    tracemalloc.start()
    try:
        count = len(src)
        rows = [src[i] for i in (0, count // 2, count - 1)]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == int((n // 1000) * 1000 * 0.95)
    assert src.index.offsets.nbytes == 8 * len(src.index)
    assert peak < size / 4, f"peak {peak} bytes for a {size}-byte corpus"
    assert rows[1]["tokens"][:6].tolist() == [3, 4, 5, 6, 3, 7]


def test_a_malformed_line_names_file_and_line_when_its_sample_is_read(tmp_path, word_tok):
    path = tmp_path / "docs.jsonl"
    path.write_text('{"text": "the cat"}\n\n{"text": "dog ran"}\n{oops\n' + '{"text": "mat"}\n' * 8)
    src = TextJSONL(str(path), seq_len=4, tokenizer=word_tok, pack=False, test_fraction=0.1)
    assert len(src) == 9  # nothing is parsed up front
    assert src[1]["tokens"].tolist()[:2] == [8, 9]
    with pytest.raises(DataError, match=r"docs.jsonl:4: not valid JSON"):
        src[2]
    other = TextJSONL(str(path), field="id", seq_len=4, tokenizer=word_tok, pack=False, test_fraction=0.1)
    with pytest.raises(DataError, match=r"docs.jsonl:1: expected a string field 'id'"):
        other[0]


def test_streaming_rows_resume_exactly_with_workers(tmp_path, word_tok):
    _write_jsonl(tmp_path / "d.jsonl", [" ".join(WORDS[3:3 + i % 7]) for i in range(64)])
    src = TextJSONL(str(tmp_path / "d.jsonl"), seq_len=6, tokenizer=word_tok, pack=False, batch_size=4)
    full = build_loader(src, seed=3, num_workers=2)
    batches = [next(full)["tokens"] for _ in range(20)]
    state = None
    part = build_loader(src, seed=3, num_workers=2)
    for _ in range(9):
        next(part)
    state = part.state_dict()
    part.close()
    again = build_loader(src, seed=3, num_workers=2)
    again.load_state_dict(state)
    for b in batches[9:]:
        assert torch.equal(next(again)["tokens"], b)
    full.close()
    again.close()


def test_doc_index_stops_at_the_cap(tmp_path):
    (tmp_path / "a.txt").write_text("a" * 10)
    (tmp_path / "b.txt").write_text("b" * 10)
    (tmp_path / "c.txt").write_text("c" * 10)
    files = sorted(tmp_path.glob("*.txt"))
    assert len(DocIndex(files, None, limit=15)) == 2  # the document that reaches the cap is kept
    assert len(DocIndex(files, None)) == 3


def test_skip_leaves_a_malformed_line_out_of_a_byte_stream(tmp_path):
    from l3m.data.errors import scan_policy

    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "alpha"}\n{oops\n{"text": "beta"}\n{"text": "gamma"}\n')
    with pytest.raises(DataError, match="d.jsonl:2: not valid JSON"):
        len(TextJSONL(str(path), seq_len=3, batch_size=1, separator="|"))
    with scan_policy("skip"):
        src = TextJSONL(str(path), seq_len=3, batch_size=1, separator="|", test_fraction=0.1)
        len(src)
    assert src.scan_errors == [f"{path}:2: not valid JSON (Expecting property name enclosed in double quotes)"]
    assert bytes(src.stream.tolist()) == b"alpha|beta|gamma"[: int(16 * 0.9)]
