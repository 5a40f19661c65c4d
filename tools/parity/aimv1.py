"""Parity fixture of the original AIMv1-600M (configs/aimv1/001_aim_v1_600M.yaml).

Built at a tiny size from the YAML itself (so every default that lives in code comes with it), every
trainable parameter randomised (the frozen sin-cos tables stay as the original builds them), run on
random images and prefix lengths; the loss is the YAML's RasterPixelLoss.

The YAML's encoder attention is FlexAttention with a FlexAttnPrefixAttentionMaskBuilder, which needs
torch.compile (and in practice a GPU). Here the same mask, `(key < prefix_len) | (query >= key)`, is built
densely by the original's PrefixAttentionMaskBuilder and the attention runs through SDPA
(`use_flex_attention: false`): the same function, on the CPU, in fp32.
"""

from __future__ import annotations

from pathlib import Path

from tools.parity import common
from tools.parity.aimv2 import prefix_mask, randomise

YAML = "aimv1/001_aim_v1_600M.yaml"
TINY = dict(vision_embed_dim=16, vision_num_blocks=2, vision_num_heads=2, head_embed_dim=32, head_num_blocks=2,
            img_size=16, patch_size=4, num_patches=16, prefix_range=[1, 15])
# Init statistics are measured at a size where std estimates are meaningful.
STATS = dict(vision_embed_dim=128, vision_num_blocks=2, vision_num_heads=2, head_embed_dim=128, head_num_blocks=2,
             img_size=32, patch_size=8, num_patches=16, prefix_range=[1, 15])
FROZEN = ("pos_embed",)  # the sin-cos tables (parameters with requires_grad=False in the original)
BATCH = 3
SEED = 0


def config(reference: Path, constants: dict, dense_mask: bool = True):
    """The YAML at the given size; the pixel head's hard-coded 588 (= 14 * 14 * 3) and the loss's image
    size (code default 224) follow the constants; with `dense_mask`, the CPU-able prefix mask."""
    from omegaconf import OmegaConf

    cfg = common.load_config(reference, YAML, constants)
    OmegaConf.update(cfg, "model.meta_model.head.output_dim", constants["patch_size"] ** 2 * 3)
    OmegaConf.update(cfg, "loss.image_size", constants["img_size"], force_add=True)
    if dense_mask:
        OmegaConf.update(cfg, "model.meta_model.trunk.attn_target.use_flex_attention", False)
        OmegaConf.update(cfg, "model.meta_model.preprocessor.blocks.1", {
            "_target_": "l3m.model.preprocessors.mask_builders.PrefixAttentionMaskBuilder",
            "read_key": "encoder_prefix_mask", "write_key": "encoder_prefix_attn_mask",
            "seq_len": constants["num_patches"], "cls_token": False,
        }, merge=False)
    return cfg


def make(reference: Path, out: Path, commit: str) -> Path:
    import torch

    common.seeded(SEED)
    stats_model = common.instantiate(config(reference, STATS).model.meta_model)
    stats = common.init_statistics(stats_model)

    common.seeded(SEED + 1)
    cfg = config(reference, TINY)
    model = common.instantiate(cfg.model.meta_model).eval()
    randomise(model, keep=FROZEN)
    criterion = common.instantiate(cfg.loss)

    g = torch.Generator().manual_seed(SEED + 2)
    n = TINY["num_patches"]
    image = torch.randn(BATCH, 3, TINY["img_size"], TINY["img_size"], generator=g)
    prefix_len = torch.tensor([1, 6, 15])  # the range's ends and a middle value
    data = {"image": image.clone(), "encoder_prefix_mask": prefix_mask(prefix_len, n)}
    with torch.no_grad():
        data = model.preprocessor(data)
        data = model.trunk(data)
        features = data["image_tokens"].clone()
        data = model.postprocessor(data)
        data = model.head(data)
        loss, _ = criterion(data)

    full = common.load_config(reference, YAML)
    with torch.device("meta"):
        full_model = common.instantiate(full.model.meta_model)
    frozen = sum(p.numel() for p in full_model.parameters() if not p.requires_grad)
    outputs = {
        "features": features,  # the encoder's output, after its post-trunk norm
        "pixels": data["image_preds"],  # [B, N, p*p*3]
        "loss": loss.reshape(()),
    }
    meta = {
        "system": "aimv1",
        "reference_commit": commit,
        "yaml": YAML,
        "constants": TINY,
        "pixel_head_out_features": TINY["patch_size"] ** 2 * 3,
        "full_size_param_count": common.param_count(full_model),
        "full_size_frozen_param_count": frozen,
        "init_statistics": stats,
        "init_statistics_constants": {**STATS, "seed": SEED},
        "notes": [
            "weights: the original's tiny model with every trainable parameter randomised (norm gains "
            "1 + N(0, 0.2), everything else N(0, 0.2)); the frozen sin-cos tables (pos_embed, "
            "decoder_pos_embed: parameters with requires_grad=False) as built; eval mode, fp32, CPU",
            "full_size_param_count counts those frozen tables too (as the original's parameters()); "
            "full_size_frozen_param_count is their size",
            "attention: the YAML's FlexAttention prefix mask is built densely by PrefixAttentionMaskBuilder "
            "and run through SDPA (use_flex_attention false): the same mask, (key < prefix_len) | (query >= key)",
            "inputs: prefix_len per sample; the original reads encoder_prefix_mask = arange(N) >= prefix_len",
            "the decoder's output_dim (588 = 14*14*3 in the YAML) is set to patch_size**2 * 3, and "
            "RasterPixelLoss's image_size (not in the YAML; code default 224) to img_size",
        ],
    }
    inputs = {"image": image, "prefix_len": prefix_len, "encoder_prefix_mask": prefix_mask(prefix_len, n)}
    return common.write_fixture(out, "aimv1", weights=model.state_dict(), inputs=inputs, outputs=outputs, meta=meta)
