"""The `segments` port of packed text sources, and lint's checks of document masking (E830)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from l3m.data.loader import build_loader
from l3m.data.segments import pack_with_ends, window_segments
from l3m.data.sources.text import TextFiles, TextJSONL
from l3m.data.tokenizers import load_tokenizer
from l3m.data.tokenizers.policy import pack_documents

TOK = "stdlib_bpe_2k"


def write_docs(root, n: int = 12):
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):  # documents of different lengths
        (root / f"d{i:02d}.txt").write_text(f"document {i}: " + "word " * (3 + 2 * i))
    return root


def test_pack_with_ends_is_the_packed_stream_and_its_document_ends():
    tok = load_tokenizer(TOK, "stream")
    texts = ["one two", "three", "", "four five six"]
    ids, ends = pack_with_ends(tok, texts)
    assert np.array_equal(ids, pack_documents(tok, texts))
    assert ends[-1] == len(ids) and (ids[ends - 1] == tok.eos_id).all()  # every document ends with its EOS
    assert window_segments(ends, 0, int(ends[-1])).tolist() == np.repeat(np.arange(4), np.diff(ends, prepend=0)).tolist()


def test_window_segments_count_from_zero_and_keep_the_eos_in_its_document():
    ends = np.array([3, 5, 9])  # documents [0, 3), [3, 5), [5, 9); the EOS of each is its last position
    assert window_segments(ends, 0, 9).tolist() == [0, 0, 0, 1, 1, 2, 2, 2, 2]
    assert window_segments(ends, 2, 4).tolist() == [0, 1, 1, 2]  # starts mid-document: that one is 0
    assert window_segments(ends, 5, 3).tolist() == [0, 0, 0]


@pytest.mark.parametrize("split", ["train", "test"])
def test_packed_windows_carry_their_documents(tmp_path, split):
    src = TextFiles(root=str(write_docs(tmp_path / "docs")), pattern="*.txt", seq_len=16, batch_size=2,
                    tokenizer=TOK, split=split, test_fraction=0.3)
    eos = load_tokenizer(TOK, "stream").eos_id
    assert "segments" in src.spec()
    seen_boundary = False
    for i in range(len(src)):
        s = src[i]
        seg, tokens = s["segments"], s["tokens"]
        assert seg.shape == tokens.shape and seg.dtype == torch.long and seg[0] == 0
        step = seg[1:] - seg[:-1]
        assert set(step.tolist()) <= {0, 1}
        # a new document starts right after each EOS, and only there
        assert torch.equal(step == 1, tokens[:-1] == eos)
        seen_boundary |= bool((step == 1).any())
    assert seen_boundary


def test_a_document_containing_the_eos_text_is_still_one_document(tmp_path):
    """Ids come from the recorded document lengths, not from EOS ids found in the stream: text that
    encodes to the EOS id ("<eos>" here) does not split its document."""
    tok = load_tokenizer(TOK, "stream")
    eos_text = tok.id_to_token(tok.eos_id)
    assert tok.encode_batch([f"a {eos_text} b"])[0].count(tok.eos_id) == 1  # the premise
    path = tmp_path / "d.jsonl"
    path.write_text("".join(f'{{"text": "doc {i} {eos_text} still doc {i}"}}\n' for i in range(8)))
    src = TextJSONL(path=str(path), seq_len=64, batch_size=1, tokenizer=TOK, test_fraction=0.1)
    s = src[0]
    inside = (s["tokens"][:-1] == tok.eos_id) & (s["segments"][1:] == s["segments"][:-1])
    assert inside.any()  # an EOS id that does not end its document
    assert int(s["segments"][-1]) < int((s["tokens"] == tok.eos_id).sum())


def test_byte_streams_and_rows_have_no_segments(tmp_path):
    root = str(write_docs(tmp_path / "docs"))
    assert "segments" not in TextFiles(root=root, pattern="*.txt", seq_len=8, batch_size=2).spec()
    rows = TextFiles(root=root, pattern="*.txt", seq_len=8, batch_size=2, tokenizer=TOK, pack=False)
    assert "segments" not in rows.spec()
    with pytest.raises(ValueError, match="segments"):
        build_loader(TextFiles(root=root, pattern="*.txt", seq_len=8, batch_size=2),
                     port_to_key={"tokens": "tokens", "segments": "segments"})


def test_the_loader_batches_segments_under_their_key(tmp_path):
    src = TextFiles(root=str(write_docs(tmp_path / "docs")), pattern="*.txt", seq_len=16, batch_size=2,
                    tokenizer=TOK)
    loader = build_loader(src, port_to_key={"tokens": "tokens", "targets": "targets", "segments": "doc"})
    batch = next(loader)
    assert batch["doc"].shape == batch["tokens"].shape == (2, 16)


# -- lint ----------------------------------------------------------------------------------------------

PROGRAM = """l3m 1
data { train: SOURCE -> tokens, targets, segments }
model gpt {
  preprocessor { embed: TokenEmbedding(vocab = 2048, dim = 16) tokens -> x
                 mask:  MASK }
  trunk        { blocks: Transformer(dim = 16, depth = 1, heads = 2, causal = true) x, mask -> x }
  head         { lm: LMHead(16, 2048) x -> logits }
}
loss ce: LMCrossEntropy() logits, targets -> loss
"""
GOOD_SOURCE = 'TextBytes(seq_len = 8, batch_size = 2, tokenizer = "stdlib_bpe_2k")'
GOOD_MASK = "DocumentMask() (segments = segments) -> mask"


def program(source: str = GOOD_SOURCE, mask: str = GOOD_MASK) -> str:
    return PROGRAM.replace("SOURCE", source).replace("MASK", mask)


def e830(compiled) -> list:
    return [d for d in compiled.diagnostics if d.code == "E830"]


def test_lint_accepts_segments_from_a_packed_tokenized_source(compile_text):
    c = compile_text(program())
    assert [d for d in c.diagnostics if d.is_error] == []


@pytest.mark.parametrize("source, why", [
    ("TextBytes(seq_len = 8, batch_size = 2)", "real tokenizer"),
    ('TextBytes(seq_len = 8, batch_size = 2, tokenizer = "stdlib_bpe_2k", pack = false)', "pack = false"),
])
def test_lint_refuses_segments_a_source_cannot_give(compile_text, source, why):
    (d,) = e830(compile_text(program(source=source)))
    assert why in d.message and "'segments'" in d.message
    assert (d.span.line, d.span.col) == (2, program(source=source).splitlines()[1].index("segments") + 1)


def test_lint_refuses_a_document_mask_without_document_ids(compile_text):
    (d,) = e830(compile_text(program(mask="DocumentMask() tokens -> mask")))  # tokens, but no eos_id
    assert "no document ids" in d.message and "(segments = segments)" in d.help
    assert e830(compile_text(program(mask="DocumentMask(eos_id = 0) tokens -> mask"))) == []
