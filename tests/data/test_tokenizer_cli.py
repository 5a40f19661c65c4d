"""`l3m tokenizer train | info | list`, and a run whose tokenizer is missing (a message, not a traceback)."""

from __future__ import annotations

import json

from l3m.cli import main
from l3m.data.tokenizers import load_tokenizer


def test_train_writes_a_usable_tokenizer(tmp_path, capsys):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text("the quick brown fox jumps over the lazy dog\n" * 50)
    (corpus / "b.md").write_text("a lazy dog sleeps; the fox runs\n" * 50)
    (corpus / "skip.bin").write_bytes(b"\xff\xfe\x00binary")  # not UTF-8: skipped
    out = tmp_path / "tok" / "bpe.json"
    rc = main(["tokenizer", "train", str(corpus), "--vocab", "280", "--output", str(out),
               "--special", "<pad>", "--special", "<|endoftext|>"])
    assert rc == 0, capsys.readouterr().err
    assert "vocabulary 280" in capsys.readouterr().err
    tok = load_tokenizer(str(out))
    assert tok.vocab_size == 280 and (tok.pad_id, tok.eos_id, tok.bos_id) == (0, 1, None)
    assert tok.decode(tok.encode("the lazy fox")) == "the lazy fox"
    assert len(tok.encode("the quick brown fox")) < len("the quick brown fox")

    assert main(["tokenizer", "info", str(out), "--format", "json", "--encode", "fox"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["vocab_size"] == 280 and info["specials"]["eos"] == {"id": 1, "token": "<|endoftext|>"}
    assert info["ids"] == tok.encode("fox")


def test_train_usage_errors_exit_2(tmp_path, capsys):
    (tmp_path / "a.txt").write_text("some text " * 10)
    assert main(["tokenizer", "train", str(tmp_path / "a.txt"), "--vocab", "100", "-o", str(tmp_path / "t.json")]) == 2
    assert "--vocab must be at least 259" in capsys.readouterr().err
    assert main(["tokenizer", "train", str(tmp_path / "nope"), "--vocab", "300", "-o", str(tmp_path / "t.json")]) == 2
    assert "no such file or directory" in capsys.readouterr().err
    assert main(["tokenizer", "info", str(tmp_path / "t.json")]) == 2
    assert "no such tokenizer file" in capsys.readouterr().err


def test_list_names_the_shipped_tokenizers(capsys):
    assert main(["tokenizer", "list"]) == 0
    out = capsys.readouterr().out
    assert "stdlib_bpe_2k: vocabulary 2048; bos 1, eos 2, pad 0" in out and "digits_bpe: vocabulary 320" in out


def test_a_run_without_its_tokenizer_stops_with_a_message(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("L3M_TEST_VOCAB_FILE", raising=False)
    prog = tmp_path / "p.l3m"
    prog.write_text("""l3m 1
data { train: TextBytes(seq_len = 8, batch_size = 2, max_bytes = 20000, tokenizer = "${L3M_TEST_VOCAB_FILE:-}")
       -> tokens, targets }
model gpt {
  preprocessor { embed: TokenEmbedding(vocab = 2048, dim = 16) tokens -> x }
  head         { lm: LMHead(16, 2048) x -> logits }
}
loss ce: LMCrossEntropy() logits, targets -> loss
optimizer AdamW(lr = 1e-3)
train { steps = 1, dtype = fp32 }
log { wandb = "disabled" }
""")
    rc = main(["train", str(prog), "--output", str(tmp_path / "run"), "--no-resume"])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "TextBytes: no tokenizer given" in err and "Traceback" not in err
