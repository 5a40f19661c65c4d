"""`l3m plan` and `l3m graph` show the pipeline stages of `mesh { pp = N }`."""

from __future__ import annotations

from l3m.dsl.render import render
from l3m.plan import format_plan, plan

CLIP = """l3m 1
data {
  train: Synthetic(kind = "image_text", image_size = 8, vocab = 32, seq_len = 8, batch_size = 8) -> image, text
}
model clip {
  model image {
    preprocessor { patches: PatchEmbed(dim = 32, patch = 4)  image -> x }
    trunk { blocks: Transformer(dim = 32, depth = 2, heads = 2)  x -> x }
    postprocessor { pool: ClsPool()  x -> x }
    head { proj: ClipProjection(in_dim = 32, out_dim = 16)  x -> image_emb, logit_scale }
  }
  model text {
    preprocessor { embed: TokenEmbedding(vocab = 32, dim = 32)  text -> t }
    trunk { blocks: Transformer(dim = 32, depth = 2, heads = 2, causal = true)  t -> t }
    postprocessor { pool: EosPool(eos_id = 2)  t, text -> t }
    head { proj: ClipProjection(in_dim = 32, out_dim = 16, learn_scale = false)  t -> text_emb }
  }
}
loss contrastive: ClipLoss()  image_emb, text_emb, logit_scale -> loss
optimizer AdamW(lr = 1e-3)
train { grad_accum = 2 }
mesh { pp = 2, pp_split = ["clip.text.trunk.blocks.layers.1"] }
"""


def test_plan_prints_each_stage_and_the_keys_at_the_cut(compile_text):
    compiled = compile_text(CLIP)
    assert compiled.ok, compiled.errors
    p = plan(compiled.program, 2, schedule=compiled.flow.model_order(), peak=False)
    stages = p["pipeline"]["stages"]
    assert [s["rank"] for s in stages] == [0, 1]
    assert stages[1]["runs"] == "clip.text.trunk.blocks.layers.1, clip.text.postprocessor.pool, clip.text.head.proj"
    assert stages[1]["receives"] == ["image_emb", "logit_scale", "clip.text.trunk.blocks#x"]
    assert stages[1]["from_batch"] == ["text"]  # read from each rank's own copy of the batch, never sent
    assert stages[1]["sends"] == ["image_emb", "text_emb", "logit_scale"]
    assert all(s["flops_per_sample"] > 0 and s["param_bytes"] > 0 for s in stages)
    text = format_plan(p)
    assert "pipeline" in text and "stage 1 (pp rank 1)" in text and "receives  image_emb, logit_scale" in text


def test_graph_marks_the_stages(compile_text):
    compiled = compile_text(CLIP)
    text = render(compiled.program, compiled.flow, "txt").decode()
    assert "pipeline: 2 stages" in text
    assert "pipeline stages 0: layers 0-0, 1: layers 1-1" in text
    assert "<- image_emb, logit_scale, clip.text.trunk.blocks#x" in text
    dot = render(compiled.program, compiled.flow, "dot").decode()
    assert "pipeline stage 0" in dot and "(pipeline cut)" in dot and 'fillcolor="#fff3e0"' in dot


def test_plan_shows_the_split_the_trainer_makes(compile_text):
    """The trainer measures the same FLOPs on the meta model (l3m.train.session) and so cuts where plan says."""
    from l3m.config import build_section
    from l3m.dist.pp import choose_split
    from l3m.model.build import build_model
    from l3m.plan_pp import measured_unit_flops

    compiled = compile_text(CLIP.replace('pp_split = ["clip.text.trunk.blocks.layers.1"]', "pp_virtual = 2, "
                                         'pp_schedule = "interleaved_1f1b"'))
    assert compiled.ok, compiled.errors
    p = plan(compiled.program, 2, schedule=compiled.flow.model_order(), peak=False)
    model = build_model(compiled.program, device="meta", schedule=compiled.flow.model_order())
    mesh = build_section("mesh", compiled.program.section("mesh"))
    split = choose_split(model, mesh, flops=measured_unit_flops(compiled.program, model))
    assert [split.describe(i) for i in range(split.stages)] == [s["runs"] for s in p["pipeline"]["stages"]]
    assert [s["rank"] for s in p["pipeline"]["stages"]] == [0, 1, 0, 1]
