"""`l3m generate RUN_DIR_OR_CHECKPOINT --prompt "..."`: the command-line glue.

Exit codes: 0 generated; 1 the weights do not fit the run's program, or the program does not
compile; 2 usage or input (no such run or checkpoint, a model with no causal decoder, an empty
prompt, a tokenizer that is not there, a bad setting).
"""

from __future__ import annotations

import argparse
import json
import sys


def add_parser(sub) -> None:
    s = sub.add_parser("generate", help="continue prompts with a trained decoder (LLM, Llama-style, AIMv2 captions)")
    s.add_argument("run", metavar="RUN_DIR_OR_CHECKPOINT", help="a run directory, a checkpoint, or a weights file "
                   "with --file")
    s.add_argument("--prompt", action="append", default=[], metavar="TEXT",
                   help="the text to continue (repeat for a batch)")
    s.add_argument("--max-new-tokens", type=int, default=32, metavar="N")
    s.add_argument("--temperature", type=float, default=0.0, metavar="T", help="0 (the default): greedy")
    s.add_argument("--top-p", type=float, default=1.0, metavar="P", help="nucleus sampling: keep the most likely "
                   "tokens up to this probability mass")
    s.add_argument("--seed", type=int, default=0, metavar="S")
    s.add_argument("--no-cache", action="store_true", help="recompute every token's keys and values each step")
    s.add_argument("--image", metavar="PATH", help="the image a captioning decoder (AIMv2) describes")
    s.add_argument("--device", metavar="DEVICE", help="cpu, cuda, cuda:1, ... (default: cuda when there is one)")
    s.add_argument("--file", metavar="FILE.l3m", help="the program of a weights file outside a run directory")
    s.add_argument("overrides", nargs="*", metavar="PATH=VALUE", help="overrides of the program")
    s.add_argument("--json", action="store_true", help="one JSON object per prompt: {\"prompt\": ..., \"completion\": ...}")
    s.set_defaults(func=cmd_generate)


def cmd_generate(args: argparse.Namespace) -> int:
    from l3m.dsl.diagnostics import CompileError
    from l3m.generation.api import check_request, run
    from l3m.generation.decode import Settings
    from l3m.generation.loading import GenerateError, WeightsMismatch, load

    if not args.prompt:
        print("error: l3m generate: give at least one --prompt", file=sys.stderr)
        return 2
    settings = Settings(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                        seed=args.seed, use_cache=not args.no_cache)
    try:
        check_request(list(args.prompt), settings)
        loaded = load(args.run, args.file, list(args.overrides), args.device)
        result = run(loaded, list(args.prompt), settings, args.image)
    except CompileError as e:
        errors = [d for d in e.diagnostics if d.is_error]
        if errors and all(d.code == "E811" for d in errors):  # the run's tokenizer is not there (any more)
            print(f"error: l3m generate: {errors[0].message}", file=sys.stderr)
            return 2
        print(str(e), file=sys.stderr)
        return 2 if all(d.code == "E002" for d in errors) else 1
    except WeightsMismatch as e:
        print(f"error: l3m generate: {e}", file=sys.stderr)
        return 1
    except (GenerateError, OSError, ValueError) as e:
        print(f"error: l3m generate: {e}", file=sys.stderr)
        return 2
    if args.json:  # one object per prompt, so a batch can be split back into its samples
        for prompt, text in zip(args.prompt, result.texts):
            print(json.dumps({"prompt": prompt, "completion": text}), flush=True)
        return 0
    for prompt, text in zip(args.prompt, result.texts):
        print(prompt + text, flush=True)
    return 0
