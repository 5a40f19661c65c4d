"""Lint knows the fine-tuning components: where they may stand and which arguments they refuse."""

from __future__ import annotations

import pytest
from programs import vit

from l3m.dsl import compile_file


@pytest.mark.parametrize(("line", "message"), [
    ("default Attention(lora = Lora(rank = 0))", "Lora's rank (0) must be at least 1"),
    ("default Attention(lora = Lora(q = false, k = false, v = false, proj = false))", "Lora adapts nothing"),
    ("default Transformer(adapter = Adapter(hidden = 0))", "Adapter's hidden (0) must be at least 1"),
    ("default Attention(lora = Adapter(hidden = 4))", "must be a LinearAdapter component, not 'Adapter'"),
    ("default Transformer(adapter = Lora())", "must be a BranchAdapter component, not 'Lora'"),
])
def test_misplaced_or_bad_parts_are_lint_errors(tmp_path, line, message):
    compiled = compile_file(str(vit(tmp_path, "bad", line)))
    assert any(message in d.message for d in compiled.errors), [d.message for d in compiled.diagnostics]


def test_one_line_adds_lora_to_every_attention(tmp_path):
    compiled = compile_file(str(vit(tmp_path, "ok", "default Attention(lora = Lora(rank = 4, k = false))")))
    assert compiled.ok, [d.message for d in compiled.errors]
