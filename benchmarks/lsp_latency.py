"""Language-server latency: how long after an edit `l3m lsp` publishes the diagnostics of the new
text, on files of 100 to 1,000 lines (target: 100 ms at 1,000 lines). Measured as an editor sees it: a real server process,
`didChange` sent over stdin, `publishDiagnostics` for that version read from stdout (so it includes
the debounce, the compile, the conversion and JSON-RPC). Each edit alternately introduces a typo in
a key the file reads (one E101) and fixes it, with a pause between edits so that each is compiled on
its own; then as many edits only type in a comment (which moves no token, so the server re-publishes
the last result without compiling), and as many that insert or delete an empty line halfway down (every
piece below it moves one line). The server parses incrementally (`l3m/lsp/incremental.py`): an edit
re-parses the node it touched, and node calls that nothing changed are replayed (`l3m/lsp/resolve_memo.py`). The server's CPU time per edit is read from /proc too (on a shared
machine, other processes inflate wall time far more than CPU time), and the same texts are compiled in
this process, parsing whole and incrementally, to tell the compiler's share from the server's. Writes
benchmarks/results/lsp_latency.json.

    python benchmarks/lsp_latency.py            # 4 files x 30 edits
    python benchmarks/lsp_latency.py --quick    # a smoke run
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, machine, out_path, parser, summary, write

sys.path.insert(0, str(ROOT / "tests" / "lsp"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from frontend import generate as generate_chain  # noqa: E402
from lsp_client import LspClient  # noqa: E402

TARGET_MS = 100.0


def generate_realistic(lines: int) -> str:
    """A model written as people write them: comments, blank lines, calls broken over two lines."""
    out = ["l3m 1", "# A deep stack of small layers, for the language server's latency benchmark.", "",
           "let dim   = 64", "let heads = 4", "",
           "data { train: TextBytes(seq_len = 32, batch_size = 8) -> tokens, targets }", "",
           "model big {", "  preprocessor {", "    embed: TokenEmbedding(vocab = 256, dim = dim)  tokens -> x0", "  }",
           "  trunk {"]
    i = 0
    while len(out) < lines - 10:
        i += 1
        out += [f"    # layer {i}: attention, then a projection",
                f"    t{i}: Transformer(dim = dim, depth = 1, heads = heads, mlp = swiglu, norm = rmsnorm,",
                f"                      causal = true)  x{i - 1} -> h{i}",
                f"    p{i}: Linear(dim, dim, bias = false)  h{i} -> x{i}", ""]
    out += ["  }", f"  head {{ lm: LMHead(dim, 256)  x{i} -> logits }}", "}", "",
            "loss ce: LMCrossEntropy()  logits, targets -> loss", "optimizer AdamW(lr = 1e-3)", "train { steps = 10 }"]
    return "\n".join(out) + "\n"


def typo(text: str) -> str:
    """The text with one read key misspelt, halfway down."""
    lines = text.split("\n")
    mid = len(lines) // 2
    for j in range(mid, len(lines)):
        for marker in (")  x", ") x"):  # the key a block reads, right after its call
            if marker in lines[j]:
                lines[j] = lines[j].replace(marker, marker[:-1] + "xq", 1)
                return "\n".join(lines)
    raise AssertionError("no line to misspell")


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process so far (Linux), which other processes' load does not inflate."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    import os

    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def in_process(texts: list[str], path: Path, repeats: int, incremental: bool = False) -> tuple[list[float], list[float]]:
    """Wall and CPU milliseconds of compiling the texts (in turn) here, without the server; `incremental`:
    with one incremental parser and node-call memo throughout, as the server compiles (the first compile,
    which has nothing to reuse, not timed)."""
    from l3m.lsp.documents import compile_text
    from l3m.lsp.incremental import IncrementalParser
    from l3m.lsp.resolve_memo import ResolveMemo

    parser, memo = (IncrementalParser(), ResolveMemo()) if incremental else (None, None)
    if parser is not None:
        compile_text(str(path), texts[-1], parser=parser, memo=memo)
    wall, cpu = [], []
    for k in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        compile_text(str(path), texts[k % len(texts)], parser=parser, memo=memo)
        wall.append(1000 * (time.perf_counter() - t0))
        cpu.append(1000 * (time.process_time() - c0))
    return wall, cpu


def _rounded(xs: list[float]) -> dict:
    return {k: round(v, 1) if isinstance(v, float) else v for k, v in summary(xs).items()}


def newline(text: str) -> str:
    """The text with an empty line inserted halfway down."""
    lines = text.split("\n")
    lines.insert(len(lines) // 2, "")
    return "\n".join(lines)


def measure(client: LspClient, root: Path, name: str, text: str, edits: int, pause: float) -> dict:
    path = root / f"{name}.l3m"
    uri = client.open(path, text)
    t0 = time.perf_counter()
    first = client.wait_diagnostics(uri, 1, timeout=120)
    cold = 1000 * (time.perf_counter() - t0)
    assert not [d for d in first if d["severity"] == 1], first
    broken = typo(text)
    latencies, cpu, version = [], [], 1
    for k in range(edits):
        version += 1
        new, want_errors = (broken, 1) if k % 2 == 0 else (text, 0)
        time.sleep(pause)
        c0 = cpu_seconds(client.proc.pid)
        t0 = time.perf_counter()
        client.change(uri, version, new)
        diags = client.wait_diagnostics(uri, version, timeout=120)
        latencies.append(1000 * (time.perf_counter() - t0))
        c1 = cpu_seconds(client.proc.pid)
        if c0 is not None and c1 is not None:
            cpu.append(1000 * (c1 - c0))
        errors = [d for d in diags if d["severity"] == 1]
        assert len(errors) == want_errors, (k, errors[:2])
    comment_ms = []  # typing in a comment: no token moves, so the last result is published again
    for k in range(edits):
        version += 1
        time.sleep(pause)
        t0 = time.perf_counter()
        client.change(uri, version, text.replace("\n", f"  # note {k}\n", 1))
        client.wait_diagnostics(uri, version, timeout=120)
        comment_ms.append(1000 * (time.perf_counter() - t0))
    newline_ms = []  # Enter pressed (and undone) halfway down: the pieces below move one line
    for k in range(edits):
        version += 1
        time.sleep(pause)
        t0 = time.perf_counter()
        client.change(uri, version, newline(text) if k % 2 == 0 else text)
        client.wait_diagnostics(uri, version, timeout=120)
        newline_ms.append(1000 * (time.perf_counter() - t0))
    compile_ms, compile_cpu_ms = in_process([text], path, max(3, edits // 3))
    _, incremental_cpu_ms = in_process([broken, text], path, max(4, edits // 2), incremental=True)
    _, moved_cpu_ms = in_process([newline(text), text], path, max(4, edits // 2), incremental=True)
    return {"file": name, "lines": text.count("\n"), "cold_open_ms": round(cold, 1),
            "edit_ms": {k: round(v, 1) if isinstance(v, float) else v for k, v in summary(latencies).items()},
            "comment_edit_ms": {k: round(v, 1) if isinstance(v, float) else v for k, v in summary(comment_ms).items()},
            "edit_p90_ms": round(statistics.quantiles(latencies, n=10)[-1], 1) if len(latencies) >= 10 else None,
            "server_cpu_per_edit_ms": {k: round(v, 1) if isinstance(v, float) else v for k, v in summary(cpu).items()}
            if cpu else None,
            "compile_in_process_ms": {k: round(v, 1) if isinstance(v, float) else v for k, v in summary(compile_ms).items()},
            "compile_in_process_cpu_ms": {k: round(v, 1) if isinstance(v, float) else v
                                          for k, v in summary(compile_cpu_ms).items()},
            "newline_edit_ms": _rounded(newline_ms),
            "compile_incremental_cpu_ms": _rounded(incremental_cpu_ms),
            "compile_incremental_moved_cpu_ms": _rounded(moved_cpu_ms),
            "met": statistics.median(latencies) <= TARGET_MS}


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--edits", type=int, default=30)
    args = ap.parse_args()
    started = machine(with_torch=False)
    sizes = [100] if args.quick else [100, 300, 1000]
    edits = 2 if args.quick else args.edits
    pause = 0.05 if args.quick else 0.3
    files = {f"realistic_{n}": generate_realistic(n) for n in sizes}
    files[f"chain_{sizes[-1]}"] = generate_chain(sizes[-1] - 10)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        client = LspClient(root)
        try:
            client.initialize(root)
            for name, text in files.items():
                row = measure(client, root, name, text, edits, pause)
                rows.append(row)
                print(f"{name:15s} {row['lines']:5d} lines: edit -> diagnostics median {row['edit_ms']['median']:.0f} ms "
                      f"(min {row['edit_ms']['min']:.0f}, max {row['edit_ms']['max']:.0f}); server CPU "
                      f"{(row['server_cpu_per_edit_ms'] or {}).get('median', float('nan')):.0f} ms; compile alone "
                      f"{row['compile_in_process_ms']['median']:.0f} ms ({row['compile_in_process_cpu_ms']['median']:.0f} "
                      f"ms CPU); incremental {row['compile_incremental_cpu_ms']['median']:.0f} ms CPU "
                      f"({row['compile_incremental_moved_cpu_ms']['median']:.0f} ms with lines moved); cold open "
                      f"{row['cold_open_ms']:.0f} ms; comment edit {row['comment_edit_ms']['median']:.0f} ms; "
                      f"newline edit {row['newline_edit_ms']['median']:.0f} ms")
        finally:
            client.close()
    from l3m.lsp.server import DEBOUNCE_S

    write(out_path(args, "lsp_latency"), {"target_ms": TARGET_MS, "debounce_ms": DEBOUNCE_S * 1000, "rows": rows},
          started)


if __name__ == "__main__":
    main()
