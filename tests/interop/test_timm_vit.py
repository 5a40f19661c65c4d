"""timm VisionTransformer <-> l3m: randomly initialised reference models (no download) give the same
logits in fp32 as the l3m model that imports their weights, and the export gives the same tensors back."""

from __future__ import annotations

import pytest
import torch

import l3m
from l3m.interop import export_main, import_main, load_foreign
from l3m.interop.timm_vit import l3m_to_vit, vit_to_l3m
from l3m.model.build import materialize
from l3m.train.export import load_pretrained, read_weights

# timm's ViT as an l3m file; `{...}` fields pick the variant under test.
VIT = """l3m 1
def TimmViT(dim, depth, heads, patch = 4, image_size = 16, num_classes = 10, fused_qkv = true)
    image -> logits {{
  preprocessor {{
    patches: PatchEmbed(dim = dim, patch = patch, bias = true)                 image -> x
    cls:     ClsToken(dim = dim, num_registers = {regs})                       x -> x
    pos:     PosEmbed(dim = dim, num = (image_size // patch) ** 2 + {pos_extra},
                      offset = {pos_offset})                                   x -> x
  }}
  trunk {{ blocks: Transformer(dim = dim, depth = depth, heads = heads, mlp = gelu, norm = layernorm,
                              norm_eps = 1e-6, qkv_bias = true, proj_bias = {proj_bias}, mlp_bias = true,
                              fused_qkv = fused_qkv, qk_norm = {qk_norm},
                              final_norm = {final_norm})                       x -> x }}
  postprocessor {{ pool: {pool}                                                 x -> x }}
  head {{ fc: Classifier(dim = dim, num_classes = num_classes, norm = {fc_norm}) x -> logits }}
}}
data {{ train: Synthetic(kind = image, image_size = 16, num_classes = 10, batch_size = 2) -> image, label }}
model vit = TimmViT(dim = 32, depth = 2, heads = 2) image -> logits
loss ce: ClassificationCE() logits, label -> loss
optimizer AdamW(lr = 1e-3)
"""

TOKEN = dict(regs=0, pos_extra=1, pos_offset=0, qk_norm="false", final_norm="true", pool="ClsPool()",
             fc_norm="none", proj_bias="true")  # fmt: skip
# global_pool="avg" with fc_norm, 2 register tokens, positions only on patches, q/k norms.
AVG = dict(regs=2, pos_extra=0, pos_offset=3, qk_norm="true", final_norm="false", pool="AvgPool(start = 3)",
           fc_norm="layernorm", proj_bias="true")  # fmt: skip
TIMM_AVG = dict(global_pool="avg", reg_tokens=2, no_embed_class=True, qk_norm=True)


@pytest.fixture
def vit_cls():
    return pytest.importorskip("timm.models.vision_transformer").VisionTransformer


def timm_vit(vit_cls, **kw):
    """A small timm ViT with every parameter random (timm zeroes biases and sets norms to one)."""
    torch.manual_seed(0)
    model = vit_cls(img_size=16, patch_size=4, num_classes=10, embed_dim=32, depth=2, num_heads=2, **kw)
    model.eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    return model


def vit_file(tmp_path, variant) -> str:
    path = tmp_path / "vit.l3m"
    path.write_text(VIT.format(**variant))
    return str(path)


def l3m_vit(path, fused=True):
    ov = [f"vit.fused_qkv={'true' if fused else 'false'}"]
    return materialize(l3m.load(path, ov).build_model(), "cpu").eval()


def logits_close(ref, model):
    image = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want, got = ref(image), model({"image": image})["logits"]
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(
    "variant, timm_kw, fused",
    [(TOKEN, {}, True), (TOKEN, {}, False), (AVG, TIMM_AVG, True)],
    ids=["token-fused", "token-separate-qkv", "avg-registers-qknorm"],
)
def test_logits_match_timm_and_export_round_trips(vit_cls, tmp_path, variant, timm_kw, fused):
    ref = timm_vit(vit_cls, **timm_kw)
    model = l3m_vit(vit_file(tmp_path, variant), fused)
    state = ref.state_dict()
    report = load_pretrained(model, vit_to_l3m(state, model))
    assert report.ok and len(report.loaded) == len(model.state_dict())
    logits_close(ref, model)
    back = l3m_to_vit(model.state_dict(), model)
    assert sorted(back) == sorted(state)
    assert all(torch.equal(back[k], state[k]) for k in state)


def test_fused_qkv_needs_the_regrouping(vit_cls, tmp_path):
    """timm's `[q; k; v]` rows copied as they are into l3m's per-head groups change the model."""
    ref = timm_vit(vit_cls)
    model = l3m_vit(vit_file(tmp_path, TOKEN))
    converted = vit_to_l3m(ref.state_dict(), model)
    for i in range(2):
        for n in ("weight", "bias"):
            naive = ref.state_dict()[f"blocks.{i}.attn.qkv.{n}"]
            assert not torch.equal(naive, converted[f"vit.trunk.blocks.layers.{i}.attn.qkv.{n}"])
            converted[f"vit.trunk.blocks.layers.{i}.attn.qkv.{n}"] = naive
    load_pretrained(model, converted)
    with pytest.raises(AssertionError):
        logits_close(ref, model)


def test_cli_import_and_export_back(vit_cls, tmp_path, capsys):
    from safetensors.torch import save_file

    ref = timm_vit(vit_cls)
    src, out, back = (tmp_path / f"{n}.safetensors" for n in ("timm", "l3m", "back"))
    save_file(ref.state_dict(), str(src))
    path = vit_file(tmp_path, TOKEN)
    assert import_main("timm-vit", str(src), path, str(out), []) == 0
    assert "imported 32 tensors" in capsys.readouterr().out
    assert all(k.startswith("vit.") for k in read_weights(out))  # the names `l3m plan` prints: model first
    assert "vit.trunk.blocks.layers.0.attn.qkv.weight" in read_weights(out)
    model = l3m_vit(path)
    assert load_foreign(model, "timm-vit", src).ok
    assert load_pretrained(model, out).ok
    logits_close(ref, model)
    assert export_main("timm-vit", str(out), path, str(back), []) == 0
    original, exported = read_weights(src), read_weights(back)
    assert sorted(exported) == sorted(original)
    assert all(torch.equal(exported[k], original[k]) for k in original)


def test_what_does_not_fit_is_an_error(vit_cls, tmp_path, capsys):
    from safetensors.torch import save_file

    path = vit_file(tmp_path, TOKEN)
    src, out = tmp_path / "timm.safetensors", str(tmp_path / "out.safetensors")
    save_file(timm_vit(vit_cls, init_values=1e-5).state_dict(), str(src))  # LayerScale: l3m has none
    assert import_main("timm-vit", str(src), path, out, []) == 1
    assert "no rule for blocks.0.ls1.gamma" in capsys.readouterr().err
    save_file(timm_vit(vit_cls).state_dict(), str(src))
    no_bias = vit_file(tmp_path, {**TOKEN, "proj_bias": "false"})
    assert import_main("timm-vit", str(src), no_bias, out, []) == 1
    assert "unexpected: vit.trunk.blocks.layers.0.attn.proj.bias" in capsys.readouterr().err


def test_non_vit_models_are_refused(tmp_path):
    from helpers import ROOT

    model = l3m.load(str(ROOT / "examples" / "llama_tiny.l3m")).build_model()
    with pytest.raises(ValueError, match="needs exactly one PatchEmbed block in the model, found 0"):
        vit_to_l3m({}, model)
    model = l3m.load(str(ROOT / "examples" / "aimv2_digits.l3m")).build_model()
    with pytest.raises(ValueError, match="exactly one PosEmbed block in the model, found 2"):
        vit_to_l3m({}, model)
    model = l3m.load(vit_file(tmp_path, TOKEN), ["vit.trunk.blocks.causal=true"]).build_model()
    with pytest.raises(ValueError, match="not a timm ViT's trunk; it needs causal = false"):
        vit_to_l3m({}, model)


def test_import_and_export_as_typed(vit_cls, tmp_path):
    """`l3m import timm-vit SRC FILE OUT` then `l3m export OUT BACK --to timm-vit --file FILE`."""
    import subprocess
    import sys

    from safetensors.torch import save_file

    ref = timm_vit(vit_cls)
    src = tmp_path / "timm.safetensors"
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(src))
    prog = tmp_path / "vit.l3m"
    prog.write_text(VIT.format(**TOKEN))

    def run(*a):
        return subprocess.run([sys.executable, "-m", "l3m", *map(str, a)], capture_output=True, text=True, timeout=300)

    r = run("import", "timm-vit", src, prog, tmp_path / "l3m.safetensors")
    assert r.returncode == 0, r.stderr
    r = run("export", tmp_path / "l3m.safetensors", tmp_path / "back.safetensors", "--to", "timm-vit", "--file", prog)
    assert r.returncode == 0, r.stderr
    back, original = read_weights(tmp_path / "back.safetensors"), ref.state_dict()
    assert sorted(back) == sorted(original) and all(torch.equal(back[k], original[k]) for k in original)
    r = run("import", "timm-vit", tmp_path / "missing.safetensors", prog, tmp_path / "x.safetensors")
    assert r.returncode == 2 and "Traceback" not in r.stderr
