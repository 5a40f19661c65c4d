"""`pack = false` on the LLM text sources: one document per sample, as the original's SimpleTextDataset.

Each row is `ids + EOS`, cut to `seq_len + 1` keeping the EOS, right-padded with the pad id; the
tokens are its first `seq_len`, the targets its last `seq_len` (pads stay pad ids: the original's
LLMCrossEntropyLoss ignores -100, which a pad never is). Expected ids are written out by hand for
a word-level tokenizer built here.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from l3m.data.sources.text import TextFiles, TextJSONL
from l3m.model.losses import LMCrossEntropy

# <pad> 0, </s> 1, <unk> 2 as in the SigLIP SentencePiece vocabulary; no BOS.
WORDS = ["<pad>", "</s>", "<unk>", "the", "cat", "sat", "on", "mat", "dog", "ran"]
DOCS = [
    "The  Cat, sat!",                            # -> the cat sat: 3 4 5 + EOS, padded
    "the cat sat on the mat the dog ran",        # 9 ids + EOS: cut to 6, EOS kept
    "",                                          # wikitext's empty rows: EOS alone
    "dog ran.",                                  # the held-out document (test_fraction 0.25)
]


@pytest.fixture(scope="module")
def word_tok(tmp_path_factory):
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    path = tmp_path_factory.mktemp("tok") / "words.json"
    tok.save(str(path))
    return str(path)


@pytest.fixture
def jsonl(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in DOCS))
    return str(path)


def _src(jsonl, tok, **kw):
    args = dict(seq_len=5, batch_size=2, test_fraction=0.25, tokenizer=tok, pack=False, text_clean="nopunct",
                pad_token="</s>")
    return TextJSONL(jsonl, **{**args, **kw})


def test_rows_are_encoded_cut_and_padded_like_the_original(jsonl, word_tok):
    src = _src(jsonl, word_tok)
    assert len(src) == 3  # 4 documents, the last held out
    rows = [src[i] for i in range(3)]
    want_tokens = [[3, 4, 5, 1, 1], [3, 4, 5, 6, 3], [1, 1, 1, 1, 1]]
    want_targets = [[4, 5, 1, 1, 1], [4, 5, 6, 3, 1], [1, 1, 1, 1, 1]]
    for row, t, y in zip(rows, want_tokens, want_targets, strict=True):
        assert row["tokens"].dtype == torch.long and row["targets"].dtype == torch.long
        assert row["tokens"].tolist() == t and row["targets"].tolist() == y
    test = _src(jsonl, word_tok, split="test")
    assert len(test) == 1 and test[0]["tokens"].tolist() == [8, 9, 1, 1, 1]
    with pytest.raises(IndexError):
        src[3]


def test_default_pad_and_no_cleaning(jsonl, word_tok):
    """Without pad_token the tokenizer's <pad> (0) pads; text_clean = none keeps case and punctuation."""
    src = _src(jsonl, word_tok, pad_token="", text_clean="none")
    # "The  Cat, sat!" -> The, Cat, ",", sat, "!" are all unknown except sat (whitespace pre-tokenizer)
    assert src[0]["tokens"].tolist() == [2, 2, 2, 5, 2]
    assert src[0]["targets"].tolist() == [2, 2, 5, 2, 1]
    assert src[2]["tokens"].tolist() == [1, 0, 0, 0, 0] and src[2]["targets"].tolist() == [0, 0, 0, 0, 0]


def test_text_files_one_file_per_sample(tmp_path, word_tok):
    for i, text in enumerate(["cat sat", "the mat", "dog"]):
        (tmp_path / f"{i}.txt").write_text(text)
    src = TextFiles(str(tmp_path), seq_len=3, tokenizer=word_tok, pack=False, pad_token="</s>", test_fraction=0.4)
    assert len(src) == 1  # 3 files, test_fraction 0.4: the first (sorted) one trains
    assert src[0]["tokens"].tolist() == [4, 5, 1] and src[0]["targets"].tolist() == [5, 1, 1]


def test_packing_stays_the_default(jsonl, word_tok):
    """pack = true (default): documents + EOS in one stream, cut into seq_len + 1 windows."""
    src = TextJSONL(jsonl, seq_len=4, tokenizer=word_tok, test_fraction=0.25, text_clean="nopunct")
    stream = [3, 4, 5, 1, 3, 4, 5, 6, 3, 7, 3, 8, 9, 1, 1, 8, 9, 1]
    cut = int(len(stream) * 0.75)
    assert src.stream.tolist() == stream[:cut]
    assert src[1]["tokens"].tolist() == stream[4:8] and src[1]["targets"].tolist() == stream[5:9]


def test_bad_arguments(jsonl, word_tok):
    with pytest.raises(ValueError, match="pack = false needs a tokenizer"):
        TextJSONL(jsonl, pack=False)
    with pytest.raises(ValueError, match="pad_token only applies with pack = false"):
        TextJSONL(jsonl, tokenizer=word_tok, pad_token="</s>")
    with pytest.raises(ValueError, match="text_clean"):
        _src(jsonl, word_tok, text_clean="upper")
    with pytest.raises(ValueError, match="TextJSONL: .*pad_token '<nope>'"):
        _src(jsonl, word_tok, pad_token="<nope>")
    with pytest.raises(ValueError, match="no document"):
        len(_src(jsonl, word_tok, test_fraction=0.9))  # int(4 * 0.1) = 0 train documents


def test_padded_targets_count_in_the_loss(jsonl, word_tok):
    """As LLMCrossEntropyLoss (ignore_index -100): every position is scored, pads included."""
    src = _src(jsonl, word_tok)
    targets = torch.stack([src[i]["targets"] for i in range(3)])
    logits = torch.randn(3, 5, len(WORDS), generator=torch.Generator().manual_seed(0))
    got = LMCrossEntropy()(logits, targets)
    assert torch.allclose(got, F.cross_entropy(logits.flatten(0, 1), targets.flatten()))


LINT = """l3m 1
data { train: TextBytes(seq_len = 8, batch_size = 2, tokenizer = "TOK", pack = false, PAD) -> tokens, targets }
model gpt {
  preprocessor { embed: TokenEmbedding(vocab = 320, dim = 16) tokens -> x }
  trunk        { blocks: Transformer(dim = 16, depth = 1, heads = 2) x -> x }
  head         { lm: LMHead(16, 320) x -> logits }
}
loss ce: LMCrossEntropy() logits, targets -> loss
"""


@pytest.mark.parametrize(("tok", "pad", "want"), [
    ("digits_bpe", 'pad_token = "<pad>"', []),
    ("digits_bpe", 'pad_token = "</s>"', ["E813"]),  # not in the vocabulary
    ("bytes", 'pad_token = ""', ["E811"]),  # the byte stream tokenizer has no EOS to end a row with
])
def test_lint_checks_the_rows_tokenizer(compile_text, tok, pad, want):
    compiled = compile_text(LINT.replace("TOK", tok).replace("PAD", pad))
    assert [d.code for d in compiled.diagnostics if d.code.startswith("E81")] == want


def test_rows_equal_transformers_siglip_tokenizer_as_the_original_calls_it(tmp_path):
    """The original: HFTokenizer cleans and lower-cases, then SiglipTokenizer (which also drops
    punctuation) with max_length = context, padding = "max_length", truncation = True."""
    sentencepiece = pytest.importorskip("sentencepiece")
    transformers = pytest.importorskip("transformers")
    from l3m.data.tokenizers.policy import clean_text

    names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    (tmp_path / "c.txt").write_text("\n".join(
        f"a photo of the digit {n}, in a box. The Cat sat on the mat! {n}{n} x-ray's quick brown foxes"
        for n in names * 20))
    sentencepiece.SentencePieceTrainer.train(  # SigLIP's special ids: <pad> 0, </s> 1, <unk> 2, no BOS
        input=str(tmp_path / "c.txt"), model_prefix=str(tmp_path / "spiece"), vocab_size=40, pad_id=0, eos_id=1,
        unk_id=2, bos_id=-1, minloglevel=2, hard_vocab_limit=False)
    texts = ["The Cat, sat on the mat!", "", "  a PHOTO of the digit seven, in a box; the cat sat. one two",
             "digit   nine&amp;amp;", "x-ray's photo"]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts + ["held out"]))
    src = TextJSONL(str(tmp_path / "d.jsonl"), seq_len=11, tokenizer=str(tmp_path / "spiece.model"), pack=False,
                    text_clean="nopunct", pad_token="</s>", test_fraction=0.1)
    hf = transformers.SiglipTokenizer(vocab_file=str(tmp_path / "spiece.model"))
    want = hf([clean_text(t, "lower") for t in texts], max_length=12, padding="max_length", truncation=True,
              return_tensors="pt").input_ids
    assert len(src) == len(texts)
    got = torch.stack([torch.cat([src[i]["tokens"], src[i]["targets"][-1:]]) for i in range(len(texts))])
    assert torch.equal(got, want)
    ones = (want == 1).sum(dim=1)
    assert (ones == 1).any() and (ones > 1).any()  # some rows were cut (only their EOS is 1), some padded
