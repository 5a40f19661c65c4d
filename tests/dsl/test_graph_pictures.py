"""Graph pictures worth reading: each data edge drawn once, blocks with their key arguments and
parameter counts (static, equal to the built model's), edges with the shapes of their keys."""

from __future__ import annotations

import json
import re
from collections import Counter

import pytest
from helpers import ROOT

from l3m.dsl import compile_file
from l3m.dsl.render import humanize, render

VIT = ROOT / "examples" / "vit_digits.l3m"
DOT_EDGE = re.compile(r'^\s*(\w+) -> (\w+) \[label="([^"]*)"\];$')


def compiled(path):
    c = compile_file(str(path))
    assert c.ok, c.diagnostics
    return c


def dot_edges(text: str) -> list[tuple[str, str, str]]:
    return [m.groups() for m in map(DOT_EDGE.match, text.splitlines()) if m]


def test_each_data_edge_is_drawn_once_in_dot():
    c = compiled(VIT)
    edges = dot_edges(render(c.program, c.flow, "dot", shapes=c.shapes).decode())
    pairs = [(a, b, label.split("\\n")[0]) for a, b, label in edges]
    assert Counter(pairs).most_common(1)[0][1] == 1
    reads = sum(len(n.reads) for n in c.program.nodes)
    assert len(pairs) == reads  # one edge per read, however many sources write the key
    assert ("n_data", "n_vit_preprocessor_patches", "image") in pairs
    assert sum(1 for a, _, _ in pairs if a == "n_data") == 3  # image -> patches, label -> loss and metric


@pytest.mark.parametrize("fmt, arrow", [("mmd", "-->"), ("dot", "->")])
def test_both_sources_are_one_node(fmt, arrow):
    c = compiled(VIT)
    text = render(c.program, c.flow, fmt).decode()
    assert "train: DigitsImages" in text and "eval: DigitsImages" in text
    assert "n_data_eval" not in text and "n_data_train" not in text
    lines = [line for line in text.splitlines() if arrow in line]
    assert len(lines) == len(set(lines))


def _built_count(c) -> int:
    from l3m import registry

    registry.load_builtins()  # lint answers from the manifest; building needs the classes
    model = c.build_model()
    return sum(p.numel() for p in model.parameters())  # a tied weight once


@pytest.mark.parametrize("example", ["vit_digits.l3m", "clip_digits.l3m", "aimv2_moe_digits.l3m"])
def test_parameter_counts_equal_the_built_model(example):
    c = compiled(ROOT / "examples" / example)
    data = json.loads(render(c.program, c.flow, "json"))
    root = next(m for m in data["models"] if m["parent"] is None)
    real = _built_count(c)
    assert root["params"] == real
    assert sum(b["params"] for b in data["blocks"] if b["role"] == "block") == real
    assert f"{humanize(real)} params" in render(c.program, c.flow, "dot").decode()


def test_a_tied_weight_is_counted_once(compile_text):
    c = compile_text("""l3m 1
data { train: TextBytes(seq_len = 8, batch_size = 2) -> tokens, targets }
model gpt {
  preprocessor { embed: TokenEmbedding(vocab = 256, dim = 16) tokens -> x }
  trunk        { blocks: Transformer(dim = 16, depth = 1, heads = 2) x -> x }
  head         { lm: LMHead(16, 256, tie = "embed") x -> logits }
}
loss ce: LMCrossEntropy() logits, targets -> loss
""")
    data = json.loads(render(c.program, c.flow, "json"))
    assert data["models"][0]["params"] == _built_count(c)
    assert "lm: LMHead" in (txt := render(c.program, c.flow, "txt").decode()) and "the weight of embed" in txt


def test_blocks_show_their_key_arguments_and_counts():
    c = compiled(VIT)
    dot = render(c.program, c.flow, "dot").decode()
    assert 'label="blocks: Transformer ×2\\ndim=64 depth=2 heads=2' in dot
    txt = render(c.program, c.flow, "txt").decode()
    assert "fc: Classifier" in txt and "[dim=64 num_classes=10; 778 params]" in txt  # 64 * 10 + 10 + a LayerNorm of 64
    assert "model vit · " in txt


def test_edges_show_the_shape_of_their_key():
    c = compiled(VIT)
    dot = render(c.program, c.flow, "dot", shapes=c.shapes).decode()
    labels = {(a, b): label for a, b, label in dot_edges(dot)}
    assert labels[("n_data", "n_vit_preprocessor_patches")] == "image\\nfloat[B, 3, 16, 16]"
    assert labels[("n_data", "n_loss_ce")] == "label\\nlong[B] < 10"


def test_edge_labels_take_any_shape_lookup():
    c = compiled(VIT)
    seen = []

    def shape_of(key, version):
        seen.append((key, version))
        return "[B, 17, 64]" if key == "vit.x" or key == "x" else None

    dot = render(c.program, c.flow, "dot", shapes=shape_of).decode()
    assert 'n_vit_preprocessor_pos -> n_vit_trunk_blocks [label="x\\n[B, 17, 64]"]' in dot
    assert ("image", 0) in seen
    mmd = render(c.program, c.flow, "mmd", shapes=shape_of).decode()
    assert '-->|"x [B, 17, 64]"|' in mmd
    assert '[label="image"]' in render(c.program, c.flow, "dot").decode()  # no table: the key alone


def test_humanize():
    assert [humanize(n) for n in (0, 950, 1000, 12_345, 102_400, 999_999, 1_234_567, 7 * 10**9)] == \
        ["0", "950", "1K", "12.3K", "102K", "1M", "1.2M", "7B"]
