"""Parity fixture of the original AIMv2-MoE (configs/aimv2/002_aimv2_moe_hfdata.yaml).

The original's MoE layer (`l3m.model.layers.moe.MoE`) wraps megablocks' dMoE, which needs CUDA kernels
and cannot be installed here. Everything of ml-l3m runs as it is (the MoE wrapper with its hidden-size
rounding and its init, the Transformer/Block that builds it, MoEBalancingLoss and
`l3m.helpers.moe.utils.get_load_balancing_loss_given_moe`); only the `megablocks` package they import is
replaced by `_megablocks`, a small dense stand-in written from megablocks' source (github.com/databricks/
megablocks, commit 78eea65, megablocks/layers/{arguments,router,moe,dmoe,glu}.py) that computes what
dMoE computes for this configuration:
- router: `LearnedRouter`, an nn.Linear(dim, E, bias=False) (init N(0, 0.02); the Transformer re-initialises
  every nn.Linear, the router's included, with xavier-uniform); in training the input is multiplied by
  U(1 - eps, 1 + eps) jitter when `moe_jitter_eps` is not None (the YAML's 0.0 gives exactly 1); scores =
  softmax(logits); top-k by `max` (k = 1) or `topk`; weights divided by their p-norm only when
  `moe_normalize_expert_weights` is truthy (the YAML's 0.0: raw probabilities);
- experts: dropless (dMoE ignores the capacity factor), grouped GLU: per expert e, `w2_e^T-applied`
  `(act(x w1_e^T) * (x v1_e^T)) w2_e` with w1, v1, w2 stored `[E * ffn, dim]` (w2 not transposed),
  `act = args.activation_fn` (the Block passes its own act_layer, nn.GELU, over the YAML's nn.SiLU);
  the outputs are scattered back times the routing weight and summed over the k choices; no bias;
- load balancing: in training each layer saves (tokens_per_expert, scores); `batched_load_balancing_loss`
  returns `moe_loss_weight * E / (num_layers * tokens * k) * sum_layers dot(tokens_per_expert, mean(scores))`,
  i.e. the mean over layers of the per-layer Switch loss, times the weight.
"""

from __future__ import annotations

import importlib.machinery
import sys
import types
from pathlib import Path

from tools.parity import common

YAML = "aimv2/002_aimv2_moe_hfdata.yaml"
MOE_PATH = "model.meta_model.models.image_encoder.trunk.ffn_target"
# dim 16 keeps the decoder's SwiGLU hidden at the original's 256; the experts' `multiple_of` (256 in the YAML)
# is lowered to 16 at the tiny size only, so that 4 experts stay small: hidden int(2 * 64 / 3) -> 48.
TINY = dict(vision_embed_dim=16, vision_num_blocks=2, vision_num_heads=2, text_embed_dim=16, text_num_blocks=2,
            text_num_heads=2, context_length=8, text_vocab_size=50, img_size=16, patch_size=4, num_patches=16,
            prefix_range=[1, 15])
TINY_MULTIPLE_OF = 16
# Init statistics are measured at a size where std estimates are meaningful (experts' multiple_of as the YAML).
STATS = dict(vision_embed_dim=128, vision_num_blocks=2, vision_num_heads=2, text_embed_dim=128, text_num_blocks=2,
             text_num_heads=2, context_length=16, text_vocab_size=1000, img_size=32, patch_size=8, num_patches=16,
             prefix_range=[1, 15])
PAD = 1
BATCH = 3
SEED = 0


# ----------------------------------------------------------------------------------------------------------
# The stand-in for megablocks (see the module docstring).
# ----------------------------------------------------------------------------------------------------------
def _megablocks_modules() -> dict[str, types.ModuleType]:
    import dataclasses
    from functools import partial
    from typing import Any

    import torch

    @dataclasses.dataclass
    class Arguments:
        """megablocks.layers.arguments.Arguments: the fields the original's wrapper sets, megablocks' defaults."""

        hidden_size: int = 1024
        ffn_hidden_size: int = 4096
        num_layers: int = 1
        bias: bool = True
        return_bias: bool = True
        activation_fn: Any = None
        moe_num_experts: int = 1
        moe_top_k: int = 1
        moe_capacity_factor: int = 1
        moe_normalize_expert_weights: Any = None
        moe_loss_weight: float = 0.1
        moe_jitter_eps: Any = None
        moe_lbl_in_fp32: bool = False
        moe_expert_model_parallelism: bool = False
        expert_parallel_group: Any = None
        pipeline_model_parallel_size: int = 1
        num_layers_per_virtual_pipeline_stage: Any = None
        memory_optimized_mlp: bool = False
        mlp_type: str = "mlp"
        mlp_impl: str = "sparse"
        fp16: bool = True
        bf16: bool = False
        device: Any = None
        init_method: Any = partial(torch.nn.init.normal_, mean=0.0, std=0.02)
        output_layer_init_method: Any = None
        uniform_expert_assignment: bool = False
        shared_expert: bool = False
        moe_zloss_weight: float = 0

        def __post_init__(self):
            if self.output_layer_init_method is None:
                self.output_layer_init_method = self.init_method

    _LBL: list = []

    class LearnedRouter(torch.nn.Module):
        def __init__(self, args: Arguments):
            super().__init__()
            self.args = args
            self.layer = torch.nn.Linear(args.hidden_size, args.moe_num_experts, bias=False)
            args.init_method(self.layer.weight)

        def forward(self, x):
            if self.training and self.args.moe_jitter_eps is not None:
                low, high = 1.0 - self.args.moe_jitter_eps, 1.0 + self.args.moe_jitter_eps
                x = x * (low + torch.rand(x.size(), dtype=x.dtype) * (high - low))
            scores = self.layer(x.view(-1, x.shape[-1])).softmax(dim=-1)
            if self.args.moe_top_k == 1:
                weights, indices = scores.max(dim=-1, keepdim=True)
            else:
                weights, indices = torch.topk(scores, self.args.moe_top_k, dim=-1)
            if self.args.moe_normalize_expert_weights:
                weights = weights / torch.norm(weights, p=self.args.moe_normalize_expert_weights, dim=-1, keepdim=True)
            return scores, weights, indices

    class GroupedGLU(torch.nn.Module):
        """Expert weights as megablocks stores them: `[E * ffn, dim]` each (w2 not transposed)."""

        def __init__(self, args: Arguments):
            super().__init__()
            self.args = args
            rows = args.moe_num_experts * args.ffn_hidden_size
            self.w1 = torch.nn.Parameter(torch.empty(rows, args.hidden_size))
            self.v1 = torch.nn.Parameter(torch.empty(rows, args.hidden_size))
            self.w2 = torch.nn.Parameter(torch.empty(rows, args.hidden_size))
            with torch.no_grad():
                args.init_method(self.w1)
                args.init_method(self.v1)
                args.output_layer_init_method(self.w2)

        def expert(self, e: int, x):
            shape = (self.args.moe_num_experts, self.args.ffn_hidden_size, self.args.hidden_size)
            w1, v1, w2 = self.w1.view(shape)[e], self.v1.view(shape)[e], self.w2.view(shape)[e]
            return (self.args.activation_fn(x @ w1.t()) * (x @ v1.t())) @ w2

    class ParallelDroplessMLP(torch.nn.Module):
        def __init__(self, args: Arguments):
            super().__init__()
            assert args.mlp_type == "glu" and not args.bias, "the stand-in covers the YAML's GLU experts, no bias"
            self.args = args
            self.mlp = GroupedGLU(args)

        def forward(self, x, scores, expert_weights, top_experts):
            shape = x.shape
            flat = x.reshape(-1, shape[-1])
            out = torch.zeros_like(flat)
            for e in range(self.args.moe_num_experts):  # dropless: every (token, choice) routed to e
                token, choice = (top_experts == e).nonzero(as_tuple=True)
                if token.numel():
                    out.index_add_(0, token, self.mlp.expert(e, flat[token]) * expert_weights[token, choice, None])
            tokens_per_expert = torch.bincount(top_experts.flatten(), minlength=self.args.moe_num_experts)
            if self.training and self.args.moe_loss_weight > 0:
                _LBL.append((tokens_per_expert, scores))
            return out.view(shape)

    class dMoE(torch.nn.Module):
        def __init__(self, args: Arguments):
            super().__init__()
            self.router = LearnedRouter(args)
            self.experts = ParallelDroplessMLP(args)

        def forward(self, x):
            scores, weights, indices = self.router(x)
            return self.experts(x, scores, weights, indices)

    def clear_load_balancing_loss():
        _LBL.clear()

    def batched_load_balancing_loss(args: Arguments):
        if args.moe_loss_weight == 0:
            return 0.0
        tokens_per_expert, expert_scores = zip(*_LBL)  # ValueError "not enough values to unpack" when empty
        layers = args.num_layers // args.pipeline_model_parallel_size
        if len(tokens_per_expert) != layers:
            raise ValueError(f"Expected {layers} token_per_experts but found {len(tokens_per_expert)}.")
        tokens = expert_scores[0].shape[0]
        scores = torch.cat(expert_scores, dim=1)
        scores = scores.float() if args.moe_lbl_in_fp32 else scores
        scores = scores.mean(dim=0) if tokens != 0 else scores.sum(dim=0)
        counts = torch.cat(tokens_per_expert).to(scores.dtype)
        scale = args.moe_num_experts * args.moe_loss_weight / (args.num_layers * tokens * args.moe_top_k)
        return scale * torch.dot(counts, scores)

    def module(name: str, **attrs) -> types.ModuleType:
        m = types.ModuleType(name)
        m.__spec__ = importlib.machinery.ModuleSpec(name, None)  # importlib.util.find_spec("megablocks") finds it
        m.__dict__.update(attrs)
        return m

    return {
        "megablocks": module("megablocks", STAND_IN=True),
        "megablocks.layers": module("megablocks.layers"),
        "megablocks.layers.arguments": module("megablocks.layers.arguments", Arguments=Arguments),
        "megablocks.layers.dmoe": module("megablocks.layers.dmoe", dMoE=dMoE),
        "megablocks.layers.moe": module("megablocks.layers.moe", MoE=None,
                                        batched_load_balancing_loss=batched_load_balancing_loss,
                                        clear_load_balancing_loss=clear_load_balancing_loss),
    }


def install_stand_in() -> None:
    """Put the stand-in where the original imports megablocks from (also if its MoE module is already imported)."""
    modules = _megablocks_modules()
    sys.modules.update(modules)
    import l3m.model.layers.moe as original_moe  # the reference's (put on the path by the fixture maker)

    original_moe.megablocks_arguments = modules["megablocks.layers.arguments"].Arguments
    original_moe.megablocks_dmoe = modules["megablocks.layers.dmoe"].dMoE
    original_moe.MoE.MOE_CLASS = {"moe": None, "dmoe": modules["megablocks.layers.dmoe"].dMoE}


# ----------------------------------------------------------------------------------------------------------
def config(reference: Path, constants: dict, multiple_of: int | None = None):
    """The YAML at the given size; the pixel head's hard-coded 588 (= 14 * 14 * 3) follows the patch."""
    from omegaconf import OmegaConf

    cfg = common.load_config(reference, YAML, constants)
    OmegaConf.update(cfg, "model.meta_model.models.text_decoder.head.blocks.1.out_features",
                     constants["patch_size"] ** 2 * 3)
    OmegaConf.update(cfg, "loss.criteria.0.image_size", constants["img_size"], force_add=True)
    if multiple_of is not None:
        OmegaConf.update(cfg, f"{MOE_PATH}.multiple_of", multiple_of)
    return cfg


def randomise(model) -> None:
    """Every parameter away from its init: norm gains around 1, everything else N(0, 0.2); the router N(0, 1)
    so that tokens spread over the experts."""
    import torch

    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn_like(p) * (1.0 if "router" in name else 0.2)
            p.copy_(1.0 + noise if "norm" in name and name.endswith("weight") else noise)


def prefix_mask(prefix_len, num_patches: int):
    import torch

    return torch.arange(num_patches)[None, :] >= prefix_len[:, None]


def make(reference: Path, out: Path, commit: str) -> Path:
    import torch

    install_stand_in()
    common.seeded(SEED)
    stats_model = common.instantiate(config(reference, STATS).model.meta_model)
    stats = common.init_statistics(stats_model)

    common.seeded(SEED + 1)
    cfg = config(reference, TINY, TINY_MULTIPLE_OF)
    model = common.instantiate(cfg.model.meta_model)
    randomise(model)
    criterion = common.instantiate(cfg.loss)

    g = torch.Generator().manual_seed(SEED + 2)
    n, ctx, vocab = TINY["num_patches"], TINY["context_length"], TINY["text_vocab_size"]
    image = torch.randn(BATCH, 3, TINY["img_size"], TINY["img_size"], generator=g)
    prefix_len = torch.tensor([1, 7, 15])
    text = torch.randint(2, vocab, (BATCH, ctx), generator=g)
    text[0, 5:] = PAD
    text[1, 3:] = PAD
    # Training mode: the balancing loss is recorded only while training (nothing else here depends on the
    # mode: no dropout, drop-path 0, router jitter eps 0.0 multiplies by exactly 1).
    model.train()
    data = {"image": image.clone(), "text": text.clone(), "encoder_prefix_mask": prefix_mask(prefix_len, n)}
    with torch.no_grad():
        data = model(data, model_name="image_encoder")
        features = data["image_tokens"].clone()
        data = model(data, model_name="text_decoder")
        # The criteria one by one (the balancing term clears megablocks' record once read), then the total.
        pixel, _ = criterion.criteria[0](data, model=model)
        text_loss, _ = criterion.criteria[1](data, model=model)
        balance, _ = criterion.criteria[2](data, model=model)
        data = model(model({k: v.clone() for k, v in
                            {"image": image, "text": text, "encoder_prefix_mask": prefix_mask(prefix_len, n)}.items()},
                           model_name="image_encoder"), model_name="text_decoder")
        total, _ = criterion(data, model=model)
    routing = _routing(model, image, prefix_len, n)
    top2 = _top2(reference, model.state_dict(), image, prefix_len, n)

    hidden = model.models["image_encoder"].trunk.blocks[0].mlp.megablocks_arguments.ffn_hidden_size
    outputs = {
        "features": features,
        "text_logits": data["text_tokens"],
        "pixels": data["image_preds"],
        "loss_pixel": pixel.reshape(()),
        "loss_text": text_loss.reshape(()),
        "loss_balance": balance.reshape(()),
        "loss": total.reshape(()),
        **routing,
        **top2,
    }
    meta = {
        "system": "aimv2_moe",
        "reference_commit": commit,
        "yaml": YAML,
        "constants": TINY,
        "experts_multiple_of": TINY_MULTIPLE_OF,
        "expert_hidden": hidden,
        "num_experts": int(cfg.constants.num_experts),
        "top_k": int(cfg.constants.top_k),
        "load_balancing_loss_weight": float(cfg.constants.load_balancing_loss_weight),
        "pixel_head_out_features": TINY["patch_size"] ** 2 * 3,
        "criteria_weights": list(cfg.constants.criteria_weights),
        "pad_token": PAD,
        "full_size_param_count": common.full_size_param_count(reference, YAML),
        "init_statistics": stats,
        "init_statistics_constants": {**STATS, "seed": SEED,
                                      "expert_hidden": int(2 * 4 * STATS["vision_embed_dim"] / 3 + 255) // 256 * 256},
        "original_code": [
            "everything in ml-l3m at reference_commit, run unmodified from the YAML: the AIMv2 encoder/decoder, "
            "l3m.model.layers.moe.MoE (hidden int(2*4*dim/3) rounded up to multiple_of, expert init N(0, 0.02)), "
            "the Transformer/Block that builds it (passing act_layer=nn.GELU and use_bias=False, and "
            "re-initialising every nn.Linear incl. the router with xavier-uniform), MultiLossWrapper, "
            "RasterPixelLoss, LLMCrossEntropyLoss, MoEBalancingLoss and "
            "l3m.helpers.moe.utils.get_load_balancing_loss_given_moe",
        ],
        "stand_in": [
            "the `megablocks` package (not installable here: CUDA kernels) is replaced by tools/parity/aimv2_moe.py's "
            "_megablocks_modules(): Arguments, LearnedRouter, dMoE = router + dropless grouped GLU experts, "
            "batched_load_balancing_loss and clear_load_balancing_loss, written from megablocks commit 78eea65 "
            "(megablocks/layers/{arguments,router,moe,dmoe,glu}.py) as a dense per-expert loop; parameter names and "
            "layouts are megablocks' (moe.router.layer.weight [E, dim]; moe.experts.mlp.{w1,v1,w2} [E*ffn, dim], "
            "w2 applied untransposed)",
        ],
        "notes": [
            "weights: the original's tiny model with every parameter randomised (norm gains 1 + N(0, 0.2), routers "
            "N(0, 1) so that tokens spread over the experts, everything else N(0, 0.2)); outputs computed in "
            "training mode (the balancing loss is only recorded while training; nothing else depends on the mode), "
            "no grad, fp32, CPU",
            "the experts apply GELU (nn.GELU, exact), although the YAML names nn.SiLU: the Block passes its own "
            "act_layer (the Transformer's default nn.GELU) over the partial's",
            "experts' multiple_of lowered from 256 to 16 at the tiny size (hidden 48 instead of 256) to keep the "
            "fixture small; the init statistics use the YAML's 256",
            "loss = 0.4 * loss_pixel + 1.0 * loss_text + 1 * loss_balance (constants.criteria_weights); "
            "loss_balance = 0.01 * mean over the MoE layers of E * sum_e f_e * P_e",
            "routing: per layer, the router's softmax scores [B*N, E] and chosen expert [B*N] (router_scores_<i>, "
            "router_choice_<i>), recorded by hooks",
            "top2_features / top2_loss_balance: the same weights and images through the encoder built with "
            "top_k = 2 (the YAML's commented alternative): megablocks weights the two experts by their raw "
            "probabilities (normalize_expert_weights 0) and divides the balancing loss by k",
            "inputs: as the AIMv2 fixture (prefix_len and the mask arange(N) >= prefix_len; text with pad id 1)",
        ],
    }
    inputs = {"image": image, "text": text, "prefix_len": prefix_len, "encoder_prefix_mask": prefix_mask(prefix_len, n)}
    return common.write_fixture(out, "aimv2_moe", weights=model.state_dict(), inputs=inputs, outputs=outputs,
                                meta=meta)


def _top2(reference: Path, state: dict, image, prefix_len, n: int) -> dict:
    """The encoder with top_k = 2 (same parameters): its features and balancing loss."""
    import torch
    from omegaconf import OmegaConf

    cfg = config(reference, TINY, TINY_MULTIPLE_OF)
    OmegaConf.update(cfg, "constants.top_k", 2)
    model = common.instantiate(cfg.model.meta_model)
    model.load_state_dict(state)
    model.train()
    criterion = common.instantiate(cfg.loss)
    with torch.no_grad():
        data = model({"image": image.clone(), "encoder_prefix_mask": prefix_mask(prefix_len, n)},
                     model_name="image_encoder")
        balance, _ = criterion.criteria[2](data, model=model)
    return {"top2_features": data["image_tokens"], "top2_loss_balance": balance.reshape(())}


def _routing(model, image, prefix_len, n: int) -> dict:
    """Each MoE layer's router scores and choices on the fixture's inputs (forward hooks on the routers)."""
    import torch

    got: dict = {}
    hooks = []
    for i, block in enumerate(model.models["image_encoder"].trunk.blocks):
        def hook(_m, _inp, out, i=i):
            scores, _, indices = out
            got[f"router_scores_{i}"] = scores.detach().clone()
            got[f"router_choice_{i}"] = indices[:, 0].detach().clone()
        hooks.append(block.mlp.moe.router.register_forward_hook(hook))
    with torch.no_grad():
        model({"image": image.clone(), "encoder_prefix_mask": prefix_mask(prefix_len, n)}, model_name="image_encoder")
    for h in hooks:
        h.remove()
    sys.modules["megablocks.layers.moe"].clear_load_balancing_loss()
    return got
