"""The pipeline split (l3m.pp_partition): balanced stages, pinned starts, and the keys that cross each cut."""

from __future__ import annotations

import pytest

from l3m.pp_partition import Unit, interleave, live_keys, partition, transformer_units, unit_index


def chain(costs: list[float]) -> list[Unit]:
    """Blocks b0..bn-1, each reading x and writing x."""
    return [Unit(f"b{i}", f"b{i}", ("x",), ("x",), c) for i, c in enumerate(costs)]


def test_balanced_by_cost():
    split = partition(chain([1, 1, 1, 1]), 2, needed=["x"])
    assert split.bounds == [(0, 2), (2, 4)]
    split = partition(chain([5, 1, 1, 1, 1, 1]), 2, needed=["x"])
    assert split.bounds == [(0, 1), (1, 6)] and max(split.cost(0), split.cost(1)) == 5
    split = partition(chain([1, 2, 3, 4, 5, 6]), 3)
    assert max(split.cost(i) for i in range(3)) == 9  # [1 2 3 | 4 5 | 6] or another split as good


def test_pinned_start_is_a_stage_boundary():
    split = partition(chain([1, 1, 1, 1, 1, 1]), 2, pins=[1])
    assert split.bounds == [(0, 1), (1, 6)]
    split = partition(chain([1, 1, 1, 1, 1, 1]), 3, pins=[5])
    assert split.bounds[-1] == (5, 6) and len(split.bounds) == 3


def test_impossible_splits_say_why():
    with pytest.raises(ValueError, match="at least 3 units"):
        partition(chain([1, 1]), 3)
    with pytest.raises(ValueError, match="pinned splits make more than 2 stages"):
        partition(chain([1, 1, 1, 1]), 2, pins=[1, 2])
    with pytest.raises(ValueError, match="first unit"):
        partition(chain([1, 1, 1]), 2, pins=[0])


def test_zero_costs_fall_back_to_parameter_bytes():
    units = [Unit(f"b{i}", f"b{i}", ("x",), ("x",), 0.0, b) for i, b in enumerate([10, 1, 1, 10])]
    assert partition(units, 2).bounds == [(0, 2), (2, 4)]


def test_live_keys_cross_a_cut_inside_a_transformer():
    """A CLIP-like model cut inside its text trunk: the image tower's outputs ride along, the caption
    ids (read again by the pooling) and the trunk's running state cross the cut."""
    units = [
        Unit("image", "image", ("image",), ("image_emb", "logit_scale"), 4),
        Unit("embed", "embed", ("text",), ("t",), 1),
        *transformer_units("trunk", 2, ["t"], [], ["t"], [2, 2], [8, 8]),
        Unit("pool", "pool", ("t", "text"), ("t",), 0),
        Unit("proj", "proj", ("t",), ("text_emb",), 1),
    ]
    needed = ["image_emb", "text_emb", "logit_scale"]
    split = partition(units, 2, pins=[unit_index(units, "trunk.layers.1")], needed=needed)
    assert split.describe(0) == "image, embed, trunk.layers.0"
    assert split.describe(1) == "trunk.layers.1, pool, proj"
    assert split.live[0] == ["image", "text"]
    assert sorted(split.live[1]) == sorted(["image_emb", "logit_scale", "text", "trunk#x"])
    assert split.sends(1) == needed


def test_transformer_units_pass_state_and_host_keys():
    units = transformer_units("enc", 3, ["x"], ["mask"], ["y", "aux"], [1, 1, 1], [4, 4, 4], has_aux=True,
                              tail_bytes=2)
    assert [u.name for u in units] == ["enc.layers.0", "enc.layers.1", "enc.layers.2"]
    assert units[0].reads == ("x", "mask") and units[0].writes == ("enc#x", "enc#aux")
    assert units[1].reads == ("enc#x", "enc#aux", "mask")
    assert units[2].writes == ("y", "aux") and units[2].param_bytes == 6
    live = live_keys(units, ["y"])
    assert live[1] == ["mask", "enc#x", "enc#aux"] or sorted(live[1]) == sorted(["mask", "enc#x", "enc#aux"])
    assert unit_index(units, "enc") == 0 and unit_index(units, "enc.layers.2") == 2 and unit_index(units, "x") is None


def test_interleaved_stages_go_round_robin():
    assert interleave(4, 2) == [[0, 2], [1, 3]]
    assert interleave(2, 2) == [[0], [1]]


def test_model_units_of_a_built_llm(compile_text):
    """The runtime's units: a Transformer is expanded into its layers; a bad pp_split name suggests one."""
    from l3m.config import build_section
    from l3m.dist.pp import choose_split
    from l3m.model.build import build_model

    text = """l3m 1
model gpt {
  preprocessor { embed: TokenEmbedding(vocab = 64, dim = 32)  tokens -> x }
  trunk { blocks: Transformer(dim = 32, depth = 4, heads = 2, causal = true)  x -> x }
  head { lm: LMHead(dim = 32, vocab = 64)  x -> logits }
}
mesh { pp = 2 }
"""
    compiled = compile_text(text)
    model = build_model(compiled.program, device="meta", schedule=compiled.flow.model_order())
    mesh = build_section("mesh", compiled.program.section("mesh"))
    split = choose_split(model, mesh, ["logits"])
    assert split.stages == 2
    assert split.describe(0).startswith("gpt.preprocessor.embed, gpt.trunk.blocks.layers.0")
    assert split.live[1] == ["gpt.trunk.blocks#x"] and split.sends(1) == ["logits"]
    assert split.cost(0) > 0 and abs(split.cost(0) - split.cost(1)) <= max(split.cost(0), split.cost(1)) / 2
    mesh.pp_split = ["gpt.trunk.blocks.layers.3"]
    assert choose_split(model, mesh, ["logits"]).describe(1) == "gpt.trunk.blocks.layers.3, gpt.head.lm"
    mesh.pp_split = ["gpt.trunk.block.layers.3"]
    with pytest.raises(ValueError, match="did you mean 'gpt.trunk.blocks.layers.3'"):
        choose_split(model, mesh, ["logits"])


LLM = """l3m 1
model gpt {
  preprocessor { embed: TokenEmbedding(vocab = 64, dim = 32)  tokens -> x }
  trunk { blocks: Transformer(dim = 32, depth = 4, heads = 2, causal = true)  x -> x }
  head { lm: LMHead(dim = 32, vocab = 64)  x -> logits }
}
"""


def test_lint_checks_pp_split(compile_text):
    """E606: a pp_split entry that names no block or layer (with the closest name), too many cuts, the first block."""
    def e606(text: str) -> list:
        return [d for d in compile_text(LLM + text).diagnostics if d.code == "E606"]

    assert not e606('mesh { pp = 2, pp_split = ["gpt.trunk.blocks.layers.2"] }\n')
    assert not e606('mesh { pp = 2, pp_split = ["gpt.head.lm"] }\n')
    bad = compile_text(LLM + 'mesh { pp = 2, pp_split = ["gpt.trunk.block.layers.2"] }\n')
    (d,) = [d for d in bad.diagnostics if d.code == "E606"]
    assert "gpt.trunk.block.layers.2" in d.message and "gpt.trunk.blocks.layers.2" in d.help
    assert d.span.line == 7
    bad = compile_text(LLM + 'mesh { pp = 2, pp_split = ["gpt.trunk.blocks.layers.1", "gpt.head.lm"] }\n')
    assert any("2 stage start(s)" in d.message for d in bad.diagnostics if d.code == "E606")
    bad = compile_text(LLM + 'mesh { pp = 2, pp_split = ["gpt.preprocessor.embed"] }\n')
    assert any("first block" in d.message for d in bad.diagnostics if d.code == "E606")
    assert len(e606('mesh { pp = 2, pp_split = ["gpt.trunk.blocks.layers.4"] }\n')) == 1


def test_unsupported_combinations_are_refused_in_one_line():
    from l3m.config import MeshConfig, TrainConfig
    from l3m.dist.mesh import ParallelDims
    from l3m.dist.pp import refusal

    mesh, train = MeshConfig(pp=2), TrainConfig()
    assert refusal(mesh, train, ParallelDims(1, 2, 1, 1, pp=2), "none") is None
    assert "mesh.cp > 1" in refusal(mesh, train, ParallelDims(1, 1, 2, 1, pp=2), "none")
    assert "mesh.tp > 1" in refusal(mesh, train, ParallelDims(1, 1, 1, 2, pp=2), "none")
    assert "compile" in refusal(mesh, train, ParallelDims(1, 1, 1, 1, pp=2), "model")
    assert "fp16" in refusal(mesh, TrainConfig(dtype="fp16"), ParallelDims(1, 1, 1, 1, pp=2), "none")


def test_pipeline_rank_is_the_outermost_coordinate():
    from l3m.dist.mesh import ParallelDims

    dims = [ParallelDims(dp_replicate=1, dp_shard=2, cp=1, tp=1, pp=2, rank=r) for r in range(4)]
    assert [d.coordinate("pp") for d in dims] == [0, 0, 1, 1]
    assert [d.dp_rank for d in dims] == [0, 1, 0, 1]  # both stages of a data-parallel rank read the same batch
    assert dims[0].world_size == 4 and dims[0].size("pp") == 2
