"""Data at scale: a corpus of SIZE bytes -> `l3m data prepare` -> training on `TokenShards`, with the memory it takes.

1. Builds a JSONL corpus of about SIZE bytes of text (the standard library's .py files, one record
   each, repeated in a new shuffled order on every pass) in a temporary directory.
2. Runs `l3m data prepare` on it (the shipped 2k BPE of the text example, or --tokenizer): wall time
   and tokens/s.
3. Trains the text example's GPT (examples/llm_bytes.l3m's sizes) on `TokenShards` over the shards
   for a few dozen steps, in a child process that reports its own peak RSS.
4. Times the loader alone on the shards (no model): tokens/s with 0 and 2 workers.

One summary line at the end; the numbers also go to benchmarks/results/data_scale.json (--out).
The corpus and shards are deleted afterwards unless --keep.

    python benchmarks/data_scale.py                  # 2 GB
    python benchmarks/data_scale.py --size 200MB --workers 2
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

PROGRAM = """l3m 1
# The text example (examples/llm_bytes.l3m) on prepared token shards instead of the raw text.
import "{models}/llm.l3m" as llm

let context = 64
data {{
  train: TokenShards(root = "{root}", seq_len = context, batch_size = 16) -> tokens, targets
}}
model gpt = llm.GPT(vocab = {vocab}, context = context, dim = 64, depth = 2, heads = 2) tokens -> logits
loss   ce:  LMCrossEntropy()   logits, targets -> loss
optimizer AdamW(lr = 3e-3, betas = [0.9, 0.95], weight_decay = 0.1, no_decay = ["*bias", "*norm*"])
schedule  WarmupCosine(warmup = 0.1)
train     {{ steps = {steps}, dtype = fp32, grad_clip = 1.0, log_every = 10, checkpoint_every = 0 }}
"""


def parse_size(text: str) -> int:
    units = {"kb": 10**3, "mb": 10**6, "gb": 10**9, "k": 10**3, "m": 10**6, "g": 10**9, "b": 1}
    t = text.strip().lower()
    for suffix in sorted(units, key=len, reverse=True):
        if t.endswith(suffix):
            return int(float(t[: -len(suffix)]) * units[suffix])
    return int(t)


def peak_rss_mb(who: int = resource.RUSAGE_SELF) -> float:
    return resource.getrusage(who).ru_maxrss / 1024  # KiB on Linux


def current_rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def build_corpus(path: Path, size: int, seed: int = 0) -> tuple[int, int]:
    """A JSONL file of about `size` bytes of text; returns (text bytes, records)."""
    from l3m.data import embedded

    docs = []
    for p in embedded.stdlib_files():
        try:
            docs.append(p.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError):
            continue
    rng = random.Random(seed)
    written = records = 0
    with open(path, "w", encoding="utf-8") as f:
        while written < size:
            rng.shuffle(docs)
            for d in docs:
                f.write(json.dumps({"text": d}) + "\n")
                written += len(d.encode("utf-8"))
                records += 1
                if written >= size:
                    break
    return written, records


def child_train(root: str, steps: int, work: str) -> None:
    """Runs in a fresh process: train, then time the loader alone; prints one JSON line."""
    os.environ.setdefault("WANDB_MODE", "disabled")
    import torch  # noqa: F401  (the baseline: what importing the stack costs before any data)

    from l3m.cli import main

    baseline = current_rss_mb()

    prog = Path(work) / "shards_gpt.l3m"
    vocab = json.loads((Path(root) / "manifest.json").read_text())["tokenizer"]["vocab_size"]
    prog.write_text(PROGRAM.format(models=ROOT / "models", root=root, steps=steps, vocab=vocab))
    t0 = time.perf_counter()
    rc = main(["train", str(prog), "-o", str(Path(work) / "run"), "--no-resume"])
    train_s = time.perf_counter() - t0
    rss_train = peak_rss_mb()
    out = {"train_rc": rc, "train_steps": steps, "train_s": train_s, "peak_rss_mb_train": rss_train,
           "rss_mb_after_imports": baseline}

    from l3m.data import build_loader
    from l3m.data.sources import TokenShards

    for workers in (0, 2):
        loader = build_loader(TokenShards(root, seq_len=64, batch_size=16), seed=0, num_workers=workers)
        next(loader)  # workers started, first pages touched
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < 5.0:
            b = next(loader)
            n += b["tokens"].numel()
        out[f"loader_tokens_per_s_w{workers}"] = n / (time.perf_counter() - t0)
        loader.close()
    out["peak_rss_mb_after_loader"] = peak_rss_mb()
    print("CHILD " + json.dumps(out), flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="2GB", help="corpus text size, e.g. 2GB, 200MB (default 2GB)")
    ap.add_argument("--workers", type=int, default=0, help="prepare workers (default: one per CPU)")
    ap.add_argument("--steps", type=int, default=40, help="training steps")
    ap.add_argument("--tokenizer", default="stdlib_bpe_2k",
                    help="the text example's 2k BPE (default), or e.g. bytes: ~50x faster to prepare, 3x the tokens")
    ap.add_argument("--tmp", default=None, help="where to build the corpus (default: the system temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the corpus and shards")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results", help="directory for the JSON")
    ap.add_argument("--child", nargs=3, metavar=("ROOT", "STEPS", "WORK"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child_train(args.child[0], int(args.child[1]), args.child[2])
        return 0

    size = parse_size(args.size)
    work = Path(tempfile.mkdtemp(prefix="l3m_data_scale_", dir=args.tmp))
    res: dict = {"size_arg": args.size, "tokenizer": args.tokenizer, "cpus": os.cpu_count(), "load_before": os.getloadavg()}
    try:
        t0 = time.perf_counter()
        text_bytes, records = build_corpus(work / "corpus.jsonl", size)
        res.update(corpus_text_bytes=text_bytes, corpus_file_bytes=(work / "corpus.jsonl").stat().st_size,
                   corpus_records=records, corpus_build_s=time.perf_counter() - t0)
        print(f"corpus: {text_bytes / 1e6:,.0f} MB of text in {records:,} records "
              f"({res['corpus_build_s']:.0f} s)", flush=True)

        shards = work / "shards"
        cmd = [sys.executable, "-m", "l3m", "data", "prepare", "--tokenizer", args.tokenizer, "--output",
               str(shards), str(work / "corpus.jsonl")] + (["--workers", str(args.workers)] if args.workers else [])
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, text=True, capture_output=True)
        res["prepare_s"] = time.perf_counter() - t0
        sys.stderr.write(proc.stderr)
        if proc.returncode != 0:
            print(f"data_scale: prepare failed ({proc.returncode})", file=sys.stderr)
            return 1
        manifest = json.loads((shards / "manifest.json").read_text())
        res.update(prepare_summary=proc.stdout.strip(), tokens=manifest["tokens"], shards=len(manifest["shards"]),
                   documents=manifest["documents"], prepare_tokens_per_s=manifest["tokens"] / res["prepare_s"],
                   prepare_peak_rss_mb_children=peak_rss_mb(resource.RUSAGE_CHILDREN),
                   shard_bytes_on_disk=sum(p.stat().st_size for p in shards.iterdir()))
        print(f"prepare: {proc.stdout.strip()}", flush=True)

        proc = subprocess.run([sys.executable, __file__, "--child", str(shards), str(args.steps), str(work)],
                              cwd=ROOT, text=True, capture_output=True, env={**os.environ, "WANDB_MODE": "disabled"})
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("CHILD ")), None)
        if proc.returncode != 0 or line is None:
            sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
            print(f"data_scale: training failed ({proc.returncode})", file=sys.stderr)
            return 1
        res.update(json.loads(line[len("CHILD "):]))
        res["load_after"] = os.getloadavg()
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"kept {work}", file=sys.stderr)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "data_scale.json").write_text(json.dumps(res, indent=1) + "\n")
    print(f"data_scale: {res['corpus_text_bytes'] / 1e9:.2f} GB text -> {res['tokens']:,} tokens in {res['shards']} "
          f"shards; prepare {res['prepare_s']:.0f} s = {res['prepare_tokens_per_s'] / 1e6:.2f}M tokens/s; "
          f"train {res['train_steps']} steps peak RSS {res['peak_rss_mb_train']:.0f} MB "
          f"({res['rss_mb_after_imports']:.0f} MB after imports) "
          f"(after loader {res['peak_rss_mb_after_loader']:.0f} MB); loader "
          f"{res['loader_tokens_per_s_w0'] / 1e6:.2f}M tokens/s (0 workers), "
          f"{res['loader_tokens_per_s_w2'] / 1e6:.2f}M tokens/s (2 workers)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
