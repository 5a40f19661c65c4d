"""`l3m eval TARGET --suite NAME ...`: the flags of the suites and the command that runs one.

TARGET is a run directory (its recorded program, overrides and newest checkpoint) or a `.l3m`
file with `--checkpoint`. Exit codes: 0 done, 1 the program does not compile or build, 2 bad
input (a missing file, a flag the suite needs, a checkpoint that cannot be read).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from pathlib import Path

from l3m.cli import positive_int
from l3m.evals.errors import EvalInputError
from l3m.evals.registry import SUITES, suite_function


def add_suite_arguments(sp: argparse.ArgumentParser) -> None:
    """The suite flags of `l3m eval` (all optional: without --suite, eval runs the file's own eval data)."""
    g = sp.add_argument_group("evaluation suites (--suite)")
    g.add_argument("--suite", choices=sorted(SUITES), metavar="NAME",
                   help="run a standard protocol instead of the file's eval data: " + "; ".join(
                       f"{n}: {h}" for n, (_, _, h) in SUITES.items()))
    g.add_argument("--images", metavar="DIR", help="clip-zeroshot: class folders (root/<class>/<image>)")
    g.add_argument("--classes", metavar="FILE", help="clip-zeroshot: one class name per line, in sorted folder "
                   "order (default: the folder names)")
    g.add_argument("--templates", metavar="FILE", help="clip-zeroshot: prompt templates, one per line, each with "
                   "'{}' for the class name (default: 'a photo of a {}.')")
    g.add_argument("--pairs", metavar="FILE.jsonl", help="clip-retrieval: {\"image\": PATH, \"text\": CAPTION} lines")
    g.add_argument("--image-emb", metavar="KEY", help="clip-*: the image embedding key (default: ClipLoss's)")
    g.add_argument("--text-emb", metavar="KEY", help="clip-*: the text embedding key (default: ClipLoss's)")
    g.add_argument("--image-size", type=positive_int, metavar="N", help="image side (default: the program's)")
    g.add_argument("--train", metavar="DIR", help="probes: class folders to train the probe on")
    g.add_argument("--val", metavar="DIR", help="probes: class folders to report top-1 on")
    g.add_argument("--features", metavar="BLOCK", help="probes: the block whose output is probed "
                   "(default: the last trunk block that reads the image)")
    g.add_argument("--steps", type=positive_int, default=500, metavar="N", help="probes: training steps (500)")
    g.add_argument("--lr", type=float, default=1e-2, help="probes: peak learning rate (1e-2)")
    g.add_argument("--weight-decay", type=float, default=0.05, help="probes: AdamW weight decay (0.05)")
    g.add_argument("--probe-heads", type=positive_int, default=None, metavar="N",
                   help="attentive-probe: attention heads (default: a divisor of the width near width/64)")
    g.add_argument("--text", nargs="+", metavar="PATH", help="perplexity: text files, JSONL files or folders")
    g.add_argument("--text-field", default="text", help="perplexity: the JSONL field holding the text")
    g.add_argument("--stride", type=positive_int, default=None, metavar="N",
                   help="perplexity: window step in tokens (default: the context, windows not overlapping)")
    g.add_argument("--tasks", metavar="A,B", help="lm-eval: task names")
    g.add_argument("--task-dir", metavar="DIR", help="lm-eval: a folder of task YAML files of your own (offline tasks)")
    g.add_argument("--limit", type=float, default=None, help="lm-eval: examples per task (or a fraction)")
    g.add_argument("--batch-size", type=positive_int, default=256, metavar="N",
                   help="samples per forward and per probe step (256)")
    g.add_argument("--json", action="store_true", help="print the results as one JSON object on stdout")
    g.add_argument("--no-log", action="store_true", help="do not add the results to the run's metrics.jsonl, "
                   "wandb or TensorBoard")


def main(args: argparse.Namespace, target: str, overrides: list[str]) -> int:
    """Run `args.suite` on TARGET; print and log its results."""
    from l3m.evals import report
    from l3m.evals.model import load_model
    from l3m.train.api import ProgramErrors

    start = time.perf_counter()
    try:
        m = load_model(target, overrides, args.checkpoint, tuple(args.extension))
        results = suite_function(args.suite)(m, args)
    except ProgramErrors as e:
        return e.code
    except (EvalInputError, OSError, ValueError, KeyError) as e:
        if os.environ.get("L3M_DEBUG"):
            traceback.print_exc()
        print(f"l3m eval: {e if not isinstance(e, KeyError) else e.args[0]}", file=sys.stderr)
        return 2
    seconds = time.perf_counter() - start
    if args.json:
        print(report.as_json(args.suite, m.step, results))
    else:
        report.table(f"{args.suite} (step {m.step}, {seconds:.1f} s)", results)
    if m.run_dir is not None and not args.no_log:
        try:
            notes = report.log_to_run(Path(m.run_dir), report.record(args.suite, m.step, results, seconds),
                                      m.session.log)
        except OSError as e:
            notes = [f"not logged to the run: {e}"]
        for note in notes:
            print(f"note: {note}", file=sys.stderr)
    return 0
