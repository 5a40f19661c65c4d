"""Runtime overhead of the language: an example's compiled `.l3m` model against a hand-written
plain PyTorch twin (`benchmarks/plain.py`) of the same architecture holding the same weights.

For the tiny GPT and ViT examples and a mid-size of each (dim 256, depth 4, 4 heads): load the
l3m model's weights into the twin, prove that logits, loss and every gradient agree, then time
one training step (forward, loss, backward, AdamW step) of each, eager and `torch.compile`d,
in interleaved rounds on the same batch. Targets: at most 2% slower eager, no slower compiled.

    python benchmarks/overhead.py            # writes benchmarks/results/overhead.json
    python benchmarks/overhead.py --quick    # a smoke run (eager only, tiny sizes, few rounds)
"""

from __future__ import annotations

import time
from typing import Any

import common
import plain

MID = ["dim=256", "model.depth=4", "model.heads=4"]
CASES = [("llm_bytes", "tiny", []), ("vit_digits", "tiny", []), ("llm_bytes", "mid", MID), ("vit_digits", "mid", MID)]
TARGET = {"eager": 1.02, "compiled": 1.0}


def twin_for(example: str, model) -> Any:
    """The plain twin with the l3m model's sizes (read off the built model)."""
    trunk = model.trunk.blocks.block
    layer = trunk.layers[0]
    dim, depth = trunk.dim, len(trunk.layers)
    heads = dim // layer.attn.head_dim
    if example == "llm_bytes":
        vocab, context = model.preprocessor.embed.block.emb.weight.shape[0], model.preprocessor.pos.block.num
        return plain.GPT(vocab, context, dim, depth, heads, hidden=layer.mlp.w1.out_features), heads
    patch = model.preprocessor.patches.block.patch
    n = model.preprocessor.pos.block.num - 1
    side = int(round(n**0.5)) * patch
    return plain.ViT(dim, depth, heads, patch, side, model.head.fc.block.fc.out_features), heads


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
    decay = [p for n, p in twin.named_parameters() if p.dim() >= 2 and n not in ("cls", "pos")]
    rest = [p for n, p in twin.named_parameters() if not (p.dim() >= 2 and n not in ("cls", "pos"))]
    d = reference.defaults
    groups = [{"params": decay, "weight_decay": wd}, {"params": rest, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=d["lr"], betas=d["betas"], eps=d["eps"])


def case(example: str, size: str, overrides: list[str], args) -> dict[str, Any]:
    import torch

    from l3m.model.criterion import build_criterion

    compiled = common.load(example, overrides)
    s = common.session(compiled)
    model, opt = s.model, s.optimizer
    criterion = build_criterion(compiled.program, metrics=False)
    twin, heads = twin_for(example, model)
    twin.load_state_dict(plain.from_l3m(model.state_dict(), twin, heads), strict=True)
    popt = plain_optimizer(twin, opt)
    batch = common.batches(s, 1)[0]
    s.close()
    key = "tokens" if example == "llm_bytes" else "image"
    smoothing = getattr(criterion.losses["ce"].block, "label_smoothing", 0.0)

    # -- the same numbers first ------------------------------------------------------------------
    d = model(batch)
    loss_l3m = criterion(d)[0]
    logits_plain = twin(batch[key])
    loss_plain = plain_loss(example, logits_plain, batch, smoothing)
    loss_l3m.backward()
    loss_plain.backward()
    grads = plain.from_l3m({n: p.grad for n, p in model.named_parameters()}, twin, heads)
    gdiff = max(float((grads[n] - p.grad).abs().max()) for n, p in twin.named_parameters())
    ldiff = float((d["logits"] - logits_plain).detach().abs().max())
    torch.testing.assert_close(d["logits"], logits_plain, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(loss_l3m, loss_plain, rtol=1e-6, atol=1e-6)
    assert gdiff < 1e-4, f"gradients differ by {gdiff}"
    opt.zero_grad(set_to_none=True)
    popt.zero_grad(set_to_none=True)

    def step_l3m(m):
        def run():
            loss = criterion(m(batch))[0]
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        return run

    def step_plain(m):
        def run():
            loss = plain_loss(example, m(batch[key]), batch, smoothing)
            loss.backward()
            popt.step()
            popt.zero_grad(set_to_none=True)
        return run

    tiny = size == "tiny"
    rounds = 3 if args.quick else args.rounds
    steps = (2 if args.quick else 10) if tiny else (1 if args.quick else 3)
    out: dict[str, Any] = {"example": example, "size": size, "overrides": overrides,
                           "params": sum(p.numel() for p in model.parameters()),
                           "batch": list(batch[key].shape), "max_abs_diff": {"logits": ldiff, "grads": gdiff}}
    modes = ["eager"] if args.quick else args.modes.split(",")
    for mode in modes:
        m_l3m, m_plain = model, twin
        first: dict[str, float] = {}
        if mode == "compiled":
            torch._dynamo.reset()
            m_l3m, m_plain = torch.compile(model, fullgraph=True), torch.compile(twin, fullgraph=True)
            for name, fn in (("l3m", step_l3m(m_l3m)), ("plain", step_plain(m_plain))):
                t0 = time.perf_counter()
                fn()
                first[name] = time.perf_counter() - t0
        times = common.interleaved({"l3m": step_l3m(m_l3m), "plain": step_plain(m_plain)},
                                   rounds=rounds, steps=steps, warmup=2)
        res: dict[str, Any] = {"target": TARGET[mode]}
        for clock in ("cpu", "wall"):
            res[clock] = {"l3m_s": common.summary(times[clock]["l3m"]),
                          "plain_s": common.summary(times[clock]["plain"]),
                          "ratio": common.ratios(times[clock]["l3m"], times[clock]["plain"])}
        res["meets_target"] = res["cpu"]["ratio"]["median"] <= TARGET[mode]
        if first:
            res["first_step_s"] = first
        out[mode] = res
        r, c = res["cpu"]["ratio"], res["cpu"]
        print(f"{example:>10} {size:<4} {mode:<8} l3m {r['median']:.3f}x plain (cpu time; min {r['min']:.3f}, "
              f"max {r['max']:.3f}; {c['l3m_s']['median'] * 1e3:.2f} vs {c['plain_s']['median'] * 1e3:.2f} ms; "
              f"wall {res['wall']['ratio']['median']:.3f}x)")
    return out


def main(argv: list[str] | None = None) -> None:
    ap = common.parser(__doc__)
    ap.add_argument("--rounds", type=int, default=15)
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
    common.write(common.out_path(args, "overhead"), {"rounds": args.rounds, "cases": rows}, started)


if __name__ == "__main__":
    main()
