"""Lint checks parameter names before any parameter exists: tie targets (E780, E781), freeze and
init_include globs (E640), no_decay globs (N640), from the blocks' static parameters."""

from __future__ import annotations

import pytest

HEAD = "l3m 1\n"
GPT = """data { train: TextBytes(seq_len = 8, batch_size = 2) -> tokens, targets }
model gpt {
  preprocessor { embed: TokenEmbedding(vocab = 256, dim = 16) tokens -> x }
  trunk        { blocks: Transformer(dim = 16, depth = 1, heads = 2) x -> x }
  head         { lm: LMHead(16, 256, tie = "embed") x -> logits }
}
loss ce: LMCrossEntropy() logits, targets -> loss
"""


def coded(compiled, code):
    return [d for d in compiled.diagnostics if d.code == code]


def at(d):
    return d.span.line, d.span.col


def test_the_untouched_program_has_no_parameter_diagnostics(compile_text):
    c = compile_text(HEAD + GPT + 'train { freeze = ["gpt.preprocessor.*"], init_include = ["*embed*"] }\n'
                     'optimizer AdamW(no_decay = ["*bias", "*norm*"])\n')
    assert c.ok, [(d.code, d.message) for d in c.diagnostics]
    assert not [d for d in c.diagnostics if d.code in ("E640", "N640", "E780", "E781")]


def test_tie_to_a_weight_of_another_shape_is_e781_at_the_argument(compile_text):
    c = compile_text(HEAD + GPT.replace("LMHead(16, 256,", "LMHead(16, 512,"))
    (d,) = coded(c, "E781")
    assert at(d) == (6, 38)
    assert "[512, 16]" in d.message and "[256, 16]" in d.message and "'embed'" in d.message
    assert not c.ok


def test_tie_to_a_block_without_a_weight_is_e780(compile_text):
    c = compile_text(HEAD + GPT.replace('tie = "embed"', 'tie = "blocks"'))
    (d,) = coded(c, "E780")
    assert at(d) == (6, 38)
    assert "Transformer" in d.message
    assert d.notes and d.notes[0][1].line == 5


def test_tie_to_nothing_stays_e208_only(compile_text):
    c = compile_text(HEAD + GPT.replace('tie = "embed"', 'tie = "embd"'))
    assert coded(c, "E208") and not coded(c, "E780") and not coded(c, "E781")


def test_freeze_glob_matching_nothing_is_e640_at_the_glob(compile_text):
    c = compile_text(HEAD + GPT + 'train { steps = 2,\n  freeze = ["gpt.trunk.block.*"] }\n')
    (d,) = coded(c, "E640")
    assert at(d) == (10, 13)
    assert "'gpt.trunk.block.*'" in d.message and "train.freeze" in d.message
    assert "did you mean 'gpt.trunk.blocks.*'?" in d.help
    assert not c.ok


def test_init_include_glob_matching_nothing_is_e640_unless_renamed(compile_text):
    bad = HEAD + GPT + 'train { init_include = ["encoder.*"] }\n'
    (d,) = coded(compile_text(bad), "E640")
    assert at(d) == (9, 25) and "train.init_include" in d.message
    renamed = bad.replace("] }", '], init_rename = ["encoder.=gpt."] }')
    assert not coded(compile_text(renamed), "E640")
    # init_exclude may name tensors only the init_from file has (a pretraining decoder): not checked
    assert not coded(compile_text(HEAD + GPT + 'train { init_exclude = ["decoder.*"] }\n'), "E640")


def test_no_decay_glob_matching_nothing_is_a_note(compile_text):
    c = compile_text(HEAD + GPT + 'optimizer AdamW(no_decay = ["*bias", "*pos*"])\n')
    (d,) = coded(c, "N640")
    assert at(d) == (9, 17) and "'*pos*'" in d.message
    assert c.ok


EXT = '''
from torch import nn
from l3m import register


@register("block")
class Mystery(nn.Module):
    outputs = ("x",)

    def __init__(self, dim: int):
        super().__init__()

    def forward(self, x):
        return x
'''


@pytest.mark.parametrize(("glob", "checked"), [("gpt.postprocessor.m.*", False), ("*secret*", False),
                                               ("gpt.trunk.blok*", True)])
def test_globs_that_could_match_an_extension_block_are_not_checked(compile_text, tmp_path, monkeypatch, glob, checked):
    (tmp_path / "mysteryext.py").write_text(EXT)
    monkeypatch.syspath_prepend(str(tmp_path))
    src = (HEAD + 'extension "mysteryext"\n' + GPT).replace(
        "  head ", "  postprocessor { m: Mystery(dim = 16) x -> x }\n  head ")
    c = compile_text(src + f'train {{ freeze = ["{glob}"] }}\n')
    assert bool(coded(c, "E640")) is checked, [(d.code, d.message) for d in c.diagnostics]


def test_no_decay_globs_lint_cannot_judge_are_left_to_plan(compile_text, tmp_path, monkeypatch):
    from l3m.model.patterns import unused_no_decay

    (tmp_path / "mysteryext.py").write_text(EXT)
    monkeypatch.syspath_prepend(str(tmp_path))
    src = (HEAD + 'extension "mysteryext"\n' + GPT).replace(
        "  head ", "  postprocessor { m: Mystery(dim = 16) x -> x }\n  head ")
    c = compile_text(src + 'optimizer AdamW(no_decay = ["*scale*", "gpt.trunk.nothing*"])\n')
    assert [d.message.split("'")[1] for d in coded(c, "N640")] == ["gpt.trunk.nothing*"]
    lines = unused_no_decay(c.program, ["gpt.trunk.blocks.norm.weight"])  # as the built model would name them
    assert len(lines) == 1 and "'*scale*'" in lines[0]


def test_an_old_model_prefix_in_a_glob_suggests_the_models_name():
    from pathlib import Path

    from l3m.dsl import compile_file

    example = str(Path(__file__).resolve().parents[2] / "examples/vit_digits.l3m")
    compiled = compile_file(example, ['train.freeze=["model.trunk.*"]'])
    [d] = [d for d in compiled.diagnostics if d.is_error]
    assert d.code == "E640" and "did you mean 'vit.trunk.*'" in d.help
