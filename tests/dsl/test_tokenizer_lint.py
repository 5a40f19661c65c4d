"""Lint holds vocabulary sizes and special ids against the tokenizers the data sources name."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

HEAD = "l3m 1\n"
LLM = """data { train: TextBytes(seq_len = 8, batch_size = 2, tokenizer = "TOK") -> tokens, targets }
model gpt {
  preprocessor { embed: TokenEmbedding(vocab = VOCAB, dim = 16) tokens -> x }
  trunk        { blocks: Transformer(dim = 16, depth = 1, heads = 2) x -> x }
  head         { lm: LMHead(16, VOCAB) x -> logits }
}
loss ce: LMCrossEntropy() logits, targets -> loss
"""
CAPTIONS = """data { train: DigitsImageText(seq_len = 16, tokenizer = "TOK", PAD) -> image, text, label }
model m {
  preprocessor  { embed: TokenEmbedding(vocab = 320, dim = 16) text -> x }
  postprocessor { pool: EosPool(eos_id = EOS) x, text -> pooled }
  head          { lm: LMHead(16, 320) x -> logits  cls: Classifier(dim = 16, num_classes = 10) pooled -> classes }
}
loss ce: LMCrossEntropy(ignore_index = IGNORE) logits, text -> loss
metric acc: TopKAccuracy() classes, label -> acc
"""


def llm(tok: str, vocab: int) -> str:
    return HEAD + LLM.replace("TOK", tok).replace("VOCAB", str(vocab))


def captions(tok: str = "digits_bpe", eos: int = 2, ignore: int = 0, pad: str = 'pad_token = ""') -> str:
    return HEAD + CAPTIONS.replace("TOK", tok).replace("EOS", str(eos)).replace("IGNORE", str(ignore)).replace(
        "PAD", pad)


def codes(compiled, prefix: str = "E81") -> list[str]:
    return [d.code for d in compiled.diagnostics if d.code.startswith(prefix)]


def col(src: str, line: int, needle: str, nth: int = 0) -> int:
    text = src.splitlines()[line - 1]
    at = -1
    for _ in range(nth + 1):
        at = text.index(needle, at + 1)
    return at + 1


def test_a_fitting_program_is_clean(compile_text):
    assert codes(compile_text(llm("stdlib_bpe_2k", 2048))) == []
    assert codes(compile_text(llm("stdlib_bpe_2k", 4096))) == []  # larger than the vocabulary is fine
    assert codes(compile_text(llm("bytes", 256))) == []
    assert codes(compile_text(captions())) == []
    assert codes(compile_text(captions(ignore=-100))) == []


def test_vocab_smaller_than_the_tokenizer_is_E812_at_the_argument(compile_text):
    src = llm("stdlib_bpe_2k", 256)
    compiled = compile_text(src)
    errs = [d for d in compiled.errors if d.code == "E812"]
    assert len(errs) == 2 and not compiled.ok
    embed, head = sorted(errs, key=lambda d: d.span.line)
    assert (embed.span.line, embed.span.col) == (4, col(src, 4, "vocab"))
    assert (head.span.line, head.span.col) == (6, col(src, 6, "256"))  # positional: LMHead(16, 256)
    assert "vocab = 256" in embed.message and "2048 tokens" in embed.message
    assert embed.help == "set vocab = 2048 (or larger)"


def test_byte_captions_are_259_tokens(compile_text):
    compiled = compile_text(HEAD + CAPTIONS.replace('tokenizer = "TOK", PAD', "").replace("320", "256")
                            .replace("EOS", "2").replace("IGNORE", "0"))
    assert codes(compiled) == ["E812", "E812"]


def test_missing_and_corrupt_tokenizers_are_E811_at_the_argument(compile_text, tmp_path):
    src = llm(str(tmp_path / "missing.json"), 2048)
    (d,) = compile_text(src).errors
    assert d.code == "E811" and "no such tokenizer file" in d.message
    assert (d.span.line, d.span.col) == (2, col(src, 2, "tokenizer"))
    bad = tmp_path / "bad.json"
    bad.write_text("{ this is not a tokenizer")
    (d,) = compile_text(llm(str(bad), 2048)).errors
    assert d.code == "E811" and "not a Hugging Face tokenizer.json" in d.message
    bad_model = tmp_path / "bad.model"
    bad_model.write_bytes(b"\x00\x01")
    (d,) = compile_text(llm(str(bad_model), 2048)).errors
    assert d.code == "E811" and "not a SentencePiece model" in d.message


def test_an_unset_tokenizer_is_left_to_run_time(compile_text, monkeypatch):
    monkeypatch.delenv("L3M_TEST_VOCAB_FILE", raising=False)
    assert compile_text(llm("${L3M_TEST_VOCAB_FILE:-}", 256)).ok


def test_eos_pooling_on_an_id_the_captions_lack_is_E813(compile_text):
    src = captions(eos=3)
    (d,) = compile_text(src).errors
    assert d.code == "E813" and "eos_id = 3" in d.message and "2 ('<eos>')" in d.message
    assert (d.span.line, d.span.col) == (5, col(src, 5, "eos_id"))
    assert d.help == "set eos_id = 2"


def test_caption_loss_must_ignore_the_padding(compile_text):
    src = captions(ignore=5)
    (d,) = compile_text(src).errors
    assert d.code == "E813" and "padded with 0 ('<pad>')" in d.message
    assert (d.span.line, d.span.col) == (8, col(src, 8, "ignore_index"))
    # Padding with EOS (as CLIP and SigLIP do) moves the id the loss must ignore, and the check follows.
    assert codes(compile_text(captions(ignore=2, pad='pad_token = "<eos>"'))) == []
    assert codes(compile_text(captions(ignore=0, pad='pad_token = "eos"'))) == ["E813"]


def test_ids_outside_the_vocabulary_and_unknown_pad_tokens_are_E813(compile_text):
    src = captions(pad='pad_token = "<nope>"')
    (d,) = compile_text(src).errors
    assert d.code == "E813" and "'<nope>'" in d.message
    assert (d.span.line, d.span.col) == (2, col(src, 2, "pad_token"))
    (d,) = compile_text(captions(eos=999)).errors
    assert d.code == "E813" and "not an id" in d.message


@pytest.mark.parametrize("example", ["llm_bytes", "llama_tiny", "clip_digits", "aimv2_digits", "aimv2_moe_digits"])
def test_text_examples_use_a_real_tokenizer_and_fit_it(example):
    from l3m.dsl import compile_file

    path = ROOT / "examples" / f"{example}.l3m"
    compiled = compile_file(str(path))
    assert compiled.ok, [d.message for d in compiled.errors]
    tokenizers = {n.call.kwargs.get("tokenizer") for n in compiled.program.of_role("source")} - {None}
    assert tokenizers & {"stdlib_bpe_2k", "digits_bpe"}
    # The byte-level variants stay one override away.
    vocab = "256" if example.startswith(("llm", "llama")) else "259"
    extra = [] if vocab == "256" else ["text_len=32"]
    assert compile_file(str(path), ["tokenizer=bytes", f"vocab={vocab}", *extra]).ok


def clip_like_tokenizer(path, eos: int = 49407) -> str:
    """A word-level tokenizer.json with CLIP's vocabulary size and special ids."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"[UNK]": 0, "a": 1, "photo": 2, "<|startoftext|>": 49406, "<|endoftext|>": eos}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(["<|startoftext|>", "<|endoftext|>"])
    tok.save(str(path))
    return str(path)


def siglip_like_model(folder) -> str:
    """A SentencePiece model with SigLIP's special ids: <pad> 0, </s> 1, <unk> 2, no BOS."""
    sentencepiece = pytest.importorskip("sentencepiece")
    names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    (folder / "text.txt").write_text("\n".join([f"a photo of the digit {n}, in a box" for n in names] * 20))
    sentencepiece.SentencePieceTrainer.train(
        input=str(folder / "text.txt"), model_prefix=str(folder / "spiece"), vocab_size=24, pad_id=0, eos_id=1,
        unk_id=2, bos_id=-1, minloglevel=2)
    return str(folder / "spiece.model")


def test_full_size_files_fit_tokenizers_with_the_originals_ids(tmp_path, monkeypatch):
    from l3m.dsl import compile_file

    root = ROOT / "models"
    monkeypatch.setenv("VOCAB_FILE", clip_like_tokenizer(tmp_path / "clip.json"))
    assert compile_file(str(root / "clip.l3m")).ok
    monkeypatch.setenv("VOCAB_FILE", clip_like_tokenizer(tmp_path / "other.json", eos=49405))
    (d,) = compile_file(str(root / "clip.l3m")).errors
    assert d.code == "E813" and "eos_id = 49407" in d.message and d.span.file.endswith("clip.l3m")
    monkeypatch.setenv("VOCAB_FILE", siglip_like_model(tmp_path))  # pads with </s> = 1, which the loss ignores
    assert compile_file(str(root / "aimv2.l3m")).ok and compile_file(str(root / "aimv2_moe.l3m")).ok
    assert compile_file(str(root / "llm.l3m")).ok  # the LLM uses the SigLIP tokenizer too (rows padded with </s>)
    monkeypatch.setenv("VOCAB_FILE", "stdlib_bpe_2k")
    assert compile_file(str(root / "llm_zloss.l3m")).ok  # packed: no pad token needed
    (d,) = compile_file(str(root / "llm.l3m")).errors
    assert d.code == "E813" and "'</s>'" in d.message
