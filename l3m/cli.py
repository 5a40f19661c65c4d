"""The `l3m` command line: lint, graph, plan, train, rerun, eval, export, import, blocks, explain.

Exit codes: 0 ok (warnings allowed), 1 errors found, 2 usage or I/O error (also: the run directory is in
use by another run); `train` stopped by SIGTERM / SIGINT after saving a checkpoint: 143 / 130 (128 + signal).
Arguments of the form `path=value` are overrides (`train.steps=10 dim=64`); the rest are files.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import traceback
from pathlib import Path

EXIT_OK, EXIT_ERRORS, EXIT_USAGE = 0, 1, 2


def positive_int(text: str) -> int:
    """An argparse type for counts (`--world-size`, `--nnodes`, `--steps`): argparse exits 2 otherwise."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {n}")
    return n


def _split(items: list[str]) -> tuple[list[str], list[str]]:
    files = [a for a in items if "=" not in a]
    overrides = [a for a in items if "=" in a]
    return files, overrides


def _color(stream) -> bool:
    from l3m.term import color_enabled

    return color_enabled(stream)


def _print_diagnostics(compiled, fmt: str = "text", stream=None) -> None:
    from l3m.dsl.diagnostics import render_github, render_text

    stream = stream or sys.stderr
    for d in compiled.diagnostics:
        if fmt == "github":
            print(render_github(d), file=stream)
        else:
            print(render_text(d, compiled.sources, color=_color(stream)), file=stream)


def _compile(path: str, overrides: list[str], world_size: int | None = None, extensions: tuple[str, ...] = (),
             import_extensions: bool = False):
    """`lint` and `graph` read extension modules from source (never run them); `plan` imports them."""
    paused = gc.isenabled()
    gc.disable()  # importing the front end makes many long-lived objects: collecting them is wasted time
    try:
        from l3m.dsl import compile_file
    finally:
        if paused:
            gc.enable()
    return compile_file(path, overrides, world_size=world_size, extensions=extensions,
                        import_extensions=import_extensions)


def _unreadable(compiled) -> bool:
    return any(d.code == "E002" for d in compiled.diagnostics)


# ----------------------------------------------------------------------------- commands


def cmd_lint(args: argparse.Namespace) -> int:
    from l3m.dsl.diagnostics import explain, render_json

    if args.explain:
        text = explain(args.explain)
        if text is None:
            print(f"l3m: unknown diagnostic code '{args.explain}'", file=sys.stderr)
            return EXIT_USAGE
        print(text, end="")
        return EXIT_OK
    files, overrides = _split(args.items)
    if not files:
        print("l3m lint: give one or more .l3m files", file=sys.stderr)
        return EXIT_USAGE
    all_diags, errors, unreadable = [], 0, False
    for f in files:
        compiled = _compile(f, overrides, args.world_size, tuple(args.extension))
        unreadable |= _unreadable(compiled)
        errors += len(compiled.errors)
        if args.format == "json":
            all_diags += compiled.diagnostics
        else:
            _print_diagnostics(compiled, args.format, sys.stdout if args.format == "github" else sys.stderr)
    if args.format == "json":
        print(render_json(all_diags))
    elif args.format == "text":
        warnings = 0
        print(f"l3m lint: {len(files)} file{'s' * (len(files) != 1)} checked, {errors} error{'s' * (errors != 1)}"
              + (f", {warnings} warnings" if warnings else ""), file=sys.stderr)
    if unreadable:
        return EXIT_USAGE
    return EXIT_ERRORS if errors else EXIT_OK


def cmd_graph(args: argparse.Namespace) -> int:
    from l3m.dsl.render import FORMATS, RenderError, render

    files, overrides = _split(args.items)
    if len(files) != 1:
        print("l3m graph: give exactly one .l3m file", file=sys.stderr)
        return EXIT_USAGE
    fmt = args.format
    if args.render:
        suffix = Path(args.render).suffix.lstrip(".").lower()
        fmt = fmt or suffix
    fmt = fmt or "txt"
    if fmt not in FORMATS:
        print(f"l3m graph: unknown format '{fmt}'; use one of {', '.join('.' + f for f in FORMATS)}", file=sys.stderr)
        return EXIT_USAGE
    compiled = _compile(files[0], overrides, extensions=tuple(args.extension))
    _print_diagnostics(compiled)
    if not compiled.ok:
        return EXIT_USAGE if _unreadable(compiled) else EXIT_ERRORS
    try:
        data = render(compiled.program, compiled.flow, fmt, shapes=compiled.shapes)
    except RenderError as e:
        print(f"l3m graph: {e}", file=sys.stderr)
        return EXIT_USAGE
    if args.render:
        try:
            Path(args.render).parent.mkdir(parents=True, exist_ok=True)
            Path(args.render).write_bytes(data)
        except OSError as e:
            print(f"l3m graph: cannot write '{args.render}': {e.strerror or e}", file=sys.stderr)
            return EXIT_USAGE
        print(f"wrote {args.render}", file=sys.stderr)
    else:
        sys.stdout.buffer.write(data)
    return EXIT_OK


def cmd_plan(args: argparse.Namespace) -> int:
    files, overrides = _split(args.items)
    if len(files) != 1:
        print("l3m plan: give exactly one .l3m file", file=sys.stderr)
        return EXIT_USAGE
    if args.why:
        return _why(files[0], overrides, args)
    device = None
    if args.device:
        from l3m.devices import lookup, names

        device = lookup(args.device)
        if device is None:
            print(f"l3m plan: unknown device {args.device!r}; known: {', '.join(names())}", file=sys.stderr)
            return EXIT_USAGE
    compiled = _compile(files[0], overrides, args.world_size, tuple(args.extension), import_extensions=True)
    _print_diagnostics(compiled)
    if not compiled.ok:
        return EXIT_USAGE if _unreadable(compiled) else EXIT_ERRORS
    from l3m.dsl.diagnostics import render_text
    from l3m.model.blame import ProgramError
    from l3m.plan import format_plan, plan

    try:
        result = plan(compiled.program, world_size=args.world_size or 1, schedule=compiled.flow.model_order(),
                      shapes=compiled.shapes, device=device)
    except ProgramError as e:  # a block that cannot be built, a mesh the model cannot be split over
        print(render_text(e.diagnostic, compiled.sources, color=_color(sys.stderr)), file=sys.stderr)
        return EXIT_ERRORS
    if args.format == "json":
        print(json.dumps(result, indent=2))
    else:
        print(format_plan(result))
    return EXIT_OK


def _why(path: str, overrides: list[str], args: argparse.Namespace) -> int:
    """`plan --why PATH`: compile only (nothing built, extensions read from source), then the value's origin."""
    from l3m.dsl.why import UnknownPath, explain

    compiled = _compile(path, overrides, args.world_size, tuple(args.extension))
    _print_diagnostics(compiled)
    if not compiled.ok:
        return EXIT_USAGE if _unreadable(compiled) else EXIT_ERRORS
    try:
        print(explain(compiled.program, args.why))
    except UnknownPath as e:
        print(f"l3m plan: --why: {e}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK


def cmd_train(args: argparse.Namespace) -> int:
    from l3m.train.api import train_main

    files, overrides = _split(args.items)
    if len(files) != 1:
        print("l3m train: give exactly one .l3m file", file=sys.stderr)
        return EXIT_USAGE
    _note_recorded_overrides(Path(files[0]), overrides)
    return train_main(files[0], overrides, output=args.output, resume=args.resume, extensions=tuple(args.extension),
                      allow_changes=args.allow_changes)


def _note_recorded_overrides(program: Path, overrides: list[str]) -> None:
    """`l3m train RUN_DIR/program.l3m` without the overrides the run was recorded with: say so."""
    if overrides or program.name != "program.l3m" or os.environ.get("RANK", "0") != "0":
        return
    from l3m.train.rundir import NotARunRecord, read_run_record

    try:
        _, recorded, _ = read_run_record(program.parent)
    except (NotARunRecord, OSError):
        return
    if recorded:
        print(f"note: {program} was recorded with the overrides {' '.join(recorded)}; "
              f"`l3m rerun {program.parent}` applies them", file=sys.stderr)


def cmd_rerun(args: argparse.Namespace) -> int:
    """Train a run directory's recorded program again, with its recorded overrides (then any given)."""
    from l3m.train.api import train_main
    from l3m.train.rundir import NotARunRecord, read_run_record

    run = Path(args.run)
    try:
        program, overrides, world = read_run_record(run)
    except NotARunRecord as e:
        print(f"l3m rerun: {e}", file=sys.stderr)
        return EXIT_USAGE
    output = args.output or str(run.parent / f"{run.name}-rerun")
    now = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if os.environ.get("RANK", "0") == "0":
        print(f"rerunning {program} into {output}" + (f" with {' '.join(overrides)}" if overrides else ""),
              file=sys.stderr)
        if world and world != now:
            print(f"note: the run was recorded on {world} process(es), this is {now}", file=sys.stderr)
    return train_main(str(program), [*overrides, *args.overrides], output=output, resume=args.resume)


def cmd_eval(args: argparse.Namespace) -> int:
    from l3m.train.api import eval_main

    files, overrides = _split(args.items)
    if getattr(args, "suite", None):  # a standard protocol (l3m.evals): FILE may be a run directory
        from l3m.evals.cli import main as eval_suite

        if len(files) != 1:
            print("l3m eval: give one run directory or .l3m file", file=sys.stderr)
            return EXIT_USAGE
        return eval_suite(args, files[0], overrides)
    if len(files) != 1:
        print("l3m eval: give exactly one .l3m file", file=sys.stderr)
        return EXIT_USAGE
    if not args.checkpoint:
        print("l3m eval: --checkpoint is required (without --suite)", file=sys.stderr)
        return EXIT_USAGE
    return eval_main(files[0], overrides, checkpoint=args.checkpoint, extensions=tuple(args.extension))


def cmd_export(args: argparse.Namespace) -> int:
    adapters_only = getattr(args, "adapters_only", False)
    if adapters_only and (args.format != "safetensors" or args.to or args.dtype):
        print("l3m export: --adapters-only writes l3m safetensors: it goes without --format, --to and --dtype",
              file=sys.stderr)
        return EXIT_USAGE
    if args.format != "safetensors":
        if args.to:
            print("l3m export: --to renames one safetensors file; --format hf/timm writes a folder: give one",
                  file=sys.stderr)
            return EXIT_USAGE
        from l3m.interop.export import cli_main

        return cli_main(args.run, args.out, args.format, args.file, args.overrides, args.dtype,
                        ema=getattr(args, "ema", False))
    if args.dtype:
        print("l3m export: --dtype goes with --format hf or timm (a safetensors export keeps the stored dtypes)",
              file=sys.stderr)
        return EXIT_USAGE
    if args.to:
        from l3m.interop import export_main as export_foreign

        if not args.file:
            print("l3m export: --to needs --file FILE.l3m (the program whose model the weights belong to)",
                  file=sys.stderr)
            return EXIT_USAGE
        return export_foreign(args.to, args.run, args.file, args.out, args.overrides)
    from l3m.interop.finetune_export import checkpoint_has_lora

    if adapters_only or checkpoint_has_lora(args.run):  # fine-tuned: LoRA merged, or adapters only
        from l3m.interop.finetune_export import cli_main as export_finetuned

        return export_finetuned(args.run, args.out, args.file, args.overrides, ema=getattr(args, "ema", False),
                                adapters_only=adapters_only)
    from l3m.train.api import export_main

    return export_main(args.run, args.out, ema=getattr(args, "ema", False))


def cmd_import(args: argparse.Namespace) -> int:
    from l3m.interop import import_main

    return import_main(args.kind, args.src, args.file, args.out, args.overrides)


def cmd_blocks(args: argparse.Namespace) -> int:
    from l3m import registry
    from l3m.dsl.ext_locate import search_roots
    from l3m.dsl.ext_static import read_extension

    static = {}
    for ext in args.extension:  # read from source, like lint: listing names runs no project code
        found = read_extension(ext, search_roots())
        if found.error:
            print(f"l3m blocks: extension '{ext}': {found.error}", file=sys.stderr)
            return EXIT_USAGE
        static.update(found.entries)
    kinds = [args.kind] if args.kind else list(registry.KINDS)
    for kind in kinds:
        print(f"{kind}{'es' if kind.endswith('s') else 's'}:")
        listed = {e.name: e for e in registry.entries(kind)} | {n: e for n, e in static.items() if e.kind == kind}
        for e in sorted(listed.values(), key=lambda e: e.name):
            ins = ", ".join(p.name + ("?" if p.optional else "") for p in e.inputs) if e.inputs is not None else "?"
            outs = ", ".join(p.name + ("?" if p.optional else "") for p in e.outputs) if e.outputs is not None else "?"
            ports = f"  {ins} -> {outs}" if kind in ("block", "generator", "loss", "metric", "source") else ""
            summary = e.doc.splitlines()[0] if e.doc else ""
            fits = ", ".join(getattr(e, "interfaces", ()) or ())
            if fits:  # where it may stand as a component argument (`attn = Attention(...)`)
                ports += f"  [{fits}]"
            print(f"  {e.name}{ports}" + (f"    # {summary}" if summary else ""))
            if args.verbose:
                print(f"      {e.signature}")
    return EXIT_OK


def cmd_lsp(args: argparse.Namespace) -> int:
    from l3m.lsp import main as lsp_main

    return lsp_main()


def cmd_explain(args: argparse.Namespace) -> int:
    args.explain = args.code
    return cmd_lint(args)


# ----------------------------------------------------------------------------- parser

# The checkpoint layouts `l3m import` / `export --to` convert (`l3m.interop.CONVERTERS`, named here so that
# building the parser imports no torch).
CHECKPOINT_KINDS = ("llama", "timm-vit", "open-clip", "torchtitan-llama")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="l3m", description="Compile, check, plan and train .l3m experiment files.")
    p.add_argument("--version", action="version", version=f"l3m {_version()}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    def common(sp, world_size=True):
        sp.add_argument("items", nargs="*", metavar="FILE|PATH=VALUE", help="files, and overrides like train.steps=10")
        sp.add_argument("--extension", action="append", default=[], metavar="MODULE",
                        help="import a Python module of registered blocks (repeatable)")
        if world_size:
            sp.add_argument("--world-size", type=positive_int, default=None, metavar="N",
                            help="check and plan the mesh for N processes")

    s = sub.add_parser("lint", help="static checks of .l3m files (exit 1 on any error)")
    common(s)
    s.add_argument("--format", choices=("text", "json", "github"), default="text")
    s.add_argument("--explain", metavar="CODE", help="explain a diagnostic code, e.g. E101")
    s.set_defaults(func=cmd_lint)

    s = sub.add_parser("graph", help="the dataflow graph (text by default; --render OUT.svg|png|dot|mmd|txt|json)")
    common(s, world_size=False)
    s.add_argument("--render", metavar="OUT", help="write the graph to OUT; its suffix picks the format")
    s.add_argument("--format", choices=("svg", "png", "dot", "mmd", "txt", "json"), default=None)
    s.set_defaults(func=cmd_graph)

    s = sub.add_parser("plan", help="parameters, FLOPs and memory per rank, before any GPU")
    common(s)
    s.add_argument("--format", choices=("text", "json"), default="text")
    s.add_argument("--why", metavar="PATH", help="print an argument's value and where it came from, e.g. "
                   "vit.trunk.blocks.attn.pos (compiles only; exit 2 when PATH names nothing)")
    s.add_argument("--device", metavar="NAME", help="does a training step fit NAME (H100, H200, A100-40GB, "
                   "A100-80GB, MI300X, L40S, cpu), its step time at 40%% MFU, and what to change if it does not fit")
    s.set_defaults(func=cmd_plan)

    s = sub.add_parser("train", help="train what the file declares (also under torchrun)")
    common(s, world_size=False)
    s.add_argument("--output", "-o", metavar="DIR", help="run directory (default runs/<file stem>)")
    g = s.add_mutually_exclusive_group()
    g.add_argument("--resume", dest="resume", action="store_true", default=None,
                   help="continue from the latest checkpoint in the run directory (the default when one exists)")
    g.add_argument("--no-resume", dest="resume", action="store_false", help="start afresh even if checkpoints exist")
    s.add_argument("--allow-changes", action="store_true",
                   help="resume even when the program changes a structural setting (model, training data, seed)")
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("rerun", help="train a run directory's recorded program again (from that directory alone)")
    s.add_argument("run", metavar="RUN_DIR")
    s.add_argument("overrides", nargs="*", metavar="PATH=VALUE", help="applied after the recorded overrides")
    s.add_argument("--output", "-o", metavar="DIR", help="the new run directory (default RUN_DIR-rerun)")
    g = s.add_mutually_exclusive_group()
    g.add_argument("--resume", dest="resume", action="store_true", default=None,
                   help="continue from the latest checkpoint in the new run directory (the default when one exists)")
    g.add_argument("--no-resume", dest="resume", action="store_false", help="start afresh even if checkpoints exist")
    s.set_defaults(func=cmd_rerun)

    s = sub.add_parser("eval", help="evaluate a checkpoint on the file's eval data, or by a standard "
                       "protocol (--suite)")
    common(s, world_size=False)
    s.add_argument("--checkpoint", metavar="PATH", help="a run directory or checkpoint directory (required "
                   "without --suite; with --suite, FILE may be a run directory instead)")
    from l3m.evals.cli import add_suite_arguments

    add_suite_arguments(s)
    s.set_defaults(func=cmd_eval)

    s = sub.add_parser("export", help="write a run's latest checkpoint as one safetensors file, or as a "
                       "Hugging Face (--format hf) / timm (--format timm) model folder")
    s.add_argument("run", metavar="RUN_OR_CHECKPOINT")
    s.add_argument("out", metavar="OUT", help="OUT.safetensors, or a folder for --format hf / timm")
    s.add_argument("--format", choices=("safetensors", "hf", "timm"), default="safetensors",
                   help="hf: config.json + model.safetensors + tokenizer files of a Llama-style model; "
                   "timm: a VisionTransformer's model.safetensors + config.json (its model_args)")
    s.add_argument("--dtype", choices=("float32", "bfloat16", "float16", "fp32", "bf16", "fp16"),
                   help="with --format hf / timm: cast floating tensors (default: as stored)")
    s.add_argument("--to", choices=CHECKPOINT_KINDS, help="write under Hugging Face Llama / timm ViT / open_clip CLIP / "
                   "torchtitan Llama 3 names")
    s.add_argument("--file", metavar="FILE.l3m", help="the program the weights belong to (needed with --to; "
                   "--format hf / timm read a run's own record unless given)")
    s.add_argument("--ema", action="store_true", help="the weight averages of train.ema instead of the weights")
    s.add_argument("--adapters-only", action="store_true", help="only what fine-tuning trained: the LoRA, "
                   "Adapter and train.trainable tensors (a full export merges LoRA into the weights)")
    s.add_argument("overrides", nargs="*", metavar="PATH=VALUE", help="overrides of the program")
    s.set_defaults(func=cmd_export)

    s = sub.add_parser("import", help="rename a Hugging Face Llama, timm ViT, open_clip CLIP or torchtitan Llama 3 "
                       "checkpoint to a .l3m model's names")
    s.add_argument("kind", choices=CHECKPOINT_KINDS)
    s.add_argument("src", metavar="SRC", help="a safetensors file or a folder of shards")
    s.add_argument("file", metavar="FILE.l3m")
    s.add_argument("out", metavar="OUT.safetensors")
    s.add_argument("overrides", nargs="*", metavar="PATH=VALUE")
    s.set_defaults(func=cmd_import)

    s = sub.add_parser("blocks", help="list registered blocks, data sources, losses, ...")
    s.add_argument("--kind", choices=("block", "source", "generator", "loss", "metric", "optimizer", "schedule",
                                      "component"))
    s.add_argument("--extension", action="append", default=[], metavar="MODULE")
    s.add_argument("-v", "--verbose", action="store_true", help="show constructor signatures")
    s.set_defaults(func=cmd_blocks)

    s = sub.add_parser("explain", help="explain a diagnostic code")
    s.add_argument("code")
    s.set_defaults(func=cmd_explain)

    from l3m.tokenizer_cli import add_parser as add_tokenizer_parser

    add_tokenizer_parser(sub)
    from l3m.data_cli import add_parser as add_data_parser

    add_data_parser(sub)
    from l3m.fmt_cli import add_parser as add_fmt_parser

    add_fmt_parser(sub)
    from l3m.generation.cli import add_parser as add_generate_parser

    add_generate_parser(sub)
    from l3m.launch.cli import add_parsers as add_launch_parsers

    add_launch_parsers(sub)
    s = sub.add_parser("lsp", help="a language server for editors, on stdin/stdout (needs the 'lsp' extra)")
    s.set_defaults(func=cmd_lsp)
    return p


def _version() -> str:
    from l3m import __version__

    return __version__


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # Files and overrides may stand after options too (`l3m train f.l3m --no-resume train.steps=5`).
    args, extra = parser.parse_known_args(argv)
    flags = [a for a in extra if a.startswith("-")]
    if flags or (extra and not hasattr(args, "items") and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(flags or extra)}")
    if extra:
        if hasattr(args, "items"):
            args.items = list(args.items) + extra
        else:
            args.overrides = list(args.overrides) + extra
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return args.func(args)
    except KeyboardInterrupt as e:  # a second SIGINT/SIGTERM during `train` carries its signal
        print("l3m: interrupted", file=sys.stderr)
        return 128 + getattr(e, "signum", 2)
    except BrokenPipeError:
        return EXIT_OK
    except Exception as e:  # a bug in l3m, not in the user's file: say so without a wall of traceback
        from l3m.train.rank_errors import rank_prefix, record_failure

        record_failure(f"{rank_prefix()}{type(e).__name__}: {e}", traceback.format_exc())  # for torchrun's summary
        if os.environ.get("L3M_DEBUG"):
            raise
        print(f"l3m: {rank_prefix()}internal error: {type(e).__name__}: {e}\n"
              "(set L3M_DEBUG=1 for the traceback; please report it)", file=sys.stderr)
        return EXIT_ERRORS
