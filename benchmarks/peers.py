"""l3m against peer libraries: the same architecture, the same weights, one training step each.

Four comparisons (`peers_models.py`), each at two sizes: the Llama-style LLM (`examples/llama_tiny.l3m`,
the `models/llama.l3m` template) against Hugging Face `transformers`' `LlamaForCausalLM` and against
torchtitan's `Llama3Model`; the ViT (`examples/vit_digits.l3m`) against timm's `VisionTransformer`;
CLIP (`examples/clip_digits.l3m`, `models/clip.l3m`'s towers) against `open_clip.CLIP`. The peer is
built with the sizes read off the l3m model, the weights are copied with l3m's own converters
(`l3m.interop`), and outputs, loss and every gradient are proved equal in fp32 before anything is
timed. Then a full training step (forward, loss, backward, AdamW step) of each runs on the same
batch, eager and `torch.compile`d on both sides (forward and loss as one graph), in fp32 and under
bf16 autocast; and l3m's *default* compile (`model.compile()`, the whole model, as `l3m train`
does in one process; the loss eager) runs beside the peer's eager step.

The variants take turns in interleaved rounds whose order rotates (`common.interleaved`); a
second, identical copy of the l3m model runs beside them, so its ratio to the first (an A/A
test) is the noise floor. Ratio = peer time / l3m time per round: above 1, l3m is faster. On
the CPU the clock is the process's CPU time at a fixed thread count; on CUDA, CUDA events.

What is not exactly the peer's own default: torchtitan's Llama 3 uses FlexAttention (or varlen) for
language models and FlexAttention has no backward on the CPU (eager or compiled, torch 2.14), so it
runs with torchtitan's own maskless `ScaledDotProductAttention` (causal, whole sequences; what its
AutoParallel path uses). open_clip's towers are LayerNorm/GELU with biases, so the l3m CLIP is
clip_digits overridden to that form (`l3m.interop.openclip.open_clip_overrides`); `models/clip.l3m` itself is unchanged.

    python benchmarks/peers.py                       # writes benchmarks/results/peers.json
    python benchmarks/peers.py --quick               # tiny sizes, few rounds (under 5 minutes on 2 cores)
    python benchmarks/peers.py --device cuda --sizes medium    # on a GPU (bf16 autocast on CUDA)
"""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Callable
from typing import Any

import common
from peers_models import FAMILIES, Family, missing, version

# The ViT overrides give the vit_imagenet template timm's layout: timm normalises either every
# token (`norm`) or the pooled one (`fc_norm`), not both.
VIT_AS_TIMM = ["vit.trunk.blocks.final_norm=false", "vit.head.fc.norm_eps=1e-6"]


def clip_as_open_clip() -> list[str]:
    """clip_digits' towers in open_clip's form (LayerNorm, GELU MLP, biases, no patch norm or conv bias)."""
    from l3m.interop.openclip import open_clip_overrides

    return open_clip_overrides("clip")


def _clip(dim: int, depth: int, heads: int, embed: int) -> list[str]:
    return [f"clip.{t}.{k}={v}" for t in ("image", "text")
            for k, v in (("dim", dim), ("depth", depth), ("heads", heads), ("embed_dim", embed))]  # fmt: skip


LLAMA_SIZES = {
    "tiny": [],
    "small": ["llama.dim=256", "llama.depth=4", "llama.heads=8", "llama.kv_heads=4", "llama.hidden=688"],
    "medium": ["llama.dim=1024", "llama.depth=8", "llama.heads=16", "llama.kv_heads=4", "llama.hidden=2816",
               "context=512", "data.train.batch_size=16"],
}  # fmt: skip
# family -> (example, the overrides every size takes, size -> overrides)
EXAMPLES: dict[str, tuple[str, list[str], dict[str, list[str]]]] = {
    "llama": ("llama_tiny", [], LLAMA_SIZES),
    "titan": ("llama_tiny", [], LLAMA_SIZES),
    "titanflex": ("llama_tiny", [], LLAMA_SIZES),
    "vit": ("vit_digits", VIT_AS_TIMM, {
        "tiny": [], "small": ["dim=192", "vit.depth=4", "vit.heads=3"],
        "medium": ["dim=768", "vit.depth=12", "vit.heads=12", "data.train.batch_size=512"]}),
    "clip": ("clip_digits", clip_as_open_clip(), {
        "tiny": [], "small": _clip(192, 4, 3, 64),
        "medium": [*_clip(768, 12, 12, 512), "data.train.batch_size=512"]}),
}  # fmt: skip
DEVIATIONS = {
    "titan": "torchtitan's maskless ScaledDotProductAttention instead of its language-model default "
             "FlexAttention, which has no backward on the CPU (eager or compiled, torch 2.14)",
    "clip": "open_clip's tower layout (LayerNorm, GELU MLP, biases, no pre-norm): models/clip.l3m's "
            "RMSNorm/SwiGLU/bias-free towers with a patch norm have no open_clip equivalent, so the l3m side is "
            "clip_digits overridden to open_clip's form",
}  # fmt: skip


# -- the comparison ------------------------------------------------------------------------------


def grad_state(module) -> dict[str, Any]:
    """`module`'s gradients under its state-dict names (torchtitan's state dict splits its fused
    qkv, so parameter names are not what its converter speaks): a copy holding grads as weights."""
    import torch

    twin = copy.deepcopy(module)
    with torch.no_grad():
        for p, q in zip(module.parameters(), twin.parameters()):
            q.data = p.grad if p.grad is not None else torch.zeros_like(p)
    return twin.state_dict()


def check_same(fam: Family, model, criterion, peer, batch, smoothing: float, device) -> dict[str, float]:
    """Prove the peer computes what the l3m model computes in fp32: outputs (in eval mode, where an
    LM head writes its logits even when training fuses it with the loss), loss and every gradient."""
    import torch

    scale = 1.0 if device.type == "cpu" else 20.0  # GPU kernels may differ by shape (fused vs separate qkv)
    modes = model.training, peer.training
    model.eval()
    peer.eval()
    with torch.no_grad():
        d, out = model(dict(batch)), fam.forward(peer, batch)
    odiff = 0.0
    for name, theirs in zip(fam.outputs, out):
        torch.testing.assert_close(d[name], theirs, rtol=1e-4 * scale, atol=2e-5 * scale)
        odiff = max(odiff, float((d[name] - theirs).abs().max()))
    model.train(modes[0])
    peer.train(modes[1])
    loss = criterion(model(dict(batch)))[0]
    ploss = fam.loss(fam.forward(peer, batch), batch, smoothing)
    loss.backward()
    ploss.backward()
    grads = fam.foreign({n: p.grad for n, p in model.named_parameters()}, model)
    pgrads = grad_state(peer)
    gdiff = max(float((g - pgrads[n]).abs().max()) for n, g in grads.items())
    torch.testing.assert_close(loss, ploss, rtol=1e-5 * scale, atol=1e-5 * scale)
    if gdiff > 1e-4 * scale:
        raise AssertionError(f"gradients differ by {gdiff}")
    model.zero_grad(set_to_none=True)
    peer.zero_grad(set_to_none=True)
    return {"logits": odiff, "loss": abs(float((loss - ploss).detach())), "grads": gdiff}


def adamw_like(module, reference):
    """torch AdamW with `reference`'s settings; decay on matrices, none on vectors, positions and
    class tokens (what the examples' `no_decay` lists say). Torch's fused kernel wherever it has one:
    what `l3m train`, transformers' Trainer (`adamw_torch_fused`) and torchtitan (`fused`) default to."""
    import torch

    from l3m.train.optim import fused_kernel_fits

    wd = max(g["weight_decay"] for g in reference.param_groups)
    named = list(module.named_parameters())
    decay = [p for n, p in named if p.dim() >= 2 and "pos" not in n and "cls" not in n and "class" not in n]
    ids = {id(p) for p in decay}
    d = reference.defaults
    return torch.optim.AdamW([{"params": decay, "weight_decay": wd},
                              {"params": [p for _, p in named if id(p) not in ids], "weight_decay": 0.0}],
                             lr=d["lr"], betas=d["betas"], eps=d["eps"],
                             fused=fused_kernel_fits([p for _, p in named]) or None)


def train_step(loss_fn: Callable[[], Any], opt, dtype: str, device) -> Callable[[], None]:
    import torch

    def run() -> None:
        ctx = torch.autocast(device.type, dtype=torch.bfloat16) if dtype == "bf16" else contextlib.nullcontext()
        with ctx:
            loss = loss_fn()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return run


def cuda_interleaved(variants: dict[str, Callable[[], Any]], *, rounds: int, steps: int,
                     warmup: int = 2) -> dict[str, dict[str, list[float]]]:
    """`common.interleaved` on a GPU: each variant's steps timed with CUDA events, the order rotating."""
    import torch

    names = list(variants)
    for name in names:
        for _ in range(warmup):
            variants[name]()
    torch.cuda.synchronize()
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order[::-1] if r % 2 else order:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(steps):
                variants[name]()
            end.record()
            end.synchronize()
            times[name].append(start.elapsed_time(end) / 1e3 / steps)
    return {"cuda": times}


def runs_for(size: str, family: str, args) -> list[tuple[str, str]]:
    """(mode, dtype) pairs to time; --quick compiles forward + loss only on the tiny LLM and in fp32."""
    modes = args.modes.split(",")
    if args.quick and not (size == "tiny" and family == "llama"):
        modes = [m for m in modes if m != "compiled"]
    return [(m, dt) for m in modes for dt in args.dtypes.split(",")
            if not (args.quick and m == "compiled" and dt == "bf16")]  # fmt: skip


def session(compiled, device):
    from l3m.train.session import Runtime, build_session

    return build_session(compiled, Runtime(device=device), command="train")


def to_device(batch: dict[str, Any], device) -> dict[str, Any]:
    return {k: v.to(device) if hasattr(v, "to") else v for k, v in batch.items()}


def case(fam: Family, size: str, args, device) -> dict[str, Any]:
    import torch

    from l3m.model.criterion import build_criterion

    example, base, sizes = EXAMPLES[fam.name]
    overrides = [*base, *sizes[size]]
    compiled = common.load(example, overrides)
    s = session(compiled, device)
    model, opt = s.model, s.optimizer
    criterion = build_criterion(compiled.program, metrics=False)
    batch = to_device(common.batches(s, 1)[0], device)
    s.close()
    peer = fam.build(model).to(device)
    ce = criterion.losses.get("ce", None)
    smoothing = getattr(ce.block, "label_smoothing", 0.0) if ce is not None else 0.0
    diff = check_same(fam, model, criterion, peer, batch, smoothing, device)
    twin = copy.deepcopy(model)  # the A/A control
    # one optimizer for all, the session's kind on fresh state: the models are what is compared
    popt, topt, lopt = adamw_like(peer, opt), adamw_like(twin, opt), adamw_like(model, opt)
    key = "image" if "image" in batch else "tokens"
    tiny = size == "tiny"
    rounds = 3 if args.quick else (args.rounds if tiny else max(args.rounds // 2, 5))
    steps = 2 if tiny or device.type == "cuda" else 1
    out: dict[str, Any] = {"family": fam.name, "size": size, "example": example, "overrides": overrides,
                           "peer": fam.dist, "params": sum(p.numel() for p in model.parameters()),
                           "batch": list(batch[key].shape), "max_abs_diff": diff, "runs": []}
    if fam.name in DEVIATIONS:
        out["deviation"] = DEVIATIONS[fam.name]
    default = None  # l3m as `l3m train` compiles it: model.compile(), the loss eager
    if "eager" in args.modes.split(","):
        default = copy.deepcopy(model)
        default.compile()
        dopt = adamw_like(default, opt)
    for mode, dtype in runs_for(size, fam.name, args):
        fns = {"l3m": lambda: criterion(model(dict(batch)))[0],
               "peer": lambda: fam.loss(fam.forward(peer, batch), batch, smoothing),
               "l3m_copy": lambda: criterion(twin(dict(batch)))[0]}
        if mode == "compiled":
            torch._dynamo.reset()
            fns = {name: torch.compile(fn) for name, fn in fns.items()}
        opts = {"l3m": lopt, "peer": popt, "l3m_copy": topt}
        with_default = mode == "eager" and default is not None and not (args.quick and dtype == "bf16")
        if with_default:
            fns["l3m_default"] = lambda: criterion(default(dict(batch)))[0]
            opts["l3m_default"] = dopt
        variants = {n: train_step(fns[n], opts[n], dtype, device) for n in fns}
        first: dict[str, float] = {}
        for name in [n for n in variants if mode == "compiled" or n == "l3m_default"]:  # the first call compiles
            t0 = time.perf_counter()
            variants[name]()
            if device.type == "cuda":
                torch.cuda.synchronize()
            first[name] = time.perf_counter() - t0
        if device.type == "cuda":
            times = cuda_interleaved(variants, rounds=rounds, steps=steps, warmup=2)
        else:
            times = common.interleaved(variants, rounds=rounds, steps=steps, warmup=2)
        res: dict[str, Any] = {"mode": mode, "dtype": dtype, "rounds": rounds, "steps_per_round": steps}
        for clock, t in times.items():
            res[clock] = {f"{n}_s": common.summary(v) for n, v in t.items()}
            res[clock]["ratio"] = common.ratios(t["peer"], t["l3m"])
            res[clock]["aa_ratio"] = common.ratios(t["l3m_copy"], t["l3m"])
            if with_default:
                res[clock]["default_ratio"] = common.ratios(t["peer"], t["l3m_default"])
        if first:
            res["first_step_s"] = first
        out["runs"].append(res)
        c = res["cuda" if device.type == "cuda" else "cpu"]
        r = c["ratio"]
        extra = f"; peer eager / l3m default compile {c['default_ratio']['median']:.3f}" if with_default else ""
        print(f"{fam.name:>5} {size:<6} {mode:<8} {dtype:<4} {fam.dist} / l3m {r['median']:.3f} "
              f"({'CUDA' if device.type == 'cuda' else 'CPU'} time; rounds {r['min']:.3f}..{r['max']:.3f}; "
              f"A/A {c['aa_ratio']['median']:.3f}; {c['peer_s']['median'] * 1e3:.2f} vs "
              f"{c['l3m_s']['median'] * 1e3:.2f} ms{extra})", flush=True)
    return out


def work_line(rows: list[dict[str, Any]], clock: str) -> str:
    """`peers: llama-tiny-eager-fp32=1.012 ... llama-tiny-default-fp32=1.15 ...` (peer / l3m)."""
    work = []
    for c in rows:
        for r in c["runs"]:
            t = r[clock]
            work.append(f"{c['family']}-{c['size']}-{r['mode']}-{r['dtype']}={t['ratio']['median']:.3f}")
            if "default_ratio" in t:
                work.append(f"{c['family']}-{c['size']}-default-{r['dtype']}={t['default_ratio']['median']:.3f}")
    return "peers: " + " ".join(work)


def main(argv: list[str] | None = None) -> None:
    ap = common.parser(__doc__)
    ap.add_argument("--rounds", type=int, default=20, help="rounds for the tiny sizes (half for the others)")
    ap.add_argument("--cases", default="", help="comma-separated family[:size], e.g. llama:tiny,clip "
                                                f"(families: {', '.join(FAMILIES)})")
    ap.add_argument("--sizes", default="", help="comma-separated tiny, small, medium (default: tiny,small on the "
                                                "CPU, small,medium on CUDA; --quick: tiny)")
    ap.add_argument("--modes", default="eager,compiled", help="eager, compiled or both")
    ap.add_argument("--dtypes", default="", help="fp32, bf16 (autocast) or both (default both)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    args = ap.parse_args(argv)
    import torch

    if args.device not in ("cpu", "cuda") and not args.device.startswith("cuda:"):
        ap.error("--device takes cpu or cuda")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device is available here")
    device = torch.device(args.device)
    args.dtypes = args.dtypes or "fp32,bf16"
    for flag, value, allowed in (("--modes", args.modes, {"eager", "compiled"}),
                                 ("--dtypes", args.dtypes, {"fp32", "bf16"})):
        if not value or set(value.split(",")) - allowed:
            ap.error(f"{flag} takes a comma-separated subset of {', '.join(sorted(allowed))}")
    sizes = args.sizes or ("tiny" if args.quick else "small,medium" if device.type == "cuda" else "tiny,small")
    sizes_l = sizes.split(",")
    if set(sizes_l) - {"tiny", "small", "medium"}:
        ap.error("--sizes takes a comma-separated subset of tiny, small, medium")
    wanted = [w.split(":") for w in filter(None, args.cases.split(","))]
    if any(w[0] not in FAMILIES or (len(w) > 1 and w[1] not in ("tiny", "small", "medium")) for w in wanted):
        ap.error(f"unknown case in {args.cases!r}; write family[:size] with family one of {', '.join(FAMILIES)}")
    common.set_threads(args.threads)
    started = common.machine()
    started["device"] = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    sized = {(w[0], w[1]) for w in wanted if len(w) > 1}  # family:size picks that size whatever --sizes says
    # a CUDA-only peer runs when named in --cases, on CUDA; otherwise it is reported
    plan = [(f, s) for f in FAMILIES if not FAMILIES[f].cuda_only or any(w[0] == f for w in wanted)
            for s in dict.fromkeys([*sizes_l, *(z for g, z in sized if g == f)])
            if not wanted or (f, s) in sized or (any(w == [f] for w in wanted) and s in sizes_l)]
    peers = {FAMILIES[f].dist: version(FAMILIES[f].dist) for f in FAMILIES}
    not_compared: dict[str, str] = {}
    skipped: set[str] = set()
    for name in dict.fromkeys(f for f, _ in plan):
        why = missing(FAMILIES[name])
        if not why and FAMILIES[name].cuda_only and device.type != "cuda":
            why = f"CUDA only: {FAMILIES[name].cuda_only}"
        if why:  # a peer that cannot be built here is reported, not a failure
            not_compared[f"{FAMILIES[name].dist} ({name})"] = why
            skipped.add(name)
            print(f"peers: skipping {name}: {why}", flush=True)
    rows = []
    for f, s in plan:
        if f in skipped:
            continue
        rows.append(case(FAMILIES[f], s, args, device))
        # written after every case, so a run stopped by its time limit keeps what it measured
        common.write(common.out_path(args, "peers"), {"peers": peers, "device": device.type,
                                                      "not_compared": not_compared, "cases": rows}, started)
    print(work_line(rows, "cuda" if device.type == "cuda" else "cpu"))


if __name__ == "__main__":
    main()
