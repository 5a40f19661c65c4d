"""The full-size files reproduce the original ml-l3m training recipes, field by field.

Every expected number below is copied from the original YAML (its path in the comment), since
the reference repository is not available here. models/README.md holds the same mapping as tables.
The files are compiled and their model built on the meta device: no data need be present.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from helpers import ROOT
from PIL import Image
from torchvision import transforms as T

import l3m
from l3m.config import build_section
from l3m.data.global_batch import derive_layout
from l3m.data.transforms import image_transform
from l3m.model.build import module_path
from l3m.registry import lookup
from l3m.train.optim import param_groups

IMAGENET = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])  # ...Normalize.mean / .std in every config
# constants.tokenizer: HFTokenizer(google/siglip-base-patch16-224): cleaned and lower-cased text, which
# the SigLIP tokenizer strips of punctuation; padded with its pad token </s> (also its EOS)
SIGLIP_CAPTIONS = {"text_clean": "nopunct", "pad_token": "</s>"}


@dataclass
class Recipe:
    file: str
    steps: int  # experiment.total_iterations
    per_gpu_batch: int  # data.train.dataloader.batch_size (= micro-batch * optim.gradient_accumulation_steps)
    grad_accum: int  # optim.gradient_accumulation_steps
    grad_clip: float  # optim.grad_clip (None: no clipping = 0 here)
    compile: bool  # experiment.torch_compile
    reduce_dtype: str  # experiment.fsdp.reduce_dtype
    mesh: dict[str, int]  # experiment.fsdp.sharding_strategy
    checkpoint_every: int  # experiment.ckpt_save_freq
    optimizer: str  # optim.optimizer._target_
    opt_args: dict[str, Any]  # optim.optimizer.{lr, betas, eps, weight_decay, fused}
    warmup_steps: float  # optim.scheduler.lengths[0] (absolute, or a fraction of total_iterations)
    start_lr: float  # optim.scheduler.schedulers[0].start_value
    end_lr: float  # optim.scheduler.schedulers[1].end_value
    cls_decayed: bool | None  # is the cls token outside optim.wd_exclude? (None: no cls token)
    losses: dict[str, float]  # loss.criteria_weights
    crop: dict[str, Any] | None = None  # the train transform
    extra: dict[str, Any] = field(default_factory=dict)


# The configs give the batch per GPU and leave the GPU count open; the files write the global batch
# for one 8-GPU node (so each GPU's micro-batches are the original's there).
GPUS = 8
NO_SHARD = {"dp_replicate": -1, "dp_shard": 1, "tp": 1, "cp": 1}
FULL_SHARD = {"dp_replicate": 1, "dp_shard": -1, "tp": 1, "cp": 1}
CROP = {"min_scale": 0.4, "interpolation": "bicubic"}  # RandomResizedCrop(scale [0.4, 1.0], interpolation 3)
JITTER = {"color_jitter": [0.4, 0.4, 0.2, 0.1], "color_jitter_prob": 0.8}  # RandomApply(p 0.8, ColorJitter)

RECIPES = [
    Recipe(  # configs/aimv1/001_aim_v1_600M.yaml
        "aimv1.l3m", steps=125_000, per_gpu_batch=256, grad_accum=1, grad_clip=1.0, compile=True,
        reduce_dtype="fp32", mesh=NO_SHARD, checkpoint_every=25_000,
        optimizer="AdamW",  # torch.optim.AdamW
        opt_args={"lr": 1e-3, "betas": [0.9, 0.95], "eps": 1e-8, "weight_decay": 0.05, "fused": True},
        warmup_steps=0.025 * 125_000, start_lr=1e-6, end_lr=0.0, cls_decayed=None,
        losses={"pixel": 1.0}, crop={**CROP, **JITTER},
        extra={"prefix": (1, 255), "activation_checkpointing": "full",  # constants.prefix_range; fsdp AC full
               "eval_every": 25_000,  # experiment.test_frequency
               "eval_resize": 256,  # constants.eval_transform: Resize(256, 3), CenterCrop(224) on ImageNet val
               "eval_prefix": 256},  # constants.eval_generators: force_full_attn (all 256 patches are prefix)
    ),
    Recipe(  # configs/aimv2/001_aimv2_hfdata.yaml
        "aimv2.l3m", steps=1_250_000, per_gpu_batch=128, grad_accum=1, grad_clip=1.0, compile=True,
        reduce_dtype="bf16", mesh=NO_SHARD, checkpoint_every=50_000,
        optimizer="AdamLH",  # l3m.optim.adamw_lh.AdamLH
        opt_args={"lr": 1e-3, "betas": [0.9, 0.95], "eps": 1e-8, "weight_decay": 1e-4},
        warmup_steps=12_500, start_lr=1e-6, end_lr=1e-5, cls_decayed=False,
        losses={"pixel": 0.4, "text": 1.0}, crop=dict(CROP),
        extra={"prefix": (1, 255), "text_len": 77,  # constants.prefix_range, constants.context_length
               "eval_every": 10_000, "eval_same_as_train": True, "eval_prefix": 256,  # data.validation
               "text_encoding": SIGLIP_CAPTIONS},
    ),
    Recipe(  # configs/aimv2/002_aimv2_moe_hfdata.yaml
        "aimv2_moe.l3m", steps=250_000, per_gpu_batch=512, grad_accum=4, grad_clip=1.0, compile=True,
        reduce_dtype="bf16", mesh=NO_SHARD, checkpoint_every=10_000,
        optimizer="AdamLH",
        opt_args={"lr": 2e-3, "betas": [0.9, 0.95], "eps": 1e-8, "weight_decay": 1e-4},
        warmup_steps=12_500, start_lr=1e-6, end_lr=1e-5, cls_decayed=False,
        losses={"pixel": 0.4, "text": 1.0, "balance": 1.0}, crop=dict(CROP),
        extra={"prefix": (1, 255), "text_len": 77,
               "eval_every": 10_000, "eval_same_as_train": True, "eval_prefix": 256,
               "text_encoding": SIGLIP_CAPTIONS},
    ),
    Recipe(  # configs/clip/001_clip_hfdata.yaml
        "clip.l3m", steps=125_000, per_gpu_batch=128, grad_accum=1, grad_clip=0.0, compile=True,
        reduce_dtype="bf16", mesh=NO_SHARD, checkpoint_every=10_000,
        optimizer="AdamW",
        opt_args={"lr": 1e-3, "betas": [0.9, 0.95], "eps": 1e-8, "weight_decay": 0.2, "fused": True},
        warmup_steps=6_250, start_lr=1e-6, end_lr=1e-6, cls_decayed=True,
        losses={"contrastive": 1.0}, crop=dict(CROP),
        extra={"text_len": 77, "eval_every": 10_000, "eval_same_as_train": True,  # data.validation
               # constants.tokenizer: HFTokenizer(openai/clip-vit-base-patch32), cleaned + lower-cased,
               # padded with its pad token <|endoftext|>
               "text_encoding": {"text_clean": "lower", "pad_token": "<|endoftext|>"}},
    ),
    Recipe(  # configs/text/001_llm_hfdata.yaml
        "llm.l3m", steps=55_000, per_gpu_batch=16, grad_accum=2, grad_clip=1.0, compile=False,
        reduce_dtype="bf16", mesh=FULL_SHARD, checkpoint_every=10_000,
        optimizer="AdamW",
        opt_args={"lr": 5e-4, "betas": [0.9, 0.95], "eps": 1e-8, "weight_decay": 0.1, "fused": True},
        warmup_steps=0.1 * 55_000, start_lr=1e-6, end_lr=5e-5, cls_decayed=None,
        losses={"ce": 1.0},
        # constants.context_length 2048, of which TextPreprocessor(drop_last) feeds 2047 positions and
        # LLMCrossEntropyLoss(shift_target) scores the 2047 next tokens; SHARD_GRAD_OP; no z_loss
        extra={"text_len": 2048 - 1, "reshard_after_forward": False, "z_loss": 0.0,
               "activation_checkpointing": "mlp",  # experiment.fsdp.fsdp_layers_to_activation_checkpoint: [SwiGLUFFN]
               # data.train.dataset: SimpleTextDataset tokenizes each row alone (no packing) with
               # constants.tokenizer = HFTokenizer(google/siglip-base-patch16-224, context_length 2048)
               "text_encoding": {"pack": False, **SIGLIP_CAPTIONS}},
    ),
    Recipe(  # configs/supervised_imagenet/001_vit_large_imagenet.yaml
        "vit_imagenet.l3m", steps=32_000, per_gpu_batch=512, grad_accum=1, grad_clip=1.0, compile=True,
        reduce_dtype="bf16", mesh=FULL_SHARD, checkpoint_every=5_000,
        optimizer="AdamW",
        opt_args={"lr": 1e-3, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.05, "fused": True},
        warmup_steps=0.016 * 32_000, start_lr=1e-7, end_lr=1e-5, cls_decayed=False,
        losses={"ce": 1.0}, crop={**CROP, **JITTER},
        extra={
            "eval_every": 300,  # experiment.test_frequency
            # data.train.collator.mixup_fn
            "mixup": {"num_classes": 1000, "mixup_alpha": 0.8, "cutmix_alpha": 1.0, "prob": 1.0,
                      "switch_prob": 0.5, "label_smoothing": 0.1},
            "eval_resize": 256,  # data.validation.dataset.transform: Resize(256, 3), CenterCrop(224)
        },
    ),
]


def _compiled(recipe: Recipe):
    return l3m.load(str(ROOT / "models" / recipe.file))


def _node(program, role, name=None, type_name=None):
    for n in program.nodes:
        if n.role == role and (name is None or n.name == name) and (type_name is None or n.call.type_name == type_name):
            return n
    return None


@pytest.fixture(scope="module", params=RECIPES, ids=lambda r: r.file)
def case(request):
    return request.param, _compiled(request.param)


def test_train_settings(case):
    r, c = case
    train = build_section("train", c.program.section("train"))
    source = _node(c.program, "source", "train")
    assert train.steps == r.steps
    assert source.call.kwargs["batch_size"] == r.per_gpu_batch * GPUS  # the global batch
    assert train.grad_accum == r.grad_accum
    layout = derive_layout(source.call.kwargs["batch_size"], GPUS, train.grad_accum, train.micro_batch or None)
    assert layout.micro * layout.accum == r.per_gpu_batch and layout.accum == r.grad_accum
    assert train.grad_clip == r.grad_clip
    assert train.dtype == "bf16" and train.param_dtype == "bf16"  # experiment.dtype, fsdp.param_dtype
    assert train.reduce_dtype == r.reduce_dtype
    assert train.compile is r.compile
    assert train.seed == 0  # experiment.seed
    assert train.tf32 is True  # run/runner.py: torch.backends.cuda.matmul.allow_tf32 = True (code default)
    assert train.checkpoint_every == r.checkpoint_every
    assert {**{"tp": 1, "cp": 1}, **c.program.section("mesh")} == r.mesh
    assert train.reshard_after_forward is r.extra.get("reshard_after_forward", True)
    assert train.activation_checkpointing == r.extra.get("activation_checkpointing", train.activation_checkpointing)
    if "eval_every" in r.extra:
        assert train.eval_every == r.extra["eval_every"]


def test_optimizer(case):
    r, c = case
    opt = c.program.optimizer
    assert opt.type_name == r.optimizer
    args = {k: opt.kwargs.get(k) for k in r.opt_args}
    assert args == r.opt_args
    assert opt.kwargs.get("layer_decay", 1.0) == 1.0  # optim.lr_decay: null in every config
    assert not opt.kwargs.get("stage_lr")  # optim.lr_scalers: null


def test_no_decay_set_is_the_originals(case):
    """optim.wd_exclude: biases, norms and position tables in every config, the cls token where
    listed (AIMv2, ViT; not CLIP), the logit scale (CLIP). In l3m terms: 1-D parameters (biases,
    norm scales, the logit scale), the PosEmbed tables and, where excluded, the ClsToken."""
    r, c = case
    program = c.program
    model = c.build_model()
    kw = program.optimizer.kwargs
    groups = param_groups(model.named_parameters(), lr=kw["lr"], weight_decay=kw["weight_decay"],
                          no_decay=kw.get("no_decay", ()), decay_1d=kw.get("decay_1d", False))
    no_wd = {n for g in groups if g["weight_decay"] == 0.0 for n in g["param_names"]}
    prefix = {t: [module_path(n) + "." for n in program.blocks if n.call.type_name == t]
              for t in ("PosEmbed", "ClsToken")}
    expected = set()
    cls_params = set()
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if any(name.startswith(x) for x in prefix["ClsToken"]):
            cls_params.add(name)
        if p.ndim <= 1 or any(name.startswith(x) for x in prefix["PosEmbed"]):
            expected.add(name)
    if r.cls_decayed is None:
        assert not cls_params
    else:
        assert cls_params
        if not r.cls_decayed:
            expected |= cls_params
    assert no_wd == expected
    assert {g["weight_decay"] for g in groups} == {0.0, kw["weight_decay"]}


def test_schedule(case):
    """optim.scheduler: fvcore Linear(start_value -> lr) then Cosine(lr -> end_value), queried at
    iteration / total_iterations."""
    r, c = case
    sched = c.program.schedule
    assert sched.type_name == "LinearCosine"
    lr = r.opt_args["lr"]
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    s = lookup("LinearCosine").obj(opt, r.steps, **sched.kwargs)
    at = lambda i: lr * s.lr_lambdas[0](i)  # noqa: E731 - the lr the optimizer uses at step i
    w, t = r.warmup_steps, r.steps
    assert at(0) == pytest.approx(r.start_lr, rel=1e-9, abs=1e-15)
    half = int(w // 2)
    assert at(half) == pytest.approx(r.start_lr + (lr - r.start_lr) * half / w, rel=1e-9)
    assert at(math.ceil(w)) == pytest.approx(
        r.end_lr + 0.5 * (lr - r.end_lr) * (1 + math.cos(math.pi * (math.ceil(w) - w) / (t - w))), rel=1e-9)
    mid = int(w + (t - w) / 2)
    assert at(mid) == pytest.approx(
        r.end_lr + 0.5 * (lr - r.end_lr) * (1 + math.cos(math.pi * (mid - w) / (t - w))), rel=1e-9)
    assert r.end_lr <= at(t - 1) < r.end_lr + 1e-3 * lr


def test_losses(case):
    r, c = case
    weights = {n.name: n.weight for n in c.program.nodes if n.role == "loss"}
    assert weights == r.losses
    if "z_loss" in r.extra:
        ce = _node(c.program, "loss", "ce")
        assert ce.call.kwargs.get("z_loss", 0.0) == r.extra["z_loss"]


def test_data(case):
    r, c = case
    program = c.program
    train = _node(program, "source", "train")
    kw = train.call.kwargs
    if "text_len" in r.extra:
        assert r.extra["text_len"] in (kw.get("seq_len"), kw.get("context_length"))
    if "text_encoding" in r.extra:  # every source of the file encodes text alike (train and eval)
        for node in program.of_role("source"):
            assert {k: node.call.kwargs.get(k) for k in r.extra["text_encoding"]} == r.extra["text_encoding"]
    if "prefix" in r.extra:
        gen = _node(program, "generator", type_name="RandomPrefixLength")
        assert (gen.call.kwargs["low"], gen.call.kwargs["high"]) == r.extra["prefix"]
    if "mixup" in r.extra:
        gen = _node(program, "generator", type_name="MixupCutmix")
        assert {k: gen.call.kwargs.get(k) for k in r.extra["mixup"]} == r.extra["mixup"]
    if "eval_resize" in r.extra:
        ev = _node(program, "source", "eval")
        assert ev.call.kwargs["resize"] == r.extra["eval_resize"] and ev.call.kwargs["interpolation"] == "bicubic"
        assert ev.call.kwargs["batch_size"] == r.per_gpu_batch * GPUS and ev.call.kwargs["augment"] == "none"
        assert ev.call.kwargs["root"].endswith("/val") and kw["root"].endswith("/train")
    if r.extra.get("eval_same_as_train"):  # data.validation: the train dataset, transform and tokenizer
        ev = _node(program, "source", "eval")
        assert ev.call.type_name == train.call.type_name
        loader_args = ("batch_size", "shuffle", "drop_last")
        assert {k: v for k, v in ev.call.kwargs.items() if k not in loader_args} == \
            {k: v for k, v in kw.items() if k not in loader_args}
        assert ev.call.kwargs["batch_size"] == r.per_gpu_batch * GPUS  # not chunked for evaluation
    if "eval_prefix" in r.extra:  # evaluation generators: force_full_attn
        gen = _node(program, "generator", type_name="RandomPrefixLength")
        assert gen.call.kwargs["eval_len"] == r.extra["eval_prefix"]
    if "eval_every" in r.extra:
        ev = _node(program, "source", "eval")
        assert ev is not None and ev.call.kwargs.get("shuffle") is False  # a SequentialSampler / shuffle=False
    if r.file == "llm.l3m":  # data.validation: null
        assert _node(program, "source", "eval") is None


def _classic(crop):
    """The config's torchvision train transform, built from the expected values."""
    steps = [T.RandomResizedCrop(224, scale=(crop["min_scale"], 1.0), interpolation=3), T.RandomHorizontalFlip()]
    if "color_jitter" in crop:
        steps.append(T.RandomApply([T.ColorJitter(*crop["color_jitter"])], p=crop["color_jitter_prob"]))
    return T.Compose([*steps, T.ToTensor(), T.Normalize(*IMAGENET)])


def test_train_images_match_the_original_transform(case):
    """The source's pipeline and the config's torchvision Compose give the same pixels per seed."""
    r, c = case
    if r.crop is None:
        pytest.skip("text only")
    node = _node(c.program, "source", "train")
    entry = lookup(node.call.type_name)
    args = entry.signature.bind_partial(**node.call.kwargs_for(entry.signature))
    args.apply_defaults()
    a = args.arguments  # the source's image arguments (the source itself would also need a tokenizer)
    assert a["image_size"] == 224 and list(a["mean"]) == IMAGENET[0] and list(a["std"]) == IMAGENET[1]
    assert a["augment"] == "crop_flip" and a["normalize"] is True
    pipeline = image_transform(a["image_size"], a["augment"], a["mean"], a["std"], a["min_scale"],
                               interpolation=a["interpolation"], color_jitter=a["color_jitter"],
                               color_jitter_prob=a["color_jitter_prob"], resize=a["resize"])
    g = torch.Generator().manual_seed(0)
    img = Image.fromarray(torch.randint(0, 256, (240, 320, 3), generator=g, dtype=torch.uint8).numpy())
    want_t = _classic(r.crop)
    for seed in range(3):
        torch.manual_seed(seed)
        want = want_t(img)
        torch.manual_seed(seed)
        got = pipeline(img)
        assert torch.allclose(got, want, atol=1e-5), seed


def test_eval_images_match_the_original_transform(case):
    """data.validation's Resize(256, bicubic) + CenterCrop(224) + ToTensor + Normalize, same pixels."""
    r, c = case
    if "eval_resize" not in r.extra:
        pytest.skip("no resize evaluation transform")
    node = _node(c.program, "source", "eval")
    entry = lookup(node.call.type_name)
    args = entry.signature.bind_partial(**node.call.kwargs_for(entry.signature))
    args.apply_defaults()
    a = args.arguments
    pipeline = image_transform(a["image_size"], a["augment"], a["mean"], a["std"], a["min_scale"],
                               interpolation=a["interpolation"], resize=a["resize"])
    want_t = T.Compose([T.Resize(r.extra["eval_resize"], interpolation=3), T.CenterCrop(224), T.ToTensor(),
                        T.Normalize(*IMAGENET)])
    g = torch.Generator().manual_seed(1)
    img = Image.fromarray(torch.randint(0, 256, (300, 400, 3), generator=g, dtype=torch.uint8).numpy())
    assert torch.allclose(pipeline(img), want_t(img), atol=1e-5)
