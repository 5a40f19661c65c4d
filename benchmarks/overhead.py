"""Runtime overhead of the language: an example's compiled `.l3m` model against a hand-written
plain PyTorch twin (`benchmarks/plain.py`) of the same architecture holding the same weights.

For the tiny GPT and ViT examples and a mid-size of each (dim 256, depth 4, 4 heads): load the
l3m model's weights into the twin, prove that logits, loss and every gradient agree, then time
one training step (forward, loss, backward, AdamW step) of each on the same batch, eager and
`torch.compile`d (forward and loss as one `fullgraph` function on both sides, backward through
it, AdamW eager). Targets: at most 2% slower eager, no slower compiled.

The variants take turns in interleaved rounds, and a second, identical copy of the twin runs
beside them: its ratio to the twin (an A/A test) is the noise floor of that measurement.

    python benchmarks/overhead.py            # writes benchmarks/results/overhead.json
    python benchmarks/overhead.py --quick    # a smoke run (eager only, tiny sizes, few rounds)
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from typing import Any

import common
import plain

CASES = [("llm_bytes", "tiny", []), ("vit_digits", "tiny", []), ("llm_bytes", "mid", common.mid("gpt")),
         ("vit_digits", "mid", common.mid("vit"))]
TARGET = {"eager": 1.02, "compiled": 1.0}


def twin_for(example: str, model) -> tuple[Any, int]:
    """The plain twin with the l3m model's sizes (read off the built model), and its head count."""
    trunk = common.block(model, "trunk.blocks")
    layer = trunk.layers[0]
    dim, depth = trunk.dim, len(trunk.layers)
    heads = dim // layer.attn.head_dim
    pos = common.block(model, "preprocessor.pos").num
    if example == "llm_bytes":
        vocab = common.block(model, "preprocessor.embed").emb.weight.shape[0]
        return plain.GPT(vocab, pos, dim, depth, heads, hidden=layer.mlp.w1.out_features), heads
    patch = common.block(model, "preprocessor.patches").patch
    side = round((pos - 1) ** 0.5) * patch
    return plain.ViT(dim, depth, heads, patch, side, common.block(model, "head.fc").fc.out_features), heads


def plain_loss(example: str, logits, batch, label_smoothing: float):
    import torch.nn.functional as F

    if example == "llm_bytes":
        return F.cross_entropy(logits.flatten(0, 1), batch["targets"].flatten())
    return F.cross_entropy(logits, batch["label"], label_smoothing=label_smoothing)


def plain_optimizer(twin, reference):
    """torch AdamW with the example's settings; decay on matrices, none on vectors and on the
    ViT's cls/pos (as the example's `no_decay` says)."""
    import torch

    wd = max(g["weight_decay"] for g in reference.param_groups)
    decayed = [n for n, p in twin.named_parameters() if p.dim() >= 2 and n not in ("cls", "pos")]
    groups = [{"params": [p for n, p in twin.named_parameters() if n in decayed], "weight_decay": wd},
              {"params": [p for n, p in twin.named_parameters() if n not in decayed], "weight_decay": 0.0}]
    d = reference.defaults
    return torch.optim.AdamW(groups, lr=d["lr"], betas=d["betas"], eps=d["eps"])


def step(loss_fn: Callable[[], Any], opt) -> Callable[[], None]:
    def run() -> None:
        loss_fn().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return run


def check_same(example, model, criterion, twin, heads, batch, key, smoothing) -> dict[str, float]:
    """Prove the twin computes what the l3m model computes: logits, loss and every gradient."""
    import torch

    d = model(batch)
    loss = criterion(d)[0]
    shown = common.logits_of(model, batch)  # a training model's head may be fused with its loss
    logits = twin(batch[key])
    ploss = plain_loss(example, logits, batch, smoothing)
    loss.backward()
    ploss.backward()
    grads = plain.from_l3m({n: p.grad for n, p in model.named_parameters()}, twin, heads)
    gdiff = max(float((grads[n] - p.grad).abs().max()) for n, p in twin.named_parameters())
    torch.testing.assert_close(shown, logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(loss, ploss, rtol=1e-6, atol=1e-6)
    if gdiff > 1e-4:
        raise AssertionError(f"gradients differ by {gdiff}")
    model.zero_grad(set_to_none=True)
    twin.zero_grad(set_to_none=True)
    return {"logits": float((shown - logits).detach().abs().max()),
            "loss": abs(float((loss - ploss).detach())), "grads": gdiff}


def case(example: str, size: str, overrides: list[str], args) -> dict[str, Any]:
    import torch

    from l3m.model.criterion import build_criterion

    # The twin computes every token: row pruning (l3m.model.pruning) off, so that both do the same work
    # and the difference is the language's overhead (peers.py measures l3m as it trains, pruning on).
    compiled = common.load(example, [*overrides, "train.prune_rows=false"])
    s = common.session(compiled)
    model, opt = s.model, s.optimizer
    criterion = build_criterion(compiled.program, metrics=False)
    twin, heads = twin_for(example, model)
    twin.load_state_dict(plain.from_l3m(model.state_dict(), twin, heads), strict=True)
    batch = common.batches(s, 1)[0]
    s.close()
    key = "tokens" if example == "llm_bytes" else "image"
    smoothing = getattr(criterion.losses["ce"].block, "label_smoothing", 0.0)
    diff = check_same(example, model, criterion, twin, heads, batch, key, smoothing)
    copy_ = copy.deepcopy(twin)  # the A/A control
    popt, copt = plain_optimizer(twin, opt), plain_optimizer(copy_, opt)

    tiny = size == "tiny"
    rounds = 3 if args.quick else (args.rounds if tiny else max(args.rounds // 3, 5))
    steps = 2 if tiny else 1
    out: dict[str, Any] = {"example": example, "size": size, "overrides": overrides,
                           "params": sum(p.numel() for p in model.parameters()),
                           "batch": list(batch[key].shape), "max_abs_diff": diff}
    for mode in ["eager"] if args.quick else args.modes.split(","):
        fns = {
            "l3m": lambda: criterion(model(batch))[0],
            "plain": lambda: plain_loss(example, twin(batch[key]), batch, smoothing),
            "plain_copy": lambda: plain_loss(example, copy_(batch[key]), batch, smoothing),
        }
        first: dict[str, float] = {}
        if mode == "compiled":
            torch._dynamo.reset()
            fns = {name: torch.compile(fn, fullgraph=True) for name, fn in fns.items()}
        variants = {name: step(fns[name], o) for name, o in (("l3m", opt), ("plain", popt), ("plain_copy", copt))}
        if mode == "compiled":
            for name, fn in variants.items():  # the first call compiles
                t0 = time.perf_counter()
                fn()
                first[name] = time.perf_counter() - t0
        times = common.interleaved(variants, rounds=rounds, steps=steps, warmup=2)
        res: dict[str, Any] = {"target": TARGET[mode], "rounds": rounds, "steps_per_round": steps}
        for clock in ("cpu", "wall"):
            t = times[clock]
            res[clock] = {f"{n}_s": common.summary(v) for n, v in t.items()}
            res[clock]["ratio"] = common.ratios(t["l3m"], t["plain"])
            res[clock]["aa_ratio"] = common.ratios(t["plain_copy"], t["plain"])
        res["meets_target"] = res["cpu"]["ratio"]["median"] <= TARGET[mode]
        if first:
            res["first_step_s"] = first
        out[mode] = res
        r, c = res["cpu"]["ratio"], res["cpu"]
        print(f"{example:>10} {size:<4} {mode:<8} l3m {r['median']:.3f}x plain (CPU time; rounds "
              f"{r['min']:.3f}..{r['max']:.3f}; A/A {c['aa_ratio']['median']:.3f}; "
              f"{c['l3m_s']['median'] * 1e3:.2f} vs {c['plain_s']['median'] * 1e3:.2f} ms; "
              f"wall {res['wall']['ratio']['median']:.3f}x)", flush=True)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = common.parser(__doc__)
    ap.add_argument("--rounds", type=int, default=40, help="rounds for the tiny sizes (a third for mid)")
    ap.add_argument("--cases", default="", help="comma-separated example:size, e.g. llm_bytes:tiny")
    ap.add_argument("--modes", default="eager,compiled", help="eager, compiled or both")
    args = ap.parse_args(argv)
    common.set_threads(args.threads)
    started = common.machine()
    wanted = set(filter(None, args.cases.split(",")))
    cases = [c for c in CASES if not wanted or f"{c[0]}:{c[1]}" in wanted]
    if args.quick:
        cases = [c for c in cases if c[1] == "tiny"]
    rows = [case(ex, size, ov, args) for ex, size, ov in cases]
    common.write(common.out_path(args, "overhead"), {"targets": TARGET, "cases": rows}, started)


if __name__ == "__main__":
    main()
