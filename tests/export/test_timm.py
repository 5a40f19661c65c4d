"""`l3m export --format timm`: a ViT trunk as timm's `VisionTransformer` (state dict + model args)
that `timm.create_model(..., pretrained=False, **args)` + strict `load_state_dict` rebuilds, with
l3m's features/logits; `local-dir:` loads the folder in one step."""

from __future__ import annotations

import json
import stat

import pytest
import torch
from helpers import ROOT
from safetensors.torch import load_file, save_file

import l3m
from l3m.cli import main
from l3m.model.build import materialize
from l3m.train.export import load_pretrained, read_weights

DIGITS = str(ROOT / "examples" / "vit_digits.l3m")

# A ViT as timm builds one; `{...}` fields pick the variant under test.
VIT = """l3m 1
model vit {{
  preprocessor {{
    patches: PatchEmbed(dim = 32, patch = 4, bias = {patch_bias})                            image -> x
    cls:     ClsToken(dim = 32, num_registers = {regs})                                      x -> x
    pos:     PosEmbed(dim = 32, num = 16 + {pos_extra}, offset = {pos_offset})               x -> x
  }}
  trunk {{ blocks: Transformer(dim = 32, depth = 2, heads = 2, mlp = gelu, hidden = 48, norm = layernorm,
                              norm_eps = {eps}, qkv_bias = true, proj_bias = {proj_bias}, mlp_bias = false,
                              fused_qkv = {fused}, qk_norm = {qk_norm}, final_norm = {final_norm})  x -> x }}
  postprocessor {{ pool: {pool}                                                               x -> x }}
  head {{ fc: Classifier(dim = 32, num_classes = 10, norm = {fc_norm}, norm_eps = 1e-6)       x -> logits }}
}}
data {{ train: Synthetic(kind = image, image_size = 16, num_classes = 10, batch_size = 2) -> image, label }}
loss ce: ClassificationCE() logits, label -> loss
optimizer AdamW(lr = 1e-3)
"""
TOKEN = dict(patch_bias="true", regs=0, pos_extra=1, pos_offset=0, eps=1e-6, proj_bias="true", fused="true",
             qk_norm="false", final_norm="true", pool="ClsPool()", fc_norm="none")
AVG = dict(TOKEN, patch_bias="false", regs=2, pos_extra=0, pos_offset=3, proj_bias="true", fused="false",
           qk_norm="true", final_norm="false", pool="AvgPool(start = 3)", fc_norm="layernorm")


def random_model(path, overrides=(), seed=0):
    model = materialize(l3m.load(str(path), list(overrides)).build_model(), "cpu").eval()
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    return model


def save_weights(model, path):
    save_file({k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}, str(path))
    return path


def rebuild(timm, out):
    """The documented recipe: timm's constructor with the exported args, then a strict load."""
    cfg = json.loads((out / "config.json").read_text())
    ref = timm.create_model(cfg["architecture"], pretrained=False, **cfg["model_args"]).eval()
    ref.load_state_dict(load_file(str(out / "model.safetensors")), strict=True)
    return ref, cfg


def images(size=16):
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("variant", [TOKEN, AVG], ids=["token-fused", "avg-registers-qknorm-fcnorm-zero-biases"])
def test_classifier_logits_match_timm(timm, quiet_run, variant):
    path = quiet_run / "vit.l3m"
    path.write_text(VIT.format(**variant))
    model = random_model(path)
    result = l3m.export(save_weights(model, quiet_run / "w.safetensors"), quiet_run / "timm", "timm", file=path)
    assert not result.notes
    ref, cfg = rebuild(timm, quiet_run / "timm")
    x = images()
    with torch.no_grad():
        torch.testing.assert_close(ref(x), model({"image": x})["logits"], atol=1e-4, rtol=1e-4)
    args = cfg["model_args"]
    assert args["num_classes"] == 10 and args["mlp_ratio"] == 1.5
    if variant is AVG:
        assert (args["global_pool"], args["reg_tokens"], args["no_embed_class"], args["fc_norm"]) == ("avg", 2, True, True)
        assert torch.count_nonzero(ref.blocks[0].mlp.fc1.bias) == 0  # l3m has none: zeros
        assert torch.count_nonzero(ref.patch_embed.proj.bias) == 0
    one_step = timm.create_model(f"local-dir:{quiet_run / 'timm'}", pretrained=True).eval()
    with torch.no_grad():
        torch.testing.assert_close(one_step(x), ref(x))
    for f in (quiet_run / "timm").iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o644


def test_trained_vit_digits_exports_its_trunk(timm, quiet_run, capsys):
    """vit_digits (models/vit_imagenet.l3m's ViT) normalises again in its Classifier, which timm
    cannot: the trunk is exported (num_classes = 0) and its pooled features match l3m's."""
    from l3m.train.api import train_main

    overrides = ["train.steps=2", "train.eval_every=0", "train.checkpoint_every=2", "train.log_every=1",
                 "data.train.batch_size=8"]
    run = quiet_run / "run"
    assert train_main(DIGITS, overrides, output=str(run)) == 0
    capsys.readouterr()
    assert main(["export", str(run), str(quiet_run / "timm"), "--format", "timm"]) == 0
    captured = capsys.readouterr()
    assert "Classifier 'vit.head.fc' is not exported" in captured.err and "(step 2) as timm" in captured.out
    model = materialize(l3m.load(DIGITS, overrides).build_model(), "cpu").eval()
    assert load_pretrained(model, read_weights(run)).ok
    ref, cfg = rebuild(timm, quiet_run / "timm")
    assert cfg["model_args"]["num_classes"] == 0 and cfg["model_args"]["global_pool"] == "token"
    x = images()
    with torch.no_grad():
        want = ref.forward_head(ref.forward_features(x), pre_logits=True)
        torch.testing.assert_close(want, model({"image": x})["vit.x"], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(
    "variant, names",
    [
        (dict(TOKEN, eps=1e-5), ["eps 1e-05", "1e-06"]),
        (dict(TOKEN, regs=2, pos_offset=1, pos_extra=2), ["PosEmbed 'vit.preprocessor.pos' starts at token 1"]),
        (dict(TOKEN, pool="AvgPool(start = 0)"), ["AvgPool(start = 0)"]),
    ],
    ids=["eps", "pos-offset", "avg-start"],
)
def test_what_does_not_map_is_refused_by_name(quiet_run, capsys, variant, names):
    path = quiet_run / "vit.l3m"
    path.write_text(VIT.format(**variant))
    weights = quiet_run / "w.safetensors"
    weights.write_bytes(b"")  # never read: the model is refused first
    assert main(["export", str(weights), str(quiet_run / "timm"), "--format", "timm", "--file", str(path)]) == 1
    err = capsys.readouterr().err
    assert all(n in err for n in names), err
    assert not (quiet_run / "timm").exists()


def test_transformer_options_timm_lacks_are_refused(quiet_run, capsys):
    weights = quiet_run / "w.safetensors"
    weights.write_bytes(b"")
    for override, name in (("vit.trunk.blocks.rope=true", "rope = false"),
                           ("vit.trunk.blocks.mlp=swiglu", "mlp = gelu"),
                           ("vit.trunk.blocks.attn=Attention(pos = Rope2d())", "it has Rope2d")):
        argv = ["export", str(weights), str(quiet_run / "t"), "--format", "timm", "--file", DIGITS, override]
        assert main(argv) == 1
        assert name in capsys.readouterr().err
