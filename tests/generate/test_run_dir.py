"""`l3m generate RUN_DIR`: a run trained for a few dozen steps on regular text, read back through its
recorded program and newest checkpoint, continues that text."""

from __future__ import annotations

import pytest

from l3m.cli import main

PROGRAM = """l3m 1
data {{
  train: TextBytes(root = "{corpus}", seq_len = 32, batch_size = 8, max_bytes = 0, test_fraction = 0.1) -> tokens, targets
}}
model lm {{
  preprocessor {{ embed: TokenEmbedding(vocab = 256, dim = 64) tokens -> x }}
  trunk        {{ blocks: Transformer(dim = 64, depth = 1, heads = 4, kv_heads = 2, rope = true, causal = true,
                                     mlp = swiglu, norm = rmsnorm) x -> x }}
  head         {{ lm: LMHead(dim = 64, vocab = 256) x -> logits }}
}}
loss ce: LMCrossEntropy() logits, targets -> loss
optimizer AdamW(lr = 1e-2, weight_decay = 0.0)
train {{ steps = 30, log_every = 10, checkpoint_every = 30, eval_every = 0 }}
log {{ wandb = "disabled", console = "plain" }}
"""
ALPHABET = "abcdefghijklmnopqrstuvwxyz "  # each byte says which comes next: learnt in a few steps


@pytest.mark.slow
def test_a_trained_run_continues_its_text(tmp_path, monkeypatch, capsys):
    from l3m.train.api import train_main

    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("L3M_DEVICE", "cpu")
    monkeypatch.setenv("L3M_PEAK_FLOPS", "1e11")  # no matmul timing at start
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "letters.txt").write_text(ALPHABET * 1000)
    program = tmp_path / "lm.l3m"
    program.write_text(PROGRAM.format(corpus=corpus))
    assert train_main(str(program), [], output=str(tmp_path / "run")) == 0
    capsys.readouterr()
    assert main(["generate", str(tmp_path / "run"), "--prompt", "abc", "--prompt", "uvwxyz",
                 "--max-new-tokens", "12"]) == 0
    assert capsys.readouterr().out.splitlines() == ["abcdefghijklmno", "uvwxyz abcdefghijk"]


def test_a_run_without_a_checkpoint(tmp_path, capsys):
    run = tmp_path / "run"
    (run / "ckpt").mkdir(parents=True)
    (run / "program.l3m").write_text(PROGRAM.format(corpus=tmp_path))
    (run / "run.json").write_text('{"overrides": []}')
    assert main(["generate", str(run), "--prompt", "abc"]) == 2
    assert "no complete checkpoint" in capsys.readouterr().err
