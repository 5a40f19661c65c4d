"""Lint knows `TokenShards`: the manifest's vocabulary against the model (E812), a damaged manifest (E821),
a directory that is not there (W821), and `plan` works without the data."""

from __future__ import annotations

import pytest

from l3m.data.prepare.run import prepare

PROGRAM = """l3m 1
data {
  train: TokenShards(root = "ROOT", seq_len = 8, batch_size = 2, segments = true) -> tokens, targets, segments
}
model gpt {
  preprocessor { embed: TokenEmbedding(vocab = VOCAB, dim = 16) tokens -> x }
  trunk        { blocks: Transformer(dim = 16, depth = 1, heads = 2) x -> x }
  head         { lm: LMHead(16, VOCAB) x -> logits }
}
loss ce: LMCrossEntropy() logits, targets -> loss
optimizer AdamW(lr = 1e-3)
"""


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lint_shards")
    (tmp / "t.txt").write_text("hello token shards\n" * 20)
    prepare("stdlib_bpe_2k", str(tmp / "out"), [str(tmp / "t.txt")], workers=1, progress=False)
    return tmp / "out"


def program(root, vocab: int) -> str:
    return PROGRAM.replace("ROOT", str(root)).replace("VOCAB", str(vocab))


def codes(compiled) -> list[str]:
    return [d.code for d in compiled.diagnostics if d.code[1:3] == "82" or d.code.startswith("E81")]


def test_the_manifest_vocabulary_is_held_against_the_model(compile_text, shard_dir):
    ok = compile_text(program(shard_dir, 2048))
    assert ok.ok and codes(ok) == [], [d.message for d in ok.diagnostics]
    small = compile_text(program(shard_dir, 256))
    assert codes(small) == ["E812", "E812"]
    assert "tokenizer 'stdlib_bpe_2k' of 'data.train' has 2048 tokens" in small.errors[0].message


def test_missing_directory_warns_and_damaged_manifest_errs(compile_text, tmp_path):
    missing = compile_text(program(tmp_path / "nowhere", 2048))
    assert missing.ok and codes(missing) == ["W821"]
    assert "no token-shard directory" in missing.diagnostics[0].message
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "manifest.json").write_text("{ not json")
    bad = compile_text(program(tmp_path / "bad", 2048))
    assert codes(bad) == ["E821"] and not bad.ok
    assert "manifest is not valid JSON" in bad.errors[0].message
    assert bad.errors[0].span is not None and bad.errors[0].span.line == 3

