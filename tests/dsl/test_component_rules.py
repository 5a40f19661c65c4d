"""Lint reads components (issue #17): the `@transformer` rule takes heads / head_dim / kv_heads written inside
`attn = Attention(...)`, a `pos` must fit the head size, and lint's parameter names are the built model's."""

from __future__ import annotations

import pytest

HEAD = "l3m 1\n"
VIT = """data { train: DigitsImages(image_size = 16, batch_size = 4) -> image, label }
model vit {
  preprocessor {
    patches: PatchEmbed(dim = 16, patch = 4) image -> x
    cls:     ClsToken(dim = 16) x -> x
  }
  trunk         { TRUNK x -> x }
  postprocessor { pool: ClsPool() x -> x }
  head          { fc: Classifier(dim = 16, num_classes = 10) x -> logits }
}
loss ce: ClassificationCE() logits, label -> loss
"""


def vit(trunk: str) -> str:
    return HEAD + VIT.replace("TRUNK", trunk)


# name: (trunk, code, text the diagnostic points at, words in its message)
CASES = {
    "heads of the component divide dim": (
        "blocks: Transformer(dim = 16, depth = 1, heads = 2, attn = Attention(heads = 5))", "E755", "attn",
        ["heads (5) must divide dim (16)"]),
    "the 2-D RoPE fits the component's head size": (
        "blocks: Transformer(dim = 16, depth = 1, heads = 2, attn = Attention(heads = 8, pos = Rope2d()))", "E755",
        "attn", ["Rope2d needs a head size divisible by 4, but it is 2"]),
    "kv_heads of the component divide its heads": (
        "blocks: Transformer(dim = 16, depth = 1, heads = 4, attn = Attention(kv_heads = 3))", "E755", "attn",
        ["kv_heads (3) must divide heads (4)"]),
    "the 2-D grid fits the tokens": (
        "blocks: Transformer(dim = 16, depth = 1, heads = 2, attn = Attention(pos = Rope2d(grid = [5, 5])))", "E755",
        "attn", ["Rope2d places the 17 tokens", "5x5 grid"]),
    "a standalone attention's grid fits the tokens": (
        "blocks: Attention(dim = 16, heads = 2, pos = RopeMixed(prefix = 2))", "E755", "pos",
        ["RopeMixed places the 17 tokens as 2 prefix tokens and a square grid"]),
    "the feed-forward's output width is the trunk's": (
        "blocks: Transformer(dim = 16, depth = 1, heads = 2, mlp = SwiGLU(48, 3))", "E755", "mlp",
        ["the mlp's out_dim (3) must be the trunk's dim (16)"]),
    "the norm's width is the trunk's": (
        "blocks: Transformer(dim = 16, depth = 1, heads = 2, norm = RMSNorm(dim = 8))", "E755", "norm",
        ["the norm's dim (8) must be the trunk's dim (16)"]),
    "a standalone attention's heads divide dim": (
        "blocks: Attention(dim = 16, heads = 3)", "E755", "heads", ["heads (3) must divide dim (16)"]),
    "a standalone attention's pos fits": (
        "blocks: Attention(dim = 16, heads = 8, pos = RopeMixed())", "E755", "pos", ["RopeMixed", "but it is 2"]),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_component_rule_is_reported(compile_text, name):
    trunk, code, at, words = CASES[name]
    src = vit(trunk)
    compiled = compile_text(src)
    hits = [d for d in compiled.diagnostics if d.code == code]
    assert hits, [(d.code, d.message) for d in compiled.diagnostics]
    d = hits[0]
    line = src.splitlines()[d.span.line - 1]
    assert line[d.span.col - 1:].startswith(at), (line, d.span)
    for w in words:
        assert w in d.message, d.message


def test_a_program_with_components_is_clean_and_names_its_parameters_as_built(compile_text):
    from l3m import registry
    from l3m.dsl.paramcheck import model_params

    src = vit("blocks: Transformer(dim = 16, depth = 2, heads = 2, qkv_bias = true, mlp = SwiGLU(hidden = 24), "
              "norm = RMSNorm(eps = 1e-5), attn = Attention(heads = 4, qkv_bias = false, pos = RopeMixed()))")
    compiled = compile_text(src)
    assert compiled.ok, [(d.code, d.message) for d in compiled.diagnostics]
    registry.load_builtins()
    model = compiled.build_model()
    built = {n: tuple(p.shape) for n, p in model.named_parameters(remove_duplicate=False)}
    assert "vit.trunk.blocks.layers.1.attn.pos.freqs" in built and "vit.trunk.blocks.layers.0.attn.qkv.bias" not in built
    assert model_params(compiled.program).shapes == built


def test_a_failing_component_names_the_block_and_the_component(compile_text):
    """A constructor error inside a nested component names the block and the component, each at file:line:col."""
    from l3m import registry
    from l3m.model.blame import ProgramError

    src = vit("blocks: Transformer(dim = 16, depth = 1, heads = 2, attn = Attention(pos = Rope2d(grid = [3])))")
    compiled = compile_text(src)
    registry.load_builtins()
    with pytest.raises(ProgramError) as e:
        compiled.build_model()
    d = e.value.diagnostic
    line = src.splitlines().index(next(x for x in src.splitlines() if "Rope2d" in x)) + 1
    assert d.span.line == line and "block 'blocks' (Transformer) could not be built" in d.message
    assert "component Rope2d at " in d.message and "grid is [h, w]" in d.message
    (note, span), = [(n, s) for n, s in d.notes if n.startswith("in component")]
    assert note == "in component Rope2d" and span.line == line
    assert src.splitlines()[line - 1][span.col - 1:].startswith("Rope2d")
