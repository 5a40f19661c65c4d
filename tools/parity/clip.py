"""Parity fixture of the original CLIP (configs/clip/001_clip_hfdata.yaml).

Built at a tiny size from the YAML itself (so every default that lives in code comes with it), every
parameter randomised, run on random images and hand-written token ids; the loss is the YAML's
CLIPContrastiveLoss. Token ids are given directly (no tokenizer): the EOS id is the tiny vocabulary's last
id, as 49407 is the full one's, and the captions put EOS where pooling can go wrong (an EOS before the end
followed by more text and a second EOS, zero padding after the EOS, EOS padding, no EOS at all).
"""

from __future__ import annotations

from pathlib import Path

from tools.parity import common

YAML = "clip/001_clip_hfdata.yaml"
# dim 16 keeps SwiGLU's hidden at the original's 256 (int(2 * 4 * 16 / 3) rounded up to 256).
TINY = dict(vision_embed_dim=16, vision_num_blocks=2, vision_num_heads=2, text_embed_dim=16, text_num_blocks=2,
            text_num_heads=2, context_length=8, text_vocab_size=64, img_size=16, patch_size=4, num_patches=16)
# Init statistics are measured at a size where std estimates are meaningful.
STATS = dict(vision_embed_dim=256, vision_num_blocks=2, vision_num_heads=2, text_embed_dim=256, text_num_blocks=2,
             text_num_heads=2, context_length=16, text_vocab_size=1000, img_size=64, patch_size=16, num_patches=16)
EOS = 63  # the tiny vocabulary's last id (49407 is the full vocabulary's last)
SOT = 62
# Row i: where the original's ExtractEOS (argmax of `ids == eos`, i.e. the FIRST EOS; 0 when none) reads.
TEXT = [
    [SOT, 5, 9, EOS, EOS, EOS, EOS, EOS],  # CLIP's tokenizer: padded with EOS -> 3
    [SOT, 7, EOS, 12, 14, EOS, 0, 0],  # an EOS before the end, text, a second EOS, zero padding -> 2
    [SOT, 1, 2, 3, 4, 5, 6, EOS],  # EOS at the very end -> 7
    [SOT, 3, 3, 3, 3, 3, 3, 3],  # no EOS (truncated): argmax of all-False -> 0
    [SOT, 11, 12, 13, EOS, 0, 0, 0],  # zero padding after the EOS -> 4
]
EOS_POSITIONS = [3, 2, 7, 0, 4]
SEED = 0


def config(reference: Path, constants: dict, eos: int):
    from omegaconf import OmegaConf

    cfg = common.load_config(reference, YAML, constants)
    # The YAML hard-codes 49407; the tiny vocabulary's EOS is its last id in the same way.
    OmegaConf.update(cfg, "model.meta_model.models.text_encoder.postprocessor.eos_token_id", eos)
    return cfg


def randomise(model) -> None:
    """Every parameter away from its init: norm gains around 1, everything else N(0, 0.2), except the
    log logit scale, which stays inside its clamp range (log 1/0.07 + a little) so that the clamp is a no-op
    here and the scale is still tested."""
    import torch

    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("log_logit_scale"):
                p.fill_(2.5)
                continue
            noise = torch.randn_like(p) * 0.2
            p.copy_(1.0 + noise if "norm" in name and name.endswith("weight") else noise)


def run(model, criterion, image, text):
    import torch

    with torch.no_grad():
        data = model({"image": image.clone(), "text": text.clone()})
        loss, _ = criterion(data)
    return data, loss


def make(reference: Path, out: Path, commit: str) -> Path:
    import torch

    common.seeded(SEED)
    stats_cfg = config(reference, STATS, STATS["text_vocab_size"] - 1)
    stats = common.init_statistics(common.instantiate(stats_cfg.model.meta_model))

    common.seeded(SEED + 1)
    cfg = config(reference, TINY, EOS)
    model = common.instantiate(cfg.model.meta_model).eval()
    randomise(model)
    criterion = common.instantiate(cfg.loss)

    g = torch.Generator().manual_seed(SEED + 2)
    image = torch.randn(len(TEXT), 3, TINY["img_size"], TINY["img_size"], generator=g)
    text = torch.tensor(TEXT, dtype=torch.long)
    data, loss = run(model, criterion, image, text)
    # Clamp check: a logit scale above log(100) is clamped (in place, as the original does) before use.
    over = {k: v.clone() for k, v in model.state_dict().items()}
    over["models.image_encoder.head.log_logit_scale"].fill_(5.0)
    model.load_state_dict(over)
    data_over, loss_over = run(model, criterion, image, text)
    assert abs(model.models.image_encoder.head.log_logit_scale.item() - torch.log(torch.tensor(100.0)).item()) < 1e-6
    model.load_state_dict({**over, "models.image_encoder.head.log_logit_scale": torch.tensor([2.5])})

    outputs = {
        "image_tokens": data["image_tokens"],  # image trunk output after post_trunk_norm
        "image_embed": data["image_embed"],  # logit_scale * normalize(linear(cls))
        "logit_scale": data["logit_scale"].reshape(()),
        "text_tokens": data["text_tokens"],  # text trunk output after post_trunk_norm
        "text_embed": data["text_embed"],  # normalize(linear(tokens at the first EOS))
        "loss": loss.reshape(()),
        "clamped.logit_scale": data_over["logit_scale"].reshape(()),
        "clamped.loss": loss_over.reshape(()),
    }
    full = common.full_size_param_count(reference, YAML)
    with torch.device("meta"):
        full_model = common.instantiate(common.load_config(reference, YAML).model.meta_model)
    trainable = sum(p.numel() for p in full_model.parameters() if p.requires_grad)
    meta = {
        "system": "clip",
        "reference_commit": commit,
        "yaml": YAML,
        "constants": TINY,
        "eos_token_id": EOS,
        "eos_positions": EOS_POSITIONS,
        "full_size_param_count": full,
        "full_size_trainable_param_count": trainable,
        "init_statistics": stats,
        "init_statistics_constants": {**STATS, "eos_token_id": STATS["text_vocab_size"] - 1, "seed": SEED},
        "notes": [
            "weights: the original's tiny model with every parameter randomised (norm gains 1 + N(0, 0.2), "
            "everything else N(0, 0.2), log_logit_scale = 2.5); outputs computed in eval mode, fp32, CPU",
            "image_embed is the original's head output: it already carries the logit scale (exp(clamp(s, 0, "
            "log 100)) * normalize(linear(x))); text_embed has no scale; loss = CLIPContrastiveLoss "
            "(mean of the two cross-entropies over image->text and text->image logits, labels arange(B))",
            "text: ids given directly, EOS = 63 (the tiny vocabulary's last id); ExtractEOS reads the FIRST "
            "position whose id is EOS (argmax), position 0 when there is none",
            "clamped.*: the same batch with log_logit_scale set to 5.0, which the original clamps to log(100) "
            "in place before use",
            "full_size_param_count counts every nn.Parameter; all of CLIP's are trainable",
        ],
    }
    return common.write_fixture(out, "clip", weights=model.state_dict(),
                                inputs={"image": image, "text": text}, outputs=outputs, meta=meta)
