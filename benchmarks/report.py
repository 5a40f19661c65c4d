"""Regenerate benchmarks/RESULTS.md (and its SVG charts) from the JSON in benchmarks/results/.

    python benchmarks/report.py                      # results/ -> RESULTS.md + results/*.svg
    python benchmarks/report.py --results DIR --out FILE

A section whose JSON is missing says so instead of failing, so a partial run still renders.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import svg

HERE = Path(__file__).resolve().parent


def load(results: Path, name: str) -> dict[str, Any] | None:
    path = results / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def ms(x: float | None) -> str:
    return "–" if x is None else f"{x * 1e3:.1f}" if x < 10 else f"{x * 1e3:.0f}"


def pct(x: float | None, signed: bool = False) -> str:
    return "–" if x is None else f"{x:+.1%}" if signed else f"{x:.1%}"


def mark(ok: bool | str | None) -> str:
    return "–" if ok is None else ok if isinstance(ok, str) else "yes" if ok else "**no**"


def verdict(ratio: float, aa: float, target: float) -> bool | str:
    """True when the ratio meets the target; "within noise" when it misses by less than the A/A
    row deviates from 1 (at least 0.5%): a difference that size is not there to be seen."""
    if ratio <= target:
        return True
    return "within noise" if ratio - target <= max(abs(aa - 1.0), 0.005) else False


def load_note(d: dict[str, Any]) -> str:
    m = d.get("machine", {})
    a, b = m.get("load_avg") or [None], m.get("load_avg_end") or [None]
    if a[0] is None:
        return ""
    return f"(1-minute load average {a[0]:.1f} at the start, {b[0]:.1f} at the end; {m.get('threads')} torch thread(s))"


# -- sections ----------------------------------------------------------------------------------


def frontend(d: dict[str, Any], charts: Path) -> tuple[str, list]:
    rows, stages = d["rows"], ("parse", "resolve", "check", "schedule")
    paused = all("gc_paused_median_s" in r for r in rows)

    def cells(r: dict[str, Any]) -> list[str]:
        t = r["gc_paused_median_s"] if paused else r["median_s"]
        return [f"{t[s] * 1e3:.1f} ({t[s] / t['total']:.0%})" for s in stages]

    head = ["blocks", "lines", "total (ms)"] + (["GC paused (ms)"] if paused else [])
    head += [f"{s} (share{', GC paused' if paused else ''})" for s in stages]
    body = [table(head, [[f"{r['blocks']:,}", f"{r['lines']:,}", f"{r['median_s']['total'] * 1e3:.1f}",
                          *([f"{r['gc_paused_median_s']['total'] * 1e3:.1f}"] if paused else []), *cells(r)]
                         for r in rows])]
    x = [r["blocks"] for r in rows]
    y = [r["median_s"]["total"] for r in rows]
    n = len(x)
    mx, my = sum(x) / n, sum(y) / n
    slope = sum((a - mx) * (b - my) for a, b in zip(x, y)) / sum((a - mx) ** 2 for a in x)
    icpt = my - slope * mx
    ss = sum((b - (icpt + slope * a)) ** 2 for a, b in zip(x, y))
    r2 = 1 - ss / sum((b - my) ** 2 for b in y)
    body.append(
        f"\nFitted growth: time ∝ blocks^**{d['loglog_slope']:.2f}** (log-log least squares); a straight line "
        f"`t = {icpt * 1e3:.1f} ms + {slope * 1e6:.0f} µs × blocks` fits with R² = {r2:.4f}. "
        f"At {x[-1]:,} blocks the front end spends {d['us_per_block']:.0f} µs per block. `check` is the "
        "checker less the scheduler it runs (the scheduler is timed on its own). Python's garbage "
        "collector fires after a fixed number of allocations, so it lands in the same stage on every "
        "repeat and bills it for everyone's objects; the shares are therefore taken with it paused, "
        "and the *GC paused* column shows what its collections cost in total.\n")
    series = {"total": list(zip(x, y))}
    if paused:
        series["total, GC paused"] = [(r["blocks"], r["gc_paused_median_s"]["total"]) for r in rows]
    for s in stages:
        t = "gc_paused_median_s" if paused else "median_s"
        series[s] = [(r["blocks"], r[t][s]) for r in rows if r[t][s] > 0]
    (charts / "frontend.svg").write_text(svg.line_chart(series, title="Front end time against file size",
                                                        xlabel="blocks in the file", ylabel="seconds"))
    body.append("\n![front end](results/frontend.svg)\n")
    ok = 0.9 <= d["loglog_slope"] <= 1.15
    return "".join(body), [("Front end grows linearly with the file", "linear", f"blocks^{d['loglog_slope']:.2f}", ok)]


def lint_speed(d: dict[str, Any], charts: Path) -> tuple[str, list]:
    rows = d["rows"]
    body = [table(["command", "wall median (ms)", "wall min (ms)", "CPU median (ms)", "CPU min (ms)"],
                  [[f"`{r['command']}`", f"{r['wall_s']['median'] * 1e3:.0f}", f"{r['wall_s']['min'] * 1e3:.0f}",
                    f"{r['cpu_s']['median'] * 1e3:.0f}", f"{r['cpu_s']['min'] * 1e3:.0f}"] for r in rows])]
    body.append(f"\n{d['runs']} cold runs of each command on `{d['file']}`, interleaved; CPU is the child's user + "
                "system time (what the run cost, whatever else held the cores). *No parser cache* is the first run "
                "after an install or a grammar change; `python -c pass` the interpreter alone.\n")
    lint = next(r for r in rows if r["command"] == "lint")
    t = lint["wall_s"]["min"]
    return "".join(body), [("Cold `l3m lint` of the LLM model (wall, best run)", f"< {d['target_s'] * 1e3:.0f} ms",
                            f"{t * 1e3:.0f} ms (median {lint['wall_s']['median'] * 1e3:.0f} ms)", t < d["target_s"])]


def overhead(d: dict[str, Any], charts: Path) -> tuple[str, list]:
    rows, groups, summary = [], {}, []
    for c in d["cases"]:
        name = f"{c['example'].split('_')[0]} {c['size']}"
        for mode in ("eager", "compiled"):
            if mode not in c:
                continue
            r = c[mode]["cpu"]
            rat, aa = r["ratio"], r["aa_ratio"]
            rows.append([f"{c['example']} ({c['size']}, {c['params'] / 1e6:.2f}M params, batch "
                         f"{'×'.join(map(str, c['batch']))})", mode, ms(r["l3m_s"]["median"]),
                         ms(r["plain_s"]["median"]), f"**{rat['median']:.3f}** ({rat['min']:.2f}–{rat['max']:.2f})",
                         f"{aa['median']:.3f}", f"≤ {c[mode]['target']:.2f}",
                         mark(verdict(rat["median"], aa["median"], c[mode]["target"]))])
            g = groups.setdefault(name, {})
            g[mode] = (rat["median"] - 1) * 100
            g["A/A noise"] = max(g.get("A/A noise", 0.0), abs(aa["median"] - 1) * 100)
    for mode in ("eager", "compiled"):
        runs = [c[mode]["cpu"] for c in d["cases"] if mode in c]
        if runs:
            target = d["targets"][mode]
            meds = [r["ratio"]["median"] for r in runs]
            verdicts = [verdict(r["ratio"]["median"], r["aa_ratio"]["median"], target) for r in runs]
            ok = True if all(v is True for v in verdicts) else "within noise" if all(verdicts) else False
            summary.append((f"l3m vs plain PyTorch, {mode} training step", f"≤ {(target - 1):+.0%}",
                            f"{min(meds) - 1:+.1%} … {max(meds) - 1:+.1%}", ok))
    diffs = [c["max_abs_diff"] for c in d["cases"]]
    body = [
        "Step = forward, loss, backward and AdamW step on one fixed batch; ratio = l3m / plain per round "
        "(median, and the range over rounds), in CPU time of the process, which leaves out time other "
        "processes held the core. *A/A* is the same ratio for a second, identical copy of the plain "
        "model: the noise floor of the row.\n\n",
        table(["model", "mode", "l3m (ms)", "plain (ms)", "l3m / plain", "A/A", "target", "met"], rows),
        f"\nBefore timing, each pair is checked to compute the same thing: largest difference "
        f"{max(x['logits'] for x in diffs):.1e} in logits, {max(x['loss'] for x in diffs):.1e} in loss and "
        f"{max(x['grads'] for x in diffs):.1e} in any gradient.\n",
    ]
    (charts / "overhead.svg").write_text(svg.bar_chart(
        {k: {s: g[s] for s in ("eager", "compiled", "A/A noise") if s in g} for k, g in groups.items()},
        title="l3m step time over plain PyTorch (%), median over rounds", ylabel="% slower than plain",
        ref=2.0, ref_label="eager target"))
    body.append("\n![overhead](results/overhead.svg)\n")
    return "".join(body), summary


def throughput(d: dict[str, Any], charts: Path) -> tuple[str, list]:
    rows = []
    for r in d["examples"]:
        f, b = r["fp32"], r["bf16"]
        rows.append([r["example"], r["samples_per_step"], f"{r['flops_per_sample'] / 1e6:.1f}" if r["flops_per_sample"] else "–",
                     ms(f["step_s"]["median"]), f"{f['samples_per_s']:,.0f}",
                     f"{f['tokens_per_s']:,.0f}" if f["tokens_per_s"] else "–", pct(f["mfu"]),
                     ms(b["step_s"]["median"]), f"{b['samples_per_s']:,.0f}", pct(b["mfu"])])
    peak = d["peak_flops"]
    body = [
        f"Matmul peak measured in this run (1024² matmul, best of several): fp32 **{peak['fp32'] / 1e9:.0f} GFLOP/s**, "
        f"bf16 **{peak['bf16'] / 1e9:.0f} GFLOP/s** per thread (the trainer's own fp32 reference, "
        f"`l3m.train.perf`, gave {d['trainer_peak_fp32'] / 1e9:.0f}). Step = `Trainer.train_step` (batch loading, "
        "forward, loss, backward, clipping, AdamW, schedule); MFU = FLOPs per sample (`l3m.plan`) × samples/s "
        "÷ peak of the same dtype. Tokens/s counts the integer inputs (text tokens); image-only models "
        "read none.\n\n",
        table(["example", "batch", "MFLOP/sample", "fp32 step (ms)", "fp32 samples/s", "fp32 tokens/s", "fp32 MFU",
               "bf16 step (ms)", "bf16 samples/s", "bf16 MFU"], rows),
    ]
    groups = {r["example"].replace("_digits", "").replace("_bytes", ""): {"fp32": 100 * (r["fp32"]["mfu"] or 0),
                                                                         "bf16": 100 * (r["bf16"]["mfu"] or 0)}
              for r in d["examples"]}
    (charts / "mfu.svg").write_text(svg.bar_chart(groups, title="MFU per example (% of the same-dtype matmul peak)",
                                                  ylabel="MFU %"))
    body.append("\n![MFU](results/mfu.svg)\n")
    summary = []
    for dt in ("fp32", "bf16"):
        mfus = [r[dt]["mfu"] for r in d["examples"] if r[dt]["mfu"]]
        if mfus:
            summary.append((f"MFU of the examples, {dt} (same-dtype matmul peak of this run)", "–",
                            f"{min(mfus):.1%} … {max(mfus):.1%}", None))
    mid = next((r for r in d["examples"] if r["example"] == "llm_bytes@mid"), None)
    if mid is not None and mid["fp32"]["mfu"]:
        summary.append(("MFU of the mid-size LLM (dim 256, depth 4), fp32", "≥ 40%", pct(mid["fp32"]["mfu"]),
                        mid["fp32"]["mfu"] >= 0.40))
    return "".join(body), summary


def compile_(d: dict[str, Any], charts: Path) -> tuple[str, list]:
    rows = []
    for r in d["runs"]:
        if "error" in r:
            rows.append([r["example"], r["mode"], "failed: " + r["error"].strip().splitlines()[-1][:80], "", "", "",
                         "", ""])
            continue
        rows.append([r["example"], r["mode"], f"{r['compile_s']:.1f}", ms(r["eager_step_s"]["median"]),
                     ms(r["compiled_step_s"]["median"]),
                     f"**{r['speedup']['median']:.2f}×** ({r['speedup']['min']:.2f}–{r['speedup']['max']:.2f})",
                     r["graphs"], r["graph_breaks"]])
    body = [
        f"Backend `{d['backend']}`, each run in a fresh process with an empty inductor cache (cold compile "
        "= first compiled step less an eager step). *layers*: `train { compile = true }` as `l3m train` "
        "applies it (`l3m.dist` compiles each transformer layer); *whole*: `model.compile(fullgraph=True)` "
        "on the MetaModel. Speed-up = eager step / compiled step (`Trainer.train_step`, interleaved).\n\n",
        table(["example", "way", "cold compile (s)", "eager step (ms)", "compiled step (ms)", "speed-up", "graphs",
               "graph breaks"], rows),
    ]
    whole = [r for r in d["runs"] if r["mode"] == "whole" and "error" not in r]
    breaks = sum(r["graph_breaks"] for r in whole)
    summary = [("Whole model compiles as one graph (`fullgraph=True`)", "0 breaks", f"{breaks} breaks",
                breaks == 0)] if whole else []
    return "".join(body), summary


def parallel(d: dict[str, Any], charts: Path) -> tuple[str, list]:
    rows, hooks = [], []
    for c in d["configs"]:
        s, fsdp = c["step_s"], c["runs"]["fsdp"]
        rows.append([f"{c['example']} ({c['size']})", fsdp["global_batch"], ms(s["single_1_thread"]),
                     ms(s["single_2_threads"]), ms(s["fsdp"]), ms(s["fsdp_keep_params"]),
                     f"{c['speedup_vs_1_thread']:.2f}×", pct(c["overhead_vs_ideal"], signed=True),
                     pct(c["keep_params_overhead_vs_ideal"], signed=True),
                     f"{c['first_loss']['single']:.5f} / {c['first_loss']['fsdp']:.5f}"])
        h = fsdp["fsdp_hooks_s_per_step"]
        if h:
            gather = h.get("FSDP::pre_forward", 0) + h.get("FSDP::pre_backward", 0)
            reduce = h.get("FSDP::post_backward_reduce", 0)
            hooks.append([f"{c['example']} ({c['size']})", ms(h["total"]), ms(gather), ms(reduce),
                          ms(h["total"] - gather - reduce)])
    body = [
        "Global batch as the file declares it; FSDP2 through `l3m.dist.parallelize` (`fully_shard` per "
        "layer, block and root over `dp_shard = 2`, gloo), each rank loading half the batch, one thread "
        "per rank. *Keep params* is the same with `train.reshard_after_forward = false`. *Overhead* is "
        "the FSDP step over a perfect split of the one-thread step (t₁ / 2). The first step's loss "
        "(averaged over ranks) matches the single process: same batch, same initial weights.\n\n",
        table(["model", "global batch", "1 proc × 1 thread (ms)", "1 proc × 2 threads (ms)", "FSDP 2 ranks (ms)",
               "FSDP, keep params (ms)", "FSDP speed-up vs 1 thread", "FSDP overhead vs ideal",
               "keep params overhead", "first loss single / FSDP"], rows),
    ]
    if hooks:
        body += ["\nWhere an FSDP step's time goes (rank 0, one profiled stretch, ms per step): inside "
                 "FSDP2's hooks, gathering parameters (before each unit's forward and again before its "
                 "backward), reducing gradients, and the rest (copies, resharding, bookkeeping).\n\n",
                 table(["model", "in FSDP hooks", "all-gathers (pre-forward + pre-backward)",
                        "reduce-scatters", "other"], hooks)]
    same = all(abs(c["first_loss"]["fsdp"] - c["first_loss"]["single"]) <= 1e-4 * abs(c["first_loss"]["single"])
               for c in d["configs"])
    speed = [c["speedup_vs_1_thread"] for c in d["configs"]]
    summary = [("FSDP2 on 2 gloo ranks: same first loss as 1 process", "same", "same" if same else "differs", same),
               ("FSDP2 on 2 gloo ranks: step speed vs 1 process, 1 thread", "–",
                f"{min(speed):.2f}× … {max(speed):.2f}×", None)]
    return "".join(body), summary


def checkpointing(d: dict[str, Any], charts: Path) -> tuple[str, list]:
    rows = []
    for c in d["configs"]:
        for m, r in c["modes"].items():
            rows.append([f"{c['example']} ({c['size']})", m, f"{r['peak_mib']['total']:.1f}",
                         f"{r['peak_mib'].get('activation_after_forward', r['peak_mib']['activation']):.1f}",
                         pct(r["peak_vs_none"] - 1, signed=True),
                         ms(r["step_s"]["median"]), f"{r['time_vs_none']['median']:.2f}×",
                         f"{c['first_loss'][m]:.5f}"])
    body = [
        "`train.activation_checkpointing` through `l3m.dist` (each transformer layer wrapped). Peak = the "
        "largest total of live tensors during one step (parameters, gradients, AdamW state, activations, "
        "temporaries) as torch's `MemTracker` counts them; *activations* are those alive when the "
        "forward ends, what the backward will read. Step times come from separate, interleaved rounds.\n\n",
        table(["model", "mode", "peak (MiB)", "activations after forward (MiB)", "peak vs none", "step (ms)",
               "time vs none", "first loss"], rows),
    ]
    summary = []
    for m in ("selective", "full"):
        peak = [c["modes"][m]["peak_vs_none"] - 1 for c in d["configs"]]
        slow = [c["modes"][m]["time_vs_none"]["median"] - 1 for c in d["configs"]]
        summary.append((f"Activation checkpointing, {m}: peak memory / step time vs none", "–",
                        f"{min(peak):+.0%} … {max(peak):+.0%} / {min(slow):+.0%} … {max(slow):+.0%}", None))
    return "".join(body), summary


def dataloading(d: dict[str, Any], charts: Path) -> tuple[str, list]:
    rows, worst = [], {}
    for e in d["examples"]:
        for r in e["runs"]:
            rows.append([e["example"], r["workers"], ms(r["step_s"]), f"{r['wait_s']['median'] * 1e3:.2f}",
                         pct(r["wait_fraction"]), f"{r['loader_alone_batch_s'] * 1e3:.2f}",
                         f"{r['loader_headroom']:.0f}×" if r["loader_headroom"] else "–"])
            worst[r["workers"]] = max(worst.get(r["workers"], 0.0), r["wait_fraction"])
    body = [
        "The step's wait for its batch, timed inside `Trainer.train_step`, over "
        f"{d['steps']} steps after warm-up. *Headroom* = step time ÷ the loader's own time per batch.\n\n",
        table(["example", "workers", "step (ms)", "wait per step (ms, median)", "share of step time",
               "loader alone (ms/batch)", "headroom"], rows),
    ]
    summary = [("Loader keeps the step fed (share of step time spent waiting)", "small",
                ", ".join(f"≤ {v:.1%} with {w} workers" for w, v in sorted(worst.items())), worst.get(0, 1) < 0.1)]
    return "".join(body), summary


def training(d: dict[str, Any], charts: Path) -> tuple[str, list]:
    rows = []
    for r in d["runs"]:
        ev = r.get("eval", {})
        held = ", ".join(f"{k} {v:.3f}" for k, v in ev.items() if k not in ("step", "samples") and isinstance(v, float))
        rows.append([r["example"], r.get("steps", "–"), f"{r['wall_s']:.0f}",
                     f"{r['first']['loss']:.3f} (step {r['first']['step']})" if "first" in r else "–",
                     f"{r['last']['loss']:.3f}" if "last" in r else "–", held or "–",
                     mark(r["under_limit"]), mark(r.get("loss_fell"))])
    body = [
        "`python -m l3m train examples/<name>.l3m` with the file's own settings (wandb offline, "
        "evaluation and checkpoints included; torch threads as the line above says); wall time of the "
        "whole command, Python's start-up included. First loss = the first logged training loss.\n\n",
        table(["example", "steps", "wall (s)", "first loss", "last loss", "held-out (final eval)", "< 3 min",
               "loss fell"], rows),
    ]
    ok = all(r["under_limit"] and r.get("loss_fell") for r in d["runs"])
    slowest = max(r["wall_s"] for r in d["runs"])
    return "".join(body), [("Every example trains in < 3 min with the loss falling", "< 180 s",
                            f"slowest {slowest:.0f} s", ok)]


def data_scale(d: dict[str, Any], charts: Path) -> tuple[str, list]:
    runs = [r for r in (d, load(charts, "data_scale_2gb_bytes")) if r]
    rows = [[f"{r['corpus_text_bytes'] / 1e9:.2f} GB", r["tokenizer"], f"{r['tokens']:,}", r["shards"],
             f"{r['prepare_s']:.0f}", f"{r['prepare_tokens_per_s'] / 1e6:.2f}M",
             f"{r['peak_rss_mb_train']:.0f}", f"{r['rss_mb_after_imports']:.0f}" if "rss_mb_after_imports" in r
             else "–", f"{r['loader_tokens_per_s_w0'] / 1e6:.2f}M", f"{r['loader_tokens_per_s_w2'] / 1e6:.2f}M"]
            for r in runs]
    body = [
        "Not part of `run_all.py` (a 2 GB corpus takes minutes): `python benchmarks/data_scale.py --size 2GB "
        "--tokenizer bytes` and `--size 200MB` (the text example's shipped BPE). A JSONL corpus of the "
        "standard library's sources is prepared into token shards (2 workers) and the text example's GPT "
        "trains 40 steps on `TokenShards` in a child process that reports its peak RSS; then the loader "
        "alone is timed. The 1-minute load average of the shared machine was 3–10 during these runs.\n\n",
        table(["corpus", "tokenizer", "tokens", "shards", "prepare (s)", "prepare tokens/s",
               "train peak RSS (MB)", "RSS after imports (MB)", "loader tokens/s, 0 workers",
               "loader tokens/s, 2 workers"], rows),
    ]
    big = max(runs, key=lambda r: r["corpus_text_bytes"])
    return "".join(body), [("Training on a 2 GB corpus: peak RSS", "< 1 GB",
                            f"{big['peak_rss_mb_train']:.0f} MB ({big['corpus_text_bytes'] / 1e9:.1f} GB, "
                            f"{big['tokenizer']})", big["peak_rss_mb_train"] < 1000)]


def lsp_latency(d: dict[str, Any], charts: Path) -> tuple[str, list]:
    rows = d["rows"]
    def med(r: dict, k: str) -> str:
        return f"{r[k]['median']:.0f}" if r.get(k) else "–"

    body = [table(["file", "lines", "edit → diagnostics, median (ms)", "p90 (ms)", "min–max (ms)",
                   "server CPU per edit (ms)", "compile, whole parse, CPU (ms)", "compile, incremental, CPU (ms)",
                   "newline edit (ms)", "comment edit (ms)"],
                  [[r["file"], r["lines"], f"{r['edit_ms']['median']:.0f}", f"{r['edit_p90_ms']:.0f}",
                    f"{r['edit_ms']['min']:.0f}–{r['edit_ms']['max']:.0f}",
                    f"{(r['server_cpu_per_edit_ms'] or {}).get('median', float('nan')):.0f}",
                    f"{r['compile_in_process_cpu_ms']['median']:.0f}", med(r, "compile_incremental_cpu_ms"),
                    med(r, "newline_edit_ms"), f"{r['comment_edit_ms']['median']:.0f}"]
                   for r in rows])]
    body.append(f"\nA real `l3m lsp` process; {rows[0]['edit_ms']['n']} edits per file, each alternately "
                "adding and fixing a misspelt key halfway down (one E101), timed from sending `didChange` to reading "
                "the `publishDiagnostics` of that version (the first edit after a pause is compiled at once; later "
                f"ones within {d['debounce_ms']:.0f} ms are debounced). *realistic*: comments, blank lines and two-line "
                "calls (400 blocks per 1,000 lines); *chain*: one block per line. The server parses incrementally (an "
                "edit re-parses the node it touched) and replays the node calls that nothing changed (*compile, "
                "incremental* against *compile, whole parse*, both in one process without the server); *newline "
                "edit*: an empty line inserted or removed halfway down, so every node below moves (its parse and its "
                "call are moved, not redone); *comment edit*: typing in a comment, which moves no token, "
                "re-publishes the last result.\n")
    big = next((r for r in rows if r["file"].startswith("realistic") and r["lines"] >= 1000), rows[-1])
    return "".join(body), [("Diagnostics after an edit to a 1,000-line file (median)", f"≤ {d['target_ms']:.0f} ms",
                            f"{big['edit_ms']['median']:.0f} ms", big["edit_ms"]["median"] <= d["target_ms"])]


def generate_speed(d: dict[str, Any], charts: Path) -> tuple[str, list]:
    def rng(x: dict) -> str:
        return f"{x['median']:,.0f} ({x['min']:,.0f}–{x['max']:,.0f})"

    rows = d["configs"]
    body = table(["model", "params", "batch", "with the KV cache (tokens/s)", "without (tokens/s)", "speed-up"],
                 [[c["size"], f"{c['params']:,}", c["batch"], rng(c["tokens_per_s"]["cache"]),
                   rng(c["tokens_per_s"]["no_cache"]), f"×{c['speedup']['median']:.1f}"] for c in rows])
    first = rows[0]
    body += (f"\nGreedy decoding of {first['new_tokens']} new tokens after a {first['prompt_tokens']}-token prompt "
             "per sequence, a Llama-style model (GQA, RoPE, random weights), fp32; the aimv2_digits row is AIMv2's "
             "caption decoder (4 images, a 2-token prompt, 62 new tokens; the staged cache against recomputing "
             "the whole caption). Median and range over interleaved rounds. Both variants produce the same "
             "tokens (checked in the script and in tests/generate/test_cache.py, test_aimv2_cache.py).\n")
    big = max((c for c in rows if c["size"] in ("tiny", "mid")), key=lambda c: (c["params"], c["batch"]))
    return body, [(f"`l3m generate`: KV cache vs recomputing, {big['params'] / 1e6:.1f}M params, batch {big['batch']}",
                   "faster", f"×{big['speedup']['median']:.1f}", big["speedup"]["median"] > 1)]


def memory_plan(d: dict[str, Any], charts: Path) -> tuple[str, list]:
    ok = [r for r in d["rows"] if "error" in r]
    body = table(["example", "overrides", "predicted (MiB)", "measured (MiB)", "error"],
                 [[r["example"], " ".join(r["overrides"]) or "–", f"{r['predicted_mib']:.2f}",
                   f"{r['measured_mib']:.2f}", pct(r["error"], signed=True)] for r in ok])
    failed = [r for r in d["rows"] if "error" not in r]
    if failed:
        body += "\nNot measured: " + "; ".join(f"{r['example']} ({r['error_text']})" for r in failed) + "\n"
    body += ("\nPredicted: the per-rank peak `l3m plan` prints (a training step simulated on the meta device, "
             "see l3m/plan_memory.py). Measured: the CPU allocator's peak during the second `Trainer.train_step()` "
             "of the example (torch profiler memory events, plus the parameters, buffers and optimizer state alive "
             "at the start). One process, the example's own batch size.\n")
    worst = max((abs(r["error"]) for r in ok), default=None)
    return body, [("`l3m plan` peak memory vs a measured CPU step, worst example", "≤ 10%",
                   pct(worst), None if worst is None else worst <= 0.10)]


def gpu_llm(d: dict[str, Any], charts: Path) -> tuple[str, list]:
    m = d["machine"]
    ok = [r for r in d["rows"] if "error" not in r]
    body = (f"{m.get('gpu', 'GPU')}, torch {m.get('torch', '?')}; bf16 matmul peak measured in the run "
            f"{d['bf16_peak_flops'] / 1e12:.0f} TFLOP/s (8192³), datasheet dense bf16 "
            f"{d['datasheet_flops'] / 1e12:.0f} TFLOP/s. `{Path(d['file']).name}`: the LLM of `models/llm.l3m` "
            "at its own size on random tokens, bf16 autocast, fused AdamW, one GPU; the trainer's own "
            "`train_step()` timed after warm-up.\n\n")
    body += table(["variant", "params", "tokens/step", "step (ms, median)", "tokens/s", "MFU (measured peak)",
                   "MFU (datasheet)", "first step (s)", "peak memory (GiB)"],
                  [[r["variant"], f"{r['params'] / 1e9:.2f}B", f"{r['tokens_per_step']:,}",
                    f"{r['step_s']['median'] * 1e3:.0f}", f"{r['tokens_per_s']:,.0f}", pct(r["mfu_measured_peak"]),
                    pct(r.get("mfu_datasheet")), f"{r['first_step_s']:.1f}",
                    f"{r['peak_memory_bytes'] / 2**30:.1f}"] for r in ok])
    failed = [r for r in d["rows"] if "error" in r]
    if failed:
        body += "\nFailed: " + "; ".join(f"{r['variant']} ({r['error']})" for r in failed) + "\n"
    best = max((r.get("mfu_datasheet") or 0 for r in ok), default=None)
    return body, [("1.3B LLM on one GPU, bf16: MFU of the datasheet peak (best variant)", "≥ 45%",
                   pct(best), None if best is None else best >= 0.45)]


def _peer_cell(run: dict[str, Any] | None, clock: str, key: str = "ratio") -> str:
    if run is None or key not in run[clock]:
        return "–"
    r = run[clock][key]
    return f"**{r['median']:.3f}** ({r['min']:.2f}–{r['max']:.2f})"


def peers(d: dict[str, Any], charts: Path) -> tuple[str, list]:
    cuda = d.get("device") == "cuda"
    clock = "cuda" if cuda else "cpu"
    rows, summary = [], []
    for c in d["cases"]:
        by = {(r["mode"], r["dtype"]): r for r in c["runs"]}
        for dtype in dict.fromkeys(r["dtype"] for r in c["runs"]):
            eager, comp = by.get(("eager", dtype)), by.get(("compiled", dtype))
            aa = "; ".join(f"{r[clock]['aa_ratio']['median']:.3f}" for r in (eager, comp) if r)
            default_ms = ms(eager[clock]["l3m_default_s"]["median"]) if eager and "l3m_default_s" in eager[clock] else "–"
            rows.append([f"{c['family']} {c['size']} ({c['params'] / 1e6:.2f}M params, batch "
                         f"{'×'.join(map(str, c['batch']))})", c["peer"], dtype,
                         ms(eager[clock]["l3m_s"]["median"]) if eager else "–",
                         ms(eager[clock]["peer_s"]["median"]) if eager else "–", _peer_cell(eager, clock),
                         _peer_cell(comp, clock), default_ms, _peer_cell(eager, clock, "default_ratio"), aa or ms(None)])
    versions = ", ".join(f"{k} {v}" for k, v in d.get("peers", {}).items() if v)
    diffs = [c["max_abs_diff"] for c in d["cases"]]
    where = (f"on {d.get('machine', {}).get('device', 'the GPU')} (CUDA events, bf16 = `torch.autocast('cuda')`)"
             if cuda else "in CPU time of the process (bf16 = `torch.autocast('cpu')`)")
    body = [
        "Step = forward, loss, backward and AdamW step (torch's fused kernel on every side: what `l3m train`, "
        "transformers' Trainer and torchtitan default to) on one fixed batch, the same architecture and weights on "
        f"both sides ({versions}, torch {d.get('machine', {}).get('torch', '?')}); ratio = peer / l3m per round "
        f"(median, and the range over rounds) {where}: **above 1, l3m is faster**. *Compiled* = `torch.compile` of "
        "forward and loss as one graph on both sides. *l3m default compile* = what `l3m train` runs in one process with "
        "`train.compile = true`: `model.compile()` (the whole model), the loss eager; it is set against the peer's "
        "**eager** step (goal: ≥ 1.10). (`train.compile = \"auto\"`, the default, compiles on GPUs only, layer by "
        "layer.) *A/A* is the ratio of a second, identical l3m model to the first (eager; compiled): the noise "
        "floor of the row.\n\n",
        table(["model", "peer", "dtype", "l3m eager (ms)", "peer eager (ms)", "peer / l3m, eager",
               "peer / l3m, compiled", "l3m default compile (ms)", "peer eager / l3m default compile", "A/A"], rows),
        f"\nBefore timing, each pair is checked to compute the same thing in fp32: largest difference "
        f"{max(x['logits'] for x in diffs):.1e} in outputs (logits; CLIP: embeddings and scale), "
        f"{max(x['loss'] for x in diffs):.1e} in loss and {max(x['grads'] for x in diffs):.1e} in any gradient.\n",
    ]
    deviations = {c["peer"]: c["deviation"] for c in d["cases"] if c.get("deviation")}
    if deviations:
        body.append("\nNot the peer's own default: " + "; ".join(f"{k}: {v}" for k, v in deviations.items()) + ".\n")
    if d.get("not_compared"):
        body.append("\nNot compared: " + "; ".join(f"{k}: {v}" for k, v in d["not_compared"].items()) + ".\n")
    for family, peer in dict.fromkeys((c["family"], c["peer"]) for c in d["cases"]):
        runs = [(r[clock]["ratio"]["median"], r[clock]["aa_ratio"]["median"]) for c in d["cases"]
                if c["family"] == family for r in c["runs"]]
        noise = max(abs(a - 1) for _, a in runs)
        summary.append((f"{family} training step{' on the GPU' if cuda else ''}, {peer} / l3m (> 1: l3m faster; "
                        "all sizes, modes, dtypes)",
                        "– (a comparison)", f"{min(x for x, _ in runs):.2f} … {max(x for x, _ in runs):.2f} "
                        f"(A/A within ±{noise:.1%})", None))
    default = [r[clock]["default_ratio"]["median"] for c in d["cases"] for r in c["runs"]
               if "default_ratio" in r[clock]]
    if default:
        summary.append((f"l3m default compile against each peer's eager step{' on the GPU' if cuda else ''}, "
                        "worst row", "≥ 1.10",
                        f"{min(default):.3f} (best {max(default):.2f}; {sum(x >= 1.10 for x in default)} of "
                        f"{len(default)} rows ≥ 1.10)", min(default) >= 1.10))
    return "".join(body), summary


SECTIONS: list[tuple[str, str, str, Callable]] = [
    ("frontend", "1. Front end: time against file size", "frontend.py", frontend),
    ("overhead", "2. Runtime overhead of the language", "overhead.py", overhead),
    ("throughput", "3. Throughput and MFU on the CPU", "throughput.py", throughput),
    ("compile", "4. torch.compile: compile time and speed-up", "torch_compile.py", compile_),
    ("parallel", "5. Parallel overhead: FSDP2 on 2 gloo ranks", "parallel.py", parallel),
    ("checkpointing", "6. Activation checkpointing", "checkpointing.py", checkpointing),
    ("dataloading", "7. Data loading", "dataloading.py", dataloading),
    ("train_examples", "8. Training the examples", "train_examples.py", training),
    ("data_scale", "9. Data at scale: token shards, memory and loader speed", "data_scale.py", data_scale),
    ("lint_speed", "10. Cold `l3m lint`: a new process each run", "lint_speed.py", lint_speed),
    ("lsp_latency", "11. Language server: diagnostics after an edit", "lsp_latency.py", lsp_latency),
    ("generate_speed", "12. Generation: tokens/s with and without the KV cache", "generate_speed.py", generate_speed),
    ("memory_plan", "13. Memory plan: predicted against measured peak", "memory_plan.py", memory_plan),
    ("peers", "14. Peers: l3m against transformers, torchtitan, timm and open_clip", "peers.py", peers),
    ("gpu_llm", "15. One GPU: the 1.3B LLM in bf16", "gpu.sh", gpu_llm),
    ("peers_gpu", "16. Peers on the GPU", "gpu.sh", peers),
]


def render(results: Path, notes: str) -> str:
    charts = results
    parts, summary, machine = [], [], None
    for name, title, script, fn in SECTIONS:
        d = load(results, name)
        parts.append(f"\n## {title}\n\n`benchmarks/{script}`")
        if d is None:
            parts.append(f" — no results yet (`results/{name}.json` is missing).\n")
            continue
        machine = machine or d.get("machine")
        note = load_note(d)
        parts.append(f" {note}\n\n" if note else "\n\n")
        text, rows = fn(d, charts)
        parts.append(text)
        summary += rows
    m = machine or {}
    head = [
        "# l3m benchmarks\n\n",
        "Generated by `python benchmarks/run_all.py` (or `make bench`); each script writes JSON to "
        "`benchmarks/results/` and `benchmarks/report.py` rewrites this file and its charts from them. "
        "Nothing here is asserted by the test suite.\n\n",
        f"Machine: {m.get('cpu', '?')}, {m.get('cores', '?')} cores, torch {m.get('torch', '?')}, "
        f"Python {m.get('python', '?')}, {m.get('date', '?')}.\n\n",
        "The machine is small and shared with other work, so every comparison runs its variants side by "
        "side in one process, in interleaved rounds whose order alternates, and reports the median with "
        "the range over rounds; ratios use the process's CPU time where the point is the work done, not "
        "the time a neighbour held the core. Unless a section says otherwise torch runs one intra-op "
        "thread (steadier on two shared cores).\n\n",
        "## Summary\n\n",
        table(["what", "target", "measured", "met"], [[a, b, c, mark(ok)] for a, b, c, ok in summary]),
    ]
    return "".join(head) + "".join(parts) + (f"\n## Notes\n\n{notes}" if notes else "")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", type=Path, default=HERE / "results")
    ap.add_argument("--out", type=Path, default=HERE / "RESULTS.md")
    ap.add_argument("--notes", type=Path, default=HERE / "NOTES.md",
                    help="hand-written analysis appended to the report (kept out of the generated tables)")
    args = ap.parse_args(argv)
    notes = args.notes.read_text() if args.notes.exists() else ""
    args.out.write_text(render(args.results, notes))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
