"""l3m against peer libraries: the same architecture, the same weights, one training step each.

For the Llama-style LLM (`examples/llama_tiny.l3m`, the `models/llama.l3m` template) against Hugging
Face `transformers`' `LlamaForCausalLM`, and the ViT (`examples/vit_digits.l3m`, the
`models/vit_imagenet.l3m` template) against `timm`'s `VisionTransformer`, each at two small CPU
sizes: build the l3m model, build the peer with the sizes read off it, copy the weights across
with l3m's own converters (`l3m.interop.llama`, `l3m.interop.timm_vit`), prove that logits, loss
and gradients agree in fp32, then time a full training step (forward, loss, backward, AdamW step)
of each on the same batch, eager and `torch.compile`d on both sides, in fp32 and under bf16
autocast.

The variants take turns in interleaved rounds whose order rotates (`common.interleaved`); a
second, identical copy of the l3m model runs beside them, so its ratio to the first (an A/A
test) is the noise floor. Ratio = peer time / l3m time per round: above 1, l3m is faster.

    python benchmarks/peers.py            # writes benchmarks/results/peers.json (about 7 minutes here)
    python benchmarks/peers.py --quick    # tiny sizes, few rounds, compiled fp32 only on the tiny LLM
"""

from __future__ import annotations

import contextlib
import copy
import importlib.metadata
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import common

# (family, size, example, overrides). The ViT overrides give the vit_imagenet template timm's
# layout: timm normalises either every token (`norm`) or the pooled one (`fc_norm`), not both.
VIT_AS_TIMM = ["vit.trunk.blocks.final_norm=false", "vit.head.fc.norm_eps=1e-6"]
CASES = [
    ("llama", "tiny", "llama_tiny", []),
    ("llama", "small", "llama_tiny", ["llama.dim=256", "llama.depth=4", "llama.heads=8", "llama.kv_heads=4",
                                      "llama.hidden=688"]),
    ("vit", "tiny", "vit_digits", VIT_AS_TIMM),
    ("vit", "small", "vit_digits", [*VIT_AS_TIMM, "dim=192", "vit.depth=4", "vit.heads=3"]),
]
PEER = {"llama": "transformers", "vit": "timm"}
# What else was tried and why it is not compared (kept in the JSON and the report).
NOT_COMPARED = {
    "open_clip (CLIP)": "open_clip_torch 3.3.0 installs (importing it also needs ftfy), but l3m has no converter "
                        "between its CLIP and open_clip's weights, so equal outputs could not be proved",
    "torchtitan (Llama 3)": "torchtitan 0.3.0 builds its Llama 3 on this CPU (with tyro, docstring-parser, typeguard "
                            "and spmd-types installed), but its attention is FlexAttention or varlen only (sdpa was "
                            "removed for language models) and FlexAttention has no backward on the CPU: it cannot "
                            "train here",
}


def version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


# -- peers ---------------------------------------------------------------------------------------


def hf_llama(model) -> Any:
    """A `LlamaForCausalLM` (sdpa attention, its default) with the l3m model's sizes and weights."""
    import torch
    import transformers

    from l3m.interop.llama import l3m_to_llama, llama_layout

    lay = llama_layout(model)
    trunk = model.get_submodule(lay.trunk)
    attn = trunk.layers[0].attn
    vocab, dim = model.get_parameter(lay.embed).shape
    cfg = transformers.LlamaConfig(
        vocab_size=vocab, hidden_size=dim, intermediate_size=trunk.layers[0].mlp.w1.out_features,
        num_hidden_layers=lay.depth, num_attention_heads=lay.kv_heads * attn.rep, num_key_value_heads=lay.kv_heads,
        head_dim=lay.head_dim, rms_norm_eps=lay.norm_eps, tie_word_embeddings=lay.tied, attention_bias=False,
        max_position_embeddings=4096, attn_implementation="sdpa",
        rope_parameters={"rope_type": "default", "rope_theta": lay.rope_theta},
    )  # fmt: skip
    peer = transformers.LlamaForCausalLM(cfg)
    missing, unexpected = peer.load_state_dict(l3m_to_llama(model.state_dict(), model), strict=False)
    if unexpected or set(missing) - ({"lm_head.weight"} if lay.tied else set()):
        raise AssertionError(f"weights do not fit the Llama: missing {missing}, unexpected {unexpected}")
    with torch.no_grad():
        assert not lay.tied or peer.lm_head.weight is peer.model.embed_tokens.weight
    return peer


def timm_vit(model) -> Any:
    """A timm `VisionTransformer` with the l3m model's sizes and weights."""
    from timm.models.vision_transformer import VisionTransformer
    from torch import nn

    from l3m.interop.timm_vit import l3m_to_vit, vit_layout

    lay = vit_layout(model)
    trunk = model.get_submodule(lay.trunk)
    layer = trunk.layers[0]
    patch = model.get_submodule(lay.patch)
    dim = lay.heads * lay.head_dim
    side = round((model.get_parameter(f"{lay.pos}.pos").shape[-2] - 1) ** 0.5) * patch.patch
    head = model.get_submodule(f"{lay.classifier}.fc")
    peer = VisionTransformer(
        img_size=side, patch_size=patch.patch, num_classes=head.out_features, embed_dim=dim, depth=lay.depth,
        num_heads=lay.heads, mlp_ratio=layer.mlp.w1.out_features / dim, qkv_bias=True,
        proj_bias=layer.attn.proj.bias is not None, fc_norm=True, global_pool="token",
        norm_layer=partial(nn.LayerNorm, eps=layer.norm1.eps if hasattr(layer.norm1, "eps") else 1e-6),
    )  # fmt: skip
    peer.load_state_dict(l3m_to_vit(model.state_dict(), model), strict=True)
    return peer


def peer_for(family: str, model):
    return hf_llama(model) if family == "llama" else timm_vit(model)


def peer_logits(family: str, peer, batch):
    return peer(batch["tokens"]).logits if family == "llama" else peer(batch["image"])


def peer_loss(family: str, logits, batch, smoothing: float):
    import torch.nn.functional as F

    if family == "llama":
        return F.cross_entropy(logits.flatten(0, 1).float(), batch["targets"].flatten())
    return F.cross_entropy(logits.float(), batch["label"], label_smoothing=smoothing)


def foreign_grads(family: str, model) -> dict[str, Any]:
    from l3m.interop.llama import l3m_to_llama
    from l3m.interop.timm_vit import l3m_to_vit

    grads = {n: p.grad for n, p in model.named_parameters()}
    return l3m_to_llama(grads, model) if family == "llama" else l3m_to_vit(grads, model)


# -- the comparison ------------------------------------------------------------------------------


def check_same(family, model, criterion, peer, batch, smoothing) -> dict[str, float]:
    """Prove the peer computes what the l3m model computes in fp32: logits, loss, every gradient."""
    import torch

    d = model(batch)
    loss = criterion(d)[0]
    logits = peer_logits(family, peer, batch)
    ploss = peer_loss(family, logits, batch, smoothing)
    loss.backward()
    ploss.backward()
    grads = foreign_grads(family, model)
    pgrads = dict(peer.named_parameters())
    gdiff = max(float((g - pgrads[n].grad).abs().max()) for n, g in grads.items())
    torch.testing.assert_close(d["logits"], logits, rtol=1e-4, atol=2e-5)
    torch.testing.assert_close(loss, ploss, rtol=1e-5, atol=1e-5)
    if gdiff > 1e-4:
        raise AssertionError(f"gradients differ by {gdiff}")
    model.zero_grad(set_to_none=True)
    peer.zero_grad(set_to_none=True)
    return {"logits": float((d["logits"] - logits).detach().abs().max()),
            "loss": abs(float((loss - ploss).detach())), "grads": gdiff}


def adamw_like(module, reference):
    """torch AdamW with `reference`'s settings; decay on matrices, none on vectors, positions and
    class tokens (what the examples' `no_decay` lists say)."""
    import torch

    wd = max(g["weight_decay"] for g in reference.param_groups)
    named = list(module.named_parameters())
    decay = [p for n, p in named if p.dim() >= 2 and "pos" not in n and "cls" not in n]
    ids = {id(p) for p in decay}
    d = reference.defaults
    return torch.optim.AdamW([{"params": decay, "weight_decay": wd},
                              {"params": [p for _, p in named if id(p) not in ids], "weight_decay": 0.0}],
                             lr=d["lr"], betas=d["betas"], eps=d["eps"])


def train_step(loss_fn: Callable[[], Any], opt, dtype: str) -> Callable[[], None]:
    import torch

    def run() -> None:
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if dtype == "bf16" else contextlib.nullcontext()
        with ctx:
            loss = loss_fn()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return run


def runs_for(size: str, family: str, args) -> list[tuple[str, str]]:
    """(mode, dtype) pairs to time; --quick compiles only the tiny LLM (compiling costs ~20 s a model)."""
    modes = ["eager"] if args.quick and not (size == "tiny" and family == "llama") else args.modes.split(",")
    return [(m, dt) for m in modes for dt in args.dtypes.split(",") if not (args.quick and m == "compiled"
                                                                            and dt == "bf16")]


def case(family: str, size: str, example: str, overrides: list[str], args) -> dict[str, Any]:
    import torch

    from l3m.model.criterion import build_criterion

    compiled = common.load(example, overrides)
    s = common.session(compiled)
    model, opt = s.model, s.optimizer
    criterion = build_criterion(compiled.program, metrics=False)
    batch = common.batches(s, 1)[0]
    s.close()
    peer = peer_for(family, model)
    smoothing = getattr(criterion.losses["ce"].block, "label_smoothing", 0.0)
    diff = check_same(family, model, criterion, peer, batch, smoothing)
    twin = copy.deepcopy(model)  # the A/A control
    popt, topt = adamw_like(peer, opt), adamw_like(twin, opt)
    key = "tokens" if family == "llama" else "image"
    tiny = size == "tiny"
    rounds = 3 if args.quick else (args.rounds if tiny else max(args.rounds // 2, 5))
    steps = 2 if tiny else 1
    out: dict[str, Any] = {"family": family, "size": size, "example": example, "overrides": overrides,
                           "peer": PEER[family], "params": sum(p.numel() for p in model.parameters()),
                           "batch": list(batch[key].shape), "max_abs_diff": diff, "runs": []}
    for mode, dtype in runs_for(size, family, args):
        fns = {"l3m": lambda: criterion(model(batch))[0],
               "peer": lambda: peer_loss(family, peer_logits(family, peer, batch), batch, smoothing),
               "l3m_copy": lambda: criterion(twin(batch))[0]}
        first: dict[str, float] = {}
        if mode == "compiled":
            torch._dynamo.reset()
            fns = {name: torch.compile(fn) for name, fn in fns.items()}
        variants = {n: train_step(fns[n], o, dtype) for n, o in (("l3m", opt), ("peer", popt), ("l3m_copy", topt))}
        if mode == "compiled":
            for name, fn in variants.items():  # the first call compiles
                t0 = time.perf_counter()
                fn()
                first[name] = time.perf_counter() - t0
        times = common.interleaved(variants, rounds=rounds, steps=steps, warmup=2)
        res: dict[str, Any] = {"mode": mode, "dtype": dtype, "rounds": rounds, "steps_per_round": steps}
        for clock in ("cpu", "wall"):
            t = times[clock]
            res[clock] = {f"{n}_s": common.summary(v) for n, v in t.items()}
            res[clock]["ratio"] = common.ratios(t["peer"], t["l3m"])
            res[clock]["aa_ratio"] = common.ratios(t["l3m_copy"], t["l3m"])
        if first:
            res["first_step_s"] = first
        out["runs"].append(res)
        r, c = res["cpu"]["ratio"], res["cpu"]
        print(f"{family:>5} {size:<5} {mode:<8} {dtype:<4} {PEER[family]} / l3m {r['median']:.3f} (CPU time; "
              f"rounds {r['min']:.3f}..{r['max']:.3f}; A/A {c['aa_ratio']['median']:.3f}; "
              f"{c['peer_s']['median'] * 1e3:.2f} vs {c['l3m_s']['median'] * 1e3:.2f} ms)", flush=True)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = common.parser(__doc__)
    ap.add_argument("--rounds", type=int, default=20, help="rounds for the tiny sizes (half for small)")
    ap.add_argument("--cases", default="", help="comma-separated family:size, e.g. llama:tiny")
    ap.add_argument("--modes", default="eager,compiled", help="eager, compiled or both")
    ap.add_argument("--dtypes", default="fp32,bf16", help="fp32, bf16 (autocast) or both")
    args = ap.parse_args(argv)
    common.set_threads(args.threads)
    started = common.machine()
    wanted = set(filter(None, args.cases.split(",")))
    for flag, value, allowed in (("--modes", args.modes, {"eager", "compiled"}), ("--dtypes", args.dtypes,
                                                                                  {"fp32", "bf16"})):
        if not value or set(value.split(",")) - allowed:
            ap.error(f"{flag} takes a comma-separated subset of {', '.join(sorted(allowed))}")
    known = {f"{c[0]}:{c[1]}" for c in CASES}
    if wanted - known:
        ap.error(f"unknown case(s) {', '.join(sorted(wanted - known))}; choose from {', '.join(sorted(known))}")
    cases = [c for c in CASES if not wanted or f"{c[0]}:{c[1]}" in wanted]
    if args.quick:
        cases = [c for c in cases if c[1] == "tiny"]
    peers = {"transformers": version("transformers"), "timm": version("timm")}
    not_compared = dict(NOT_COMPARED)
    for family, dist in PEER.items():
        if peers[dist] is None:  # a peer that is not installed is reported, not a failure
            not_compared[f"{dist} ({family})"] = f"{dist} is not installed (pip install {dist})"
            print(f"peers: skipping {family}: {dist} is not installed", flush=True)
    rows = [case(*c, args) for c in cases if peers[PEER[c[0]]] is not None]
    common.write(common.out_path(args, "peers"), {"peers": peers, "not_compared": not_compared, "cases": rows},
                 started)
    work = [f"{c['family']}_{c['size']}_{r['mode']}_{r['dtype']}={r['cpu']['ratio']['median']:.3f}"
            for c in rows for r in c["runs"]]
    print("peers: " + " ".join(work))


if __name__ == "__main__":
    main()
