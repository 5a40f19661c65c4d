"""Parity fixture of the original supervised ViT (configs/supervised_imagenet/001_vit_large_imagenet.yaml).

Built at a tiny size from the YAML itself (so every default that lives in code comes with it), every
parameter randomised, run on random images; its soft-target cross-entropy is the YAML's criterion.
"""

from __future__ import annotations

from pathlib import Path

from tools.parity import common

YAML = "supervised_imagenet/001_vit_large_imagenet.yaml"
TINY = dict(embed_dim=32, num_blocks=2, num_heads=2, img_size=32, num_patches=16, patch_size=8)
TINY_CLASSES = 10
# Init statistics are measured at a size where std estimates are meaningful.
STATS = dict(embed_dim=256, num_blocks=2, num_heads=2, img_size=64, num_patches=16, patch_size=16)
STATS_CLASSES = 1000
SEED = 0


def _config(reference: Path, constants: dict, classes: int):
    from omegaconf import OmegaConf

    cfg = common.load_config(reference, YAML, constants)
    OmegaConf.update(cfg, "data.nb_classes", classes)
    return cfg


def randomise(model) -> None:
    """Every parameter away from its init: norm gains around 1, everything else N(0, 0.2)."""
    import torch

    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn_like(p) * 0.2
            p.copy_(1.0 + noise if "norm" in name and name.endswith("weight") else noise)


def make(reference: Path, out: Path, commit: str) -> Path:
    import torch

    common.seeded(SEED)
    stats_model = common.instantiate(_config(reference, STATS, STATS_CLASSES).model.meta_model)
    stats = common.init_statistics(stats_model)

    common.seeded(SEED + 1)
    cfg = _config(reference, TINY, TINY_CLASSES)
    model = common.instantiate(cfg.model.meta_model).eval()
    randomise(model)
    criterion = common.instantiate(cfg.loss)

    g = torch.Generator().manual_seed(SEED + 2)
    image = torch.randn(3, 3, TINY["img_size"], TINY["img_size"], generator=g)
    target = torch.softmax(2.0 * torch.randn(3, TINY_CLASSES, generator=g), dim=-1)  # mixup-style soft labels
    with torch.no_grad():
        data = model({"image": image.clone(), "target": target})
        loss, _ = criterion(data)

    outputs = {
        "tokens": data["image_tokens"],  # after the post-trunk norm
        "embed": data["image_embed"],
        "logits": data["image_logits"],
        "loss": loss.reshape(()),
    }
    meta = {
        "system": "vit",
        "reference_commit": commit,
        "yaml": YAML,
        "constants": TINY,
        "nb_classes": TINY_CLASSES,
        "full_size_param_count": common.full_size_param_count(reference, YAML),
        "init_statistics": stats,
        "init_statistics_constants": {**STATS, "nb_classes": STATS_CLASSES, "seed": SEED},
        "notes": [
            "weights: the original's tiny model with every parameter randomised (norm gains 1 + N(0, 0.2), "
            "everything else N(0, 0.2)); outputs computed in eval mode, fp32, CPU",
            "target: soft labels (as timm's Mixup gives), loss = the YAML's LossWrapper(SoftTargetCrossEntropy)",
            "tokens = the trunk's output after post_trunk_norm; embed = ExtractCLS(index 0); logits = "
            "LinearClassifier (LayerNormFP32 eps 1e-5 + linear)",
        ],
    }
    return common.write_fixture(out, "vit", weights=model.state_dict(),
                                inputs={"image": image, "target": target}, outputs=outputs, meta=meta)
