"""The prompt is tokenized as the run's data was: the source's `tokenizer` with its policy (a text
stream as it is, captions after BOS), or the tokenizer token shards were prepared with."""

from __future__ import annotations

import pytest
from helpers import ROOT

import l3m
from l3m.generation.loading import GenerateError, run_text

SHARDS_PROGRAM = """l3m 1
data {{ train: TokenShards(root = "{root}", seq_len = 4, batch_size = 1) -> tokens, targets }}
model lm {{
  preprocessor {{ embed: TokenEmbedding(vocab = 2048, dim = 8) tokens -> x }}
  trunk        {{ blocks: Transformer(dim = 8, depth = 1, heads = 1, causal = true) x -> x }}
  head         {{ lm: LMHead(dim = 8, vocab = 2048) x -> logits }}
}}
loss ce: LMCrossEntropy() logits, targets -> loss
optimizer AdamW(lr = 1e-3)
train {{ steps = 1 }}
"""


def text_of(path: str, overrides=()):
    return run_text(l3m.load(str(ROOT / path), list(overrides)).program)[0]


def test_a_byte_stream_encodes_the_prompt_as_bytes():
    text = text_of("examples/llm_bytes.l3m", ["tokenizer=bytes", "vocab=256"])
    assert text.encode("hé") == list("hé".encode()) and text.eos_id is None
    assert text.decode(text.encode("hé")) == "hé"


def test_a_bpe_stream_uses_the_shipped_tokenizer_and_its_eos():
    text = text_of("examples/llama_tiny.l3m")
    assert text.tokenizer.vocab_size == 2048 and text.eos_id is not None and not text.bos
    assert text.decode(text.encode("def main():")) == "def main():"


def test_captions_start_with_bos_and_have_a_fixed_length():
    text = text_of("examples/aimv2_digits.l3m")
    ids = text.encode("a photo")
    assert ids[0] == text.tokenizer.bos_id and text.length == 16
    assert text.decode(ids) == "a photo"


def test_token_shards_use_the_tokenizer_they_were_prepared_with(tmp_path):
    from l3m.cli import main

    (tmp_path / "a.py").write_text("def hello():\n    return 1\n")
    assert main(["data", "prepare", "-t", "stdlib_bpe_2k", "-o", str(tmp_path / "shards"), str(tmp_path / "a.py"),
                      "--no-progress", "--workers", "1"]) == 0
    (tmp_path / "p.l3m").write_text(SHARDS_PROGRAM.format(root=tmp_path / "shards"))
    text, _ = run_text(l3m.load(str(tmp_path / "p.l3m")).program)
    assert text.tokenizer.vocab_size == 2048 and text.tokenizer.source.endswith("stdlib_bpe_2k.json")


def test_a_program_whose_data_has_no_text():
    with pytest.raises(GenerateError, match="tokenizes no text"):
        text_of("examples/vit_digits.l3m")
