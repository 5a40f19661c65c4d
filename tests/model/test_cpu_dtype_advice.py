"""bf16/fp16 on a CPU without matrix units for them: `plan` and `train` advise fp32."""

from __future__ import annotations

import logging

from l3m import devices
from l3m.devices import cpu_low_precision_note

X86_NO_BF16 = {"fpu", "avx2", "fma", "avx512f"}


def test_advice_names_the_missing_units_and_suggests_fp32():
    note = cpu_low_precision_note("bf16", X86_NO_BF16)
    assert note is not None and "AMX" in note and "AVX512-BF16" in note and "train.dtype = fp32" in note
    assert "fp16 matrix units" in cpu_low_precision_note("fp16", X86_NO_BF16)


def test_no_advice_where_the_units_exist_or_nothing_is_known():
    assert cpu_low_precision_note("bf16", X86_NO_BF16 | {"avx512_bf16"}) is None
    assert cpu_low_precision_note("bf16", X86_NO_BF16 | {"amx_bf16", "amx_tile"}) is None
    assert cpu_low_precision_note("bf16", {"fp", "asimd", "bf16"}) is None  # an Arm core with BF16
    assert cpu_low_precision_note("fp32", X86_NO_BF16) is None
    assert cpu_low_precision_note("bf16", set()) is not None and cpu_low_precision_note("bf16", None) in (
        None, cpu_low_precision_note("bf16", devices._cpu_flags()))


def test_plan_and_train_say_it_on_such_a_cpu(monkeypatch, tmp_path, caplog):
    import torch

    from l3m.dsl import compile_file
    from l3m.plan import plan
    from l3m.train.api import train_main

    monkeypatch.setattr(devices, "_cpu_flags", lambda: set(X86_NO_BF16))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    src = tmp_path / "m.l3m"
    src.write_text("""l3m 1
data { train: Synthetic(kind = "tokens", vocab = 11, seq_len = 6, batch_size = 2) -> tokens, targets }
model m {
  preprocessor { e: TokenEmbedding(vocab = 11, dim = 8)  tokens -> x }
  head         { h: LMHead(dim = 8, vocab = 11)  x -> logits }
}
loss ce: LMCrossEntropy() logits, targets -> loss
optimizer AdamW(lr = 1e-3)
train { steps = 1, dtype = bf16 }
log { wandb = disabled }
""")
    compiled = compile_file(str(src))
    assert not compiled.errors, compiled.errors
    notes = plan(compiled.program, peak=False)["notes"]
    assert any("bf16 matrix units" in n for n in notes), notes
    caplog.set_level(logging.WARNING, logger="l3m.train")
    assert train_main(str(src), [], output=str(tmp_path / "run")) == 0
    assert any("bf16 matrix units" in r.getMessage() for r in caplog.records)
