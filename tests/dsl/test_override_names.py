"""One name per thing: the path `plan` prints is the override prefix; old spellings say the new one."""

from __future__ import annotations

import textwrap

import pytest

from l3m.model import naming

HEAD = "l3m 1\n"
VIT = HEAD + textwrap.dedent("""
    let dim = 16
    def ViT(dim, depth = 1) image -> logits {
      preprocessor { patches: PatchEmbed(patch = 4, dim = dim)  image -> x
                     cls: ClsToken(dim = dim)  x -> x }
      trunk        { blocks: Transformer(dim = dim, depth = depth, heads = 2)  x -> x }
      postprocessor { pool: ClsPool()  x -> x }
      head         { fc: Classifier(dim = dim, num_classes = 10)  x -> logits }
    }
    data { train: DigitsImages(image_size = 16, batch_size = 4) -> image, label }
    model vit = ViT(dim = dim, depth = 2) image -> logits
    loss ce: ClassificationCE() logits, label -> loss
""")

CLIP = HEAD + textwrap.dedent("""
    data { train: Synthetic(kind = "tokens", vocab = 11, seq_len = 6, batch_size = 2) -> tokens, targets }
    model clip {
      model text {
        preprocessor { embed: TokenEmbedding(vocab = 11, dim = 8)  tokens -> x }
        trunk        { blocks: Transformer(dim = 8, depth = 1, heads = 2)  x -> x }
      }
      head { lm: LMHead(8, 11)  x -> logits }
    }
    loss ce: LMCrossEntropy() logits, targets -> loss
""")


def node(compiled, path):
    return next(n for n in compiled.program.nodes if n.path == path)


def test_the_plan_path_is_the_override_prefix(compile_text):
    c = compile_text(VIT, overrides=["vit.trunk.blocks.depth=3", "vit.trunk.blocks.heads=4"])
    assert c.ok, [d.message for d in c.errors]
    assert node(c, "vit.trunk.blocks").call.kwargs["depth"] == 3
    assert node(c, "vit.trunk.blocks").call.kwargs["heads"] == 4


def test_a_template_instance_takes_its_arguments_under_the_model_name(compile_text):
    c = compile_text(VIT, overrides=["vit.dim=32", "vit.depth=4"])
    assert c.ok, [d.message for d in c.errors]
    assert node(c, "vit.trunk.blocks").call.kwargs["dim"] == 32
    assert node(c, "vit.trunk.blocks").call.kwargs["depth"] == 4
    assert node(c, "vit.preprocessor.patches").call.kwargs["dim"] == 32


def test_nested_models_are_reached_by_their_path(compile_text):
    c = compile_text(CLIP, overrides=["clip.text.trunk.blocks.depth=2"])
    assert c.ok, [d.message for d in c.errors]
    assert node(c, "clip.text.trunk.blocks").call.kwargs["depth"] == 2


@pytest.mark.parametrize(("old", "new"), [
    ("model.trunk.blocks.depth=2", "vit.trunk.blocks.depth"),
    ("model.dim=32", "vit.dim"),
    ("model.trunk.blokcs.depth=2", "vit.trunk.blocks.depth"),  # an old and misspelt path: the nearest new one
])  # fmt: skip
def test_the_old_model_prefix_is_e502_with_the_new_spelling(compile_text, old, new):
    c = compile_text(VIT, overrides=[old])
    (d,) = [d for d in c.errors if d.code == "E502"]
    assert d.span.file == "<override 1>" and len(c.errors) == 1
    assert "old 'model.' prefix" in d.message and "'vit'" in d.message
    assert d.help == f"did you mean '{new}'?"


def test_old_nested_spelling_suggests_the_new_path(compile_text):
    (d,) = compile_text(CLIP, overrides=["model.text.trunk.blocks.depth=2"]).errors
    assert d.code == "E502" and d.help == "did you mean 'clip.text.trunk.blocks.depth'?"


def test_a_model_called_model_keeps_its_prefix(compile_text):
    c = compile_text(VIT.replace("model vit =", "model model ="), overrides=["model.trunk.blocks.depth=3"])
    assert c.ok, [d.message for d in c.errors]
    assert node(c, "model.trunk.blocks").call.kwargs["depth"] == 3


def test_a_let_may_share_the_model_name_and_stays_unambiguous(compile_text):
    src = VIT.replace("let dim = 16", "let dim = 16\nlet vit = 3").replace("depth = 2) image", "depth = vit) image")
    c = compile_text(src, overrides=["vit=5"])
    assert c.ok, [d.message for d in c.errors]
    assert node(c, "vit.trunk.blocks").call.kwargs["depth"] == 5  # the bare name: the let
    c = compile_text(src, overrides=["vit=5", "vit.depth=1"])
    assert c.ok and node(c, "vit.trunk.blocks").call.kwargs["depth"] == 1  # a dotted path: the model


@pytest.mark.parametrize("name", ["train", "data", "loss", "optimizer", "mesh"])
def test_a_model_named_like_a_section_is_e503(compile_text, name):
    c = compile_text(VIT.replace("model vit =", f"model {name} ="))
    assert "E503" in [d.code for d in c.errors]


def test_naming_rule_helpers():
    assert naming.block_path("vit", "trunk", "blocks") == "vit.trunk.blocks"
    assert naming.param_name("vit.trunk.blocks", "layers.0.norm1.weight") == "vit.trunk.blocks.layers.0.norm1.weight"
    assert naming.legacy_override("model.trunk.blocks.depth", "vit") == "vit.trunk.blocks.depth"
    assert naming.legacy_override("train.steps", "vit") is None
    assert naming.legacy_override("model.dim", "model") is None
    own = ["vit.trunk.w", "vit.head.b"]
    assert "'vit.'" in naming.missing_model_prefix(["trunk.w", "head.b"], own, "vit")
    assert naming.missing_model_prefix(["vit.trunk.w"], own, "vit") is None  # new names
    assert naming.missing_model_prefix(["encoder.w"], own, "vit") is None  # another model: no such hint
    assert naming.root_of(own) == "vit" and naming.root_of(["a.x", "b.y"]) is None


@pytest.mark.parametrize(("old", "new"), [("model vit =", "model eval ="), ("blocks: Transformer", "to: Transformer")])
def test_a_name_the_built_model_would_shadow_is_e503(compile_text, old, new):
    (d,) = [d for d in compile_text(VIT.replace(old, new)).errors if d.code == "E503"]
    assert "attribute" in d.message


def test_every_attribute_of_the_built_containers_is_reserved():
    torch = pytest.importorskip("torch")
    del torch
    from l3m.model.core import MetaModel, Stage

    live = {n for n in {*dir(MetaModel), *vars(MetaModel([])), *dir(Stage), *vars(Stage())} if not n.startswith("_")}
    # what another library patched onto nn.Module in this process (transformers adds `smart_apply`) is not torch's
    foreign = {n for n in live if getattr(getattr(MetaModel, n, None), "__module__", "torch").split(".")[0]
               not in ("torch", "l3m")}
    live -= foreign
    assert live <= naming.RESERVED, sorted(live - naming.RESERVED)


def test_a_model_named_train_gets_one_e503_through_the_cli(tmp_path):
    """`train` is both a section and an attribute of torch modules: one message, from the real CLI."""
    import subprocess
    import sys

    path = tmp_path / "m.l3m"
    path.write_text(VIT.replace("model vit =", "model train ="))
    proc = subprocess.run([sys.executable, "-m", "l3m", "lint", str(path)], capture_output=True, text=True)
    assert proc.returncode == 1 and proc.stderr.count("error[E503]") == 1, proc.stderr
    assert "Traceback" not in proc.stderr
