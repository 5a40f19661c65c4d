"""The fused LM-head cross-entropy (`l3m.model.fusion`) against the unfused head and loss.

The GPT of `models/llm.l3m` (vocabulary 50,432) at a CPU size: dim 256, depth 4, 4 heads, sequences
of 256 tokens, batch 4, on random tokens. Variants differ only in `train.lm_loss_chunk`: 0 (the head
writes `[tokens, vocab]` logits and the loss reads them), -1 (fused, chunk sized by the vocabulary)
and fused with one chunk of every token. Each is proven to give the unfused loss and gradients
first. Time: one training step (forward, loss, backward, AdamW step) on a fixed batch, the variants
in interleaved rounds, CPU time. Memory: in a fresh process per variant, the step's peak resident
memory above what the process held before it (after one step, so optimizer states exist).

    python benchmarks/lm_loss.py            # writes benchmarks/results/lm_loss.json
    python benchmarks/lm_loss.py --quick    # fewer rounds
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import common

PROGRAM = """l3m 1
import "{root}/models/llm.l3m" as llm

let vocab   = {vocab}
let context = {seq}

data {{
  train: Synthetic(kind = tokens, vocab = vocab, seq_len = context, batch_size = {batch}, length = 64) -> tokens, targets
}}

model gpt = llm.GPT(vocab = vocab, context = context, dim = {dim}, depth = {depth}, heads = {heads})  tokens -> logits

loss   ce:  LMCrossEntropy()  logits, targets -> loss
metric ppl: Perplexity()      logits, targets -> ppl

optimizer AdamW(lr = 1e-4, betas = [0.9, 0.95], weight_decay = 0.1, no_decay = ["*bias", "*norm*", "*pos*"])
train {{ steps = 10, lm_loss_chunk = {chunk} }}
"""
SIZE = {"vocab": 50432, "seq": 256, "batch": 4, "dim": 256, "depth": 4, "heads": 4}
VARIANTS = {"unfused": 0, "fused_auto": -1, "fused_one_chunk": SIZE["seq"] * SIZE["batch"]}


def session(chunk: int):
    import l3m
    from l3m.train.session import Runtime, build_session

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "llm_cpu.l3m"
        path.write_text(PROGRAM.format(root=common.ROOT, chunk=chunk, **SIZE))
        return build_session(l3m.load(str(path)), Runtime(), command="train")


def step_fn(s, batch):
    def run() -> None:
        total, _, _ = s.criterion.forward_stats(s.model(batch))
        total.backward()
        s.optimizer.step()
        s.optimizer.zero_grad(set_to_none=True)

    return run


def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(ln.split()[1]) * 1024 for ln in f if ln.startswith(field + ":"))


def peak_of_step(name: str) -> dict[str, int]:
    """In this process: the step's peak resident memory above the resident memory before it."""
    s = session(VARIANTS[name])
    batch = next(s.train_loader)
    run = step_fn(s, batch)
    run()
    with open("/proc/self/clear_refs", "w") as f:  # resets VmHWM (the peak) to the current RSS
        f.write("5")
    before = _status("VmRSS")
    run()
    return {"before": before, "peak": _status("VmHWM"), "step_peak": _status("VmHWM") - before}


def check_same(sessions: dict[str, Any], batch) -> dict[str, float]:
    import torch

    ref = sessions["unfused"]
    for s in sessions.values():  # the same weights in every variant
        s.model.load_state_dict(ref.model.state_dict())
    out = {}
    grads = {}
    for name, s in sessions.items():
        total, logs, _ = s.criterion.forward_stats(s.model(batch))
        total.backward()
        grads[name] = ({n: p.grad.clone() for n, p in s.model.named_parameters()}, float(total.detach()), float(logs["ppl"]))
        s.optimizer.zero_grad(set_to_none=True)
    g0, loss0, ppl0 = grads["unfused"]
    for name, (g, loss, ppl) in grads.items():
        gdiff = max(float((g[n] - g0[n]).abs().max()) for n in g0)
        out[name] = {"loss": abs(loss - loss0), "ppl_rel": abs(ppl - ppl0) / ppl0, "grads": gdiff}
        if abs(loss - loss0) > 1e-5 or gdiff > 1e-5:
            raise AssertionError(f"{name} differs from the unfused step: {out[name]}")
    torch.manual_seed(0)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = common.parser(__doc__)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--memory-of", default="", help=argparse_hidden())
    args = ap.parse_args(argv)
    common.set_threads(args.threads)
    if args.memory_of:
        print(json.dumps(peak_of_step(args.memory_of)))
        return
    started = common.machine()
    memory = {}
    for name in VARIANTS:
        cmd = [sys.executable, __file__, "--memory-of", name, "--threads", str(args.threads)]
        memory[name] = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
        print(f"{name:<16} step peak above resident {memory[name]['step_peak'] / 2**20:8.1f} MiB", flush=True)
    sessions = {name: session(chunk) for name, chunk in VARIANTS.items()}
    batch = next(sessions["unfused"].train_loader)
    diff = check_same(sessions, batch)
    rounds = 3 if args.quick else args.rounds
    times = common.interleaved({n: step_fn(s, batch) for n, s in sessions.items()}, rounds=rounds, steps=1,
                               warmup=1)
    res: dict[str, Any] = {"size": SIZE, "variants": VARIANTS, "max_abs_diff": diff, "memory": memory,
                           "rounds": rounds}
    for clock in ("cpu", "wall"):
        t = times[clock]
        res[clock] = {f"{n}_s": common.summary(v) for n, v in t.items()}
        res[clock]["ratio_vs_unfused"] = {n: common.ratios(t["unfused"], v) for n, v in t.items()}
    for n in VARIANTS:
        r = res["cpu"]["ratio_vs_unfused"][n]
        print(f"{n:<16} step {res['cpu'][f'{n}_s']['median'] * 1e3:7.1f} ms CPU; unfused / this {r['median']:.3f} "
              f"(rounds {r['min']:.3f}..{r['max']:.3f})", flush=True)
    common.write(common.out_path(args, "lm_loss"), res, started)


def argparse_hidden() -> str:
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
