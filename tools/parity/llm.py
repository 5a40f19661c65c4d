"""Parity fixture of the original decoder-only LLM (configs/text/001_llm_hfdata.yaml).

Built at a tiny size from the YAML itself (so every default that lives in code comes with it), every
trainable parameter randomised (the frozen sin-cos table is kept as built, so the fixture also pins it), run
on hand-written token ids; the loss is the YAML's LLMCrossEntropyLoss. The original's TextPreprocessor drops
the last token of `text` and the loss scores position i against `text[i + 1]`: l3m's data gives the same
pair as `tokens = text[:, :-1]`, `targets = text[:, 1:]`.
"""

from __future__ import annotations

from pathlib import Path

from tools.parity import common

YAML = "text/001_llm_hfdata.yaml"
# The YAML hard-codes num_heads = 16 and num_blocks = 24 outside `constants`; these are set per size below.
# dim 16 keeps SwiGLU's hidden at the original's 256 (int(2 * 4 * 16 / 3) rounded up to 256).
TINY = dict(embed_dim=16, vocab_size=64, context_length=12)
TINY_MODEL = dict(num_blocks=2, num_heads=2)
# Init statistics are measured at a size where std estimates are meaningful (depth 4: the depth-scaled
# init's 1 / (1 + depth) is visible).
STATS = dict(embed_dim=128, vocab_size=1000, context_length=32)
STATS_MODEL = dict(num_blocks=4, num_heads=2)
SEED = 0
# Three documents of context_length ids: ordinary text, an EOS-padded one (the SigLIP tokenizer pads with
# </s> = 1, and the original trains on the padding), and one that uses the vocabulary's extremes.
TEXT = [
    [5, 17, 23, 42, 8, 8, 61, 3, 30, 12, 2, 1],
    [7, 9, 11, 1, 1, 1, 1, 1, 1, 1, 1, 1],
    [0, 63, 62, 33, 4, 27, 27, 50, 14, 39, 45, 6],
]


def config(reference: Path, constants: dict, model: dict):
    from omegaconf import OmegaConf

    cfg = common.load_config(reference, YAML, constants)
    OmegaConf.update(cfg, "model.meta_model.trunk.num_blocks", model["num_blocks"])
    OmegaConf.update(cfg, "model.meta_model.trunk.attn_target.num_heads", model["num_heads"])
    return cfg


def randomise(model) -> None:
    """Every trainable parameter away from its init: norm gains around 1, everything else N(0, 0.2)."""
    import torch

    with torch.no_grad():
        for name, p in model.named_parameters():
            if not p.requires_grad:  # the frozen sin-cos table
                continue
            noise = torch.randn_like(p) * 0.2
            p.copy_(1.0 + noise if "norm" in name and name.endswith("weight") else noise)


def make(reference: Path, out: Path, commit: str) -> Path:
    import torch

    common.seeded(SEED)
    stats = common.init_statistics(common.instantiate(config(reference, STATS, STATS_MODEL).model.meta_model))

    common.seeded(SEED + 1)
    cfg = config(reference, TINY, TINY_MODEL)
    model = common.instantiate(cfg.model.meta_model).eval()
    randomise(model)
    criterion = common.instantiate(cfg.loss)

    text = torch.tensor(TEXT, dtype=torch.long)
    with torch.no_grad():
        data = model({"text": text.clone()})
        loss, metrics = criterion(data)
    # The z-loss variant (LLMCrossEntropyLoss(z_loss=1e-4)) on the same logits: the code's formula.
    zcfg = cfg.loss.copy()
    zcfg.z_loss = 1e-4
    with torch.no_grad():
        zloss, _ = common.instantiate(zcfg)(data)

    full = common.full_size_param_count(reference, YAML)
    with torch.device("meta"):
        full_model = common.instantiate(common.load_config(reference, YAML).model.meta_model)
    trainable = sum(p.numel() for p in full_model.parameters() if p.requires_grad)
    outputs = {
        "logits": data["text_tokens"],  # [B, context_length - 1, vocab]
        "trunk": data["text_tokens_trunk"][-1],  # last block's output, before the post-trunk norm
        "loss": loss.reshape(()),
        "z_loss_1e-4.loss": zloss.reshape(()),
    }
    meta = {
        "system": "llm",
        "reference_commit": commit,
        "yaml": YAML,
        "constants": TINY,
        "model_overrides": TINY_MODEL,
        "full_size_param_count": full,
        "full_size_trainable_param_count": trainable,
        "full_size_frozen_param_count": full - trainable,
        "init_statistics": stats,
        "init_statistics_constants": {**STATS, **STATS_MODEL, "seed": SEED},
        "perplexity": metrics["perplexity"],
        "notes": [
            "weights: the original's tiny model with every trainable parameter randomised (norm gains "
            "1 + N(0, 0.2), everything else N(0, 0.2)); preprocessor.pos_embed is the frozen table as built",
            "inputs.text is the original's model input; it drops the last token, so logits cover positions "
            "0 .. L-2 and the loss (mean cross-entropy, ignore_index -100, no z-loss) scores them against "
            "text[:, 1:]",
            "z_loss_1e-4.loss: LLMCrossEntropyLoss(z_loss=1e-4) on the same logits (CE + 1e-4 * mean lse^2)",
            "full_size_param_count counts every nn.Parameter, including the frozen sin-cos table "
            "(requires_grad=False, a non-persistent buffer in l3m); the trainable count excludes it",
            "model_overrides: trunk.num_blocks and attn_target.num_heads, which the YAML hard-codes",
        ],
    }
    return common.write_fixture(out, "llm", weights=model.state_dict(), inputs={"text": text},
                                outputs=outputs, meta=meta)
