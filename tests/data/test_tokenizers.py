"""Tokenizers from local files: formats, special ids, the caption and packing policies, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from l3m.data.tokenizers import (
    ByteTokenizer,
    CaptionByteTokenizer,
    TokenizerError,
    load_tokenizer,
    shipped,
)
from l3m.data.tokenizers.policy import CaptionEncoder, clean_text, pack_documents
from l3m.data.tokenizers.train import train_bpe

CORPUS = [
    "a photo of the digit seven, in a box!",
    "Hello World. A red square; a blue circle?",
    "def main():\n    return 'ünïcode ✓'\n",
] * 20
CLIP_SPECIALS = ("<|startoftext|>", "<|endoftext|>")


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    for i, text in enumerate(CORPUS[:3]):
        (d / f"doc{i}.txt").write_text(text * 20)
    return d


@pytest.fixture(scope="module")
def bpe(corpus_dir, tmp_path_factory):
    """A byte-level BPE with the default specials: <pad> 0, <bos> 1, <eos> 2."""
    out = tmp_path_factory.mktemp("bpe") / "tok.json"
    train_bpe([str(corpus_dir)], 300, str(out), progress=False)
    return out


@pytest.fixture(scope="module")
def clip_like(corpus_dir, tmp_path_factory):
    """CLIP's special tokens and no pad token (so captions pad with <|endoftext|>, as CLIP's do)."""
    out = tmp_path_factory.mktemp("clip") / "tokenizer.json"
    train_bpe([str(corpus_dir)], 300, str(out), specials=CLIP_SPECIALS, progress=False)
    return out


@pytest.fixture(scope="module")
def spm_model(corpus_dir, tmp_path_factory):
    """A SentencePiece model with T5/SigLIP's special ids: <pad> 0, </s> 1, <unk> 2, no BOS."""
    sentencepiece = pytest.importorskip("sentencepiece")
    d = tmp_path_factory.mktemp("spm")
    names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    (d / "text.txt").write_text("\n".join([f"a photo of the digit {n}, in a box!" for n in names] * 20
                                          + ["Hello World. A red square; a blue circle?"] * 10))
    sentencepiece.SentencePieceTrainer.train(
        input=str(d / "text.txt"), model_prefix=str(d / "spiece"), vocab_size=40, pad_id=0, eos_id=1,
        unk_id=2, bos_id=-1, model_type="unigram", minloglevel=2)
    return d / "spiece.model"


# ------------------------------------------------------------------------------------------ formats


def test_byte_tokenizers_are_the_byte_conventions():
    raw, cap = load_tokenizer("bytes"), load_tokenizer("bytes", "caption")
    assert isinstance(raw, ByteTokenizer) and isinstance(cap, CaptionByteTokenizer)
    assert (raw.vocab_size, raw.eos_id) == (256, None)
    assert (cap.vocab_size, cap.pad_id, cap.bos_id, cap.eos_id) == (259, 0, 1, 2)
    text = "naïve ✓"
    assert raw.decode(raw.encode(text)) == text and cap.decode(cap.encode(text)) == text
    assert cap.encode("a") == [ord("a") + 3]


def test_tokenizers_json_round_trip_and_special_ids(bpe):
    tok = load_tokenizer(str(bpe))
    assert tok.kind == "tokenizers" and tok.vocab_size == 300
    assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 1, 2)
    assert tok.special_id("<eos>") == 2 and tok.special_id("<nope>") is None
    for text in CORPUS[:3] + ["text it never saw: Ω≈ç √∫˜µ"]:
        assert tok.decode(tok.encode(text)) == text  # byte-level: every text round-trips exactly
    assert len(tok.encode(CORPUS[0])) < len(CORPUS[0].encode())  # merges learned
    assert load_tokenizer(str(bpe)) is tok  # cached per process


def test_snapshot_folder_and_its_special_tokens_map(clip_like):
    tok = load_tokenizer(str(clip_like.parent))  # a folder holding tokenizer.json
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (0, 1, None)
    (clip_like.parent / "special_tokens_map.json").write_text(
        json.dumps({"pad_token": {"content": "<|endoftext|>"}, "bos_token": "<|startoftext|>"}))
    try:
        clip_like.touch()  # a new modification time: the cache must not answer
        tok = load_tokenizer(str(clip_like))
        assert tok.pad_id == 1
    finally:
        (clip_like.parent / "special_tokens_map.json").unlink()


def test_sentencepiece_model(spm_model, tmp_path):
    tok = load_tokenizer(str(spm_model))
    assert tok.kind == "sentencepiece" and tok.vocab_size == 40
    assert (tok.pad_id, tok.eos_id, tok.bos_id, tok.special_id("unk")) == (0, 1, None, 2)
    assert tok.special_id("</s>") == 1 and tok.special_id("no-such-piece") is None
    text = "a photo of the digit seven"
    assert tok.decode(tok.encode(text)) == text
    # SigLIP's snapshot names </s> its pad token, as transformers' SiglipTokenizer does.
    snap = tmp_path / "siglip"
    snap.mkdir()
    (snap / "spiece.model").write_bytes(spm_model.read_bytes())
    (snap / "special_tokens_map.json").write_text(json.dumps({"pad_token": "</s>", "eos_token": "</s>"}))
    assert load_tokenizer(str(snap)).pad_id == 1


def test_shipped_tokenizers_are_small_and_listed():
    names = shipped()
    assert {"stdlib_bpe_2k", "digits_bpe"} <= set(names)
    for name, path in names.items():
        assert path.stat().st_size < 300_000, name
        tok = load_tokenizer(name)
        assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 1, 2)
    assert load_tokenizer("stdlib_bpe_2k").vocab_size == 2048
    assert load_tokenizer("digits_bpe").vocab_size == 320


# --------------------------------------------------------------------------------------- policies


def test_caption_policy_clip_style(clip_like):
    tok = load_tokenizer(str(clip_like), "caption")
    enc = CaptionEncoder(tok, 10)
    assert (enc.bos_id, enc.eos_id, enc.pad_id) == (0, 1, 1)  # no pad token: pad with EOS, as CLIP does
    short = enc("a box")
    body = tok.encode("a box")
    assert short == [0, *body, 1] + [1] * (10 - len(body) - 2)
    long = enc(CORPUS[1] * 3)
    assert len(long) == 10 and long[0] == 0 and long[-1] == 1  # truncated, the EOS kept
    assert long[1:-1] == tok.encode(CORPUS[1] * 3)[:8]
    assert enc.decode(short) == "a box"
    assert enc.batch(["a", "a box"]).shape == (2, 10)


def test_caption_policy_siglip_style(spm_model):
    tok = load_tokenizer(str(spm_model), "caption")
    enc = CaptionEncoder(tok, 40, clean="nopunct", pad_token="</s>")
    ids, body = enc("A Photo, of the digit!"), tok.encode("a photo of the digit")
    assert len(ids) == 40 and ids[: len(body)] == body  # cleaned, and no BOS
    assert ids[len(body):] == [1] * (40 - len(body))  # EOS, then </s> padding
    with pytest.raises(TokenizerError, match="pad_token '<nope>'"):
        CaptionEncoder(tok, 12, pad_token="<nope>")
    with pytest.raises(ValueError, match="needs seq_len >= 2"):
        CaptionEncoder(load_tokenizer("bytes", "caption"), 1)


def test_text_cleaning():
    assert clean_text("  A  &amp;amp;  B\n", "lower") == "a & b"
    assert clean_text("Hello, World!  It's", "nopunct") == "hello world its"
    assert clean_text("As Is ", "none") == "As Is "
    with pytest.raises(ValueError, match="text_clean"):
        clean_text("x", "upper")


def test_llm_packing_separates_documents_with_eos(bpe):
    tok = load_tokenizer(str(bpe))
    docs = ["first document", "second one"]
    ids = pack_documents(tok, docs, chunk=1)
    expected = tok.encode(docs[0]) + [2] + tok.encode(docs[1]) + [2]
    assert ids.dtype == np.int32 and ids.tolist() == expected
    assert pack_documents(load_tokenizer("bytes"), ["ab", "c"]).tolist() == [97, 98, 99]  # bytes: no EOS


def test_transformers_parity(spm_model, clip_like):
    """The caption policy is what transformers' tokenizers give with padding and truncation to a length."""
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer
    from tokenizers.processors import TemplateProcessing

    texts = ["A photo of the digit SEVEN, in a box!", "hello", "a red square;  a blue circle? " * 4]
    siglip = transformers.SiglipTokenizer(vocab_file=str(spm_model))
    want = siglip(texts, max_length=12, padding="max_length", truncation=True).input_ids
    ours = CaptionEncoder(load_tokenizer(str(spm_model), "caption"), 12, clean="nopunct", pad_token="</s>")
    assert [ours(t) for t in texts] == want

    raw = Tokenizer.from_file(str(clip_like))
    raw.post_processor = TemplateProcessing(single="<|startoftext|> $A <|endoftext|>",
                                            special_tokens=[("<|startoftext|>", 0), ("<|endoftext|>", 1)])
    clip = transformers.PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<|startoftext|>",
                                                eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    want = clip(texts, max_length=12, padding="max_length", truncation=True).input_ids
    ours = CaptionEncoder(load_tokenizer(str(clip_like), "caption"), 12)
    assert [ours(t) for t in texts] == want


# ---------------------------------------------------------------------------------------- sources


def test_text_source_packs_tokenized_documents(corpus_dir, bpe):
    from l3m.data.sources.text import TextFiles

    src = TextFiles(str(corpus_dir), pattern="*.txt", seq_len=16, batch_size=2, tokenizer=str(bpe))
    tok = load_tokenizer(str(bpe))
    whole = pack_documents(tok, [p.read_text() for p in sorted(corpus_dir.glob("*.txt"))])
    assert (whole == 2).sum() == 3  # one EOS after each of the three files
    s = src[1]
    assert s["tokens"].tolist() == whole[16:32].tolist() and s["targets"].tolist() == whole[17:33].tolist()
    assert len(src) == (int(len(whole) * 0.95) - 1) // 16
    assert int(src.stream.max()) < tok.vocab_size


def test_digits_captions_with_a_tokenizer():
    from l3m.data.sources.digits import DigitsImageText

    src = DigitsImageText(split="test", seq_len=12, tokenizer="digits_bpe")
    enc = src.encoder
    s = src[0]
    assert s["text"].shape == (12,) and s["text"][0] == 1 and (s["text"] == 2).sum() == 1
    assert enc.decode(s["text"].tolist()).startswith(("a photo", "a handwritten", "the number"))
    prompts = src.class_prompts()
    assert enc.decode(prompts[3].tolist()) == "a photo of the digit three"
    with pytest.raises(ValueError, match="too short for the caption"):
        DigitsImageText(seq_len=4, tokenizer="digits_bpe")


def test_missing_and_corrupt_files_are_clear_errors(tmp_path):
    from l3m.data.sources.text import TextBytes

    with pytest.raises(FileNotFoundError, match="no such tokenizer file: 'missing.json'"):
        load_tokenizer("missing.json")
    with pytest.raises(FileNotFoundError, match="shipped tokenizers: digits_bpe"):
        load_tokenizer("digits_bep")
    with pytest.raises(FileNotFoundError, match="no tokenizer given"):
        load_tokenizer("")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(TokenizerError, match="not a Hugging Face tokenizer.json"):
        load_tokenizer(str(bad))
    bad_model = tmp_path / "bad.model"
    bad_model.write_bytes(b"\x00garbage")
    with pytest.raises(TokenizerError, match="not a SentencePiece model"):
        load_tokenizer(str(bad_model))
    odd = tmp_path / "vocab.txt"
    odd.write_text("a\nb\n")
    with pytest.raises(TokenizerError, match="unknown tokenizer format"):
        load_tokenizer(str(odd))
    with pytest.raises(FileNotFoundError, match="TextBytes: no such tokenizer file"):
        TextBytes(tokenizer=str(tmp_path / "nope.json"))


def test_an_unset_tokenizer_builds_for_plan_and_fails_on_first_read(tmp_path):
    from l3m.data.sources.images import ImageTextJSONL
    from l3m.data.sources.text import TextBytes

    text = TextBytes(seq_len=8, tokenizer="")
    assert text.spec()["tokens"][0] == (8,)
    with pytest.raises(FileNotFoundError, match="TextBytes: no tokenizer given"):
        len(text)
    (tmp_path / "d.jsonl").write_text('{"image": "a.png", "text": "a cat"}\n')
    pairs = ImageTextJSONL(str(tmp_path / "d.jsonl"), image_size=8, seq_len=77, tokenizer="")
    assert pairs.spec()["text"][0] == (77,)
    with pytest.raises(FileNotFoundError, match="ImageTextJSONL: no tokenizer given"):
        len(pairs)
