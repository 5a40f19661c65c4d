"""Parity fixture of the original AIMv2 (configs/aimv2/001_aimv2_hfdata.yaml).

Built at a tiny size from the YAML itself (so every default that lives in code comes with it), every
parameter randomised, run on random images, captions and prefix masks; the losses are the YAML's
MultiLossWrapper (RasterPixelLoss x 0.4 + LLMCrossEntropyLoss x 1.0, ignoring the pad id).
"""

from __future__ import annotations

from pathlib import Path

from tools.parity import common

YAML = "aimv2/001_aimv2_hfdata.yaml"
# dim 16 keeps SwiGLU's hidden at the original's 256 (int(2 * 4 * 16 / 3) rounded up to 256).
TINY = dict(vision_embed_dim=16, vision_num_blocks=2, vision_num_heads=2, text_embed_dim=16, text_num_blocks=2,
            text_num_heads=2, context_length=8, text_vocab_size=50, img_size=16, patch_size=4, num_patches=16,
            prefix_range=[1, 15])
# Init statistics are measured at a size where std estimates are meaningful.
STATS = dict(vision_embed_dim=128, vision_num_blocks=2, vision_num_heads=2, text_embed_dim=128, text_num_blocks=2,
             text_num_heads=2, context_length=16, text_vocab_size=1000, img_size=32, patch_size=8, num_patches=16,
             prefix_range=[1, 15])
PAD = 1  # constants.pad_token: the SigLIP tokenizer pads with </s> = 1, which the text loss ignores
BATCH = 3
SEED = 0


def config(reference: Path, constants: dict):
    """The YAML at the given size; the pixel head's hard-coded 588 (= 14 * 14 * 3) follows the patch."""
    from omegaconf import OmegaConf

    cfg = common.load_config(reference, YAML, constants)
    OmegaConf.update(cfg, "model.meta_model.models.text_decoder.head.blocks.1.out_features",
                     constants["patch_size"] ** 2 * 3)
    # RasterPixelLoss's image_size is not in the YAML: its code default, 224, is the full size.
    OmegaConf.update(cfg, "loss.criteria.0.image_size", constants["img_size"], force_add=True)
    return cfg


def randomise(model, keep: tuple[str, ...] = ()) -> None:
    """Every parameter away from its init: norm gains around 1, everything else N(0, 0.2); `keep` names
    (frozen tables) stay as built."""
    import torch

    with torch.no_grad():
        for name, p in model.named_parameters():
            if any(k in name for k in keep):
                continue
            noise = torch.randn_like(p) * 0.2
            p.copy_(1.0 + noise if "norm" in name and name.endswith("weight") else noise)


def prefix_mask(prefix_len, num_patches: int):
    """RandomRasterMasking's mask for given prefix lengths: False on the prefix, True on the patches to predict."""
    import torch

    return torch.arange(num_patches)[None, :] >= prefix_len[:, None]


def make(reference: Path, out: Path, commit: str) -> Path:
    import torch

    common.seeded(SEED)
    stats_model = common.instantiate(config(reference, STATS).model.meta_model)
    stats = common.init_statistics(stats_model)

    common.seeded(SEED + 1)
    cfg = config(reference, TINY)
    model = common.instantiate(cfg.model.meta_model).eval()
    randomise(model)
    criterion = common.instantiate(cfg.loss)

    g = torch.Generator().manual_seed(SEED + 2)
    n, ctx, vocab = TINY["num_patches"], TINY["context_length"], TINY["text_vocab_size"]
    image = torch.randn(BATCH, 3, TINY["img_size"], TINY["img_size"], generator=g)
    prefix_len = torch.tensor([1, 7, 15])  # the range's ends and a middle value
    text = torch.randint(2, vocab, (BATCH, ctx), generator=g)
    text[0, 5:] = PAD  # padded captions (ignored by the text loss); the last one is full length
    text[1, 3:] = PAD
    data = {"image": image.clone(), "text": text.clone(), "encoder_prefix_mask": prefix_mask(prefix_len, n)}
    with torch.no_grad():
        data = model(data, model_name="image_encoder")
        features = data["image_tokens"].clone()
        data = model(data, model_name="text_decoder")
        total, _ = criterion(data)
        pixel, _ = criterion.criteria[0](data)
        text_loss, _ = criterion.criteria[1](data)

    outputs = {
        "features": features,  # the image encoder's output, after its post-trunk norm
        "text_logits": data["text_tokens"],  # [B, 1 + ctx, V]: cls + every caption position
        "pixels": data["image_preds"],  # [B, N, p*p*3]
        "loss_pixel": pixel.reshape(()),
        "loss_text": text_loss.reshape(()),
        "loss": total.reshape(()),
    }
    meta = {
        "system": "aimv2",
        "reference_commit": commit,
        "yaml": YAML,
        "constants": TINY,
        "pixel_head_out_features": TINY["patch_size"] ** 2 * 3,
        "criteria_weights": list(cfg.constants.criteria_weights),
        "pad_token": PAD,
        "full_size_param_count": common.full_size_param_count(reference, YAML),
        "init_statistics": stats,
        "init_statistics_constants": {**STATS, "seed": SEED},
        "notes": [
            "weights: the original's tiny model with every parameter randomised (norm gains 1 + N(0, 0.2), "
            "everything else N(0, 0.2)); outputs computed in eval mode, fp32, CPU",
            "inputs: prefix_len per sample; the original reads encoder_prefix_mask = arange(N) >= prefix_len "
            "(RandomRasterMasking's mask: False on the prefix), recorded too",
            "text: token ids with pad id 1 (constants.pad_token) at the end of two captions; the original's "
            "TextPreprocessor prepends a cls token, so text_logits has 1 + context_length positions and "
            "LLMCrossEntropyLoss(shift_target=false) drops the last one",
            "the pixel head's out_features (588 = 14*14*3 in the YAML) is set to patch_size**2 * 3, and "
            "RasterPixelLoss's image_size (not in the YAML; code default 224) to img_size",
            "loss = 0.4 * loss_pixel + 1.0 * loss_text (MultiLossWrapper, constants.criteria_weights)",
        ],
    }
    inputs = {"image": image, "text": text, "prefix_len": prefix_len,
              "encoder_prefix_mask": prefix_mask(prefix_len, n)}
    return common.write_fixture(out, "aimv2", weights=model.state_dict(), inputs=inputs, outputs=outputs, meta=meta)
