"""`l3m fmt FILE... [--check] [--diff]`: rewrite `.l3m` files in the canonical layout (`l3m.dsl.fmt`).

Kept apart from `l3m.cli` so the formatter's command is one small file; it imports only the parser.
"""

from __future__ import annotations

import argparse
import difflib
import os
import sys
from pathlib import Path

EXIT_OK, EXIT_ERRORS, EXIT_USAGE = 0, 1, 2


def add_parser(sub) -> None:
    """Register `fmt` on the main parser's subparsers."""
    s = sub.add_parser("fmt", help="rewrite .l3m files in the canonical layout (--check: only report)")
    s.add_argument("items", nargs="+", metavar="FILE", help=".l3m files or folders of them; - reads stdin "
                   "and writes the result to stdout")
    s.add_argument("--check", action="store_true",
                   help="write nothing; print a diff and exit 1 if any file is not formatted")
    s.add_argument("--diff", action="store_true", help="write nothing; print what would change as a diff (exit 1 if anything would)")
    s.set_defaults(func=cmd_fmt)


def _expand(items: list[str]) -> list[str]:
    out: list[str] = []
    for item in items:
        if item != "-" and os.path.isdir(item):
            out += sorted(str(p) for p in Path(item).rglob("*.l3m"))
        else:
            out.append(item)
    return out


def cmd_fmt(args: argparse.Namespace) -> int:
    from l3m.dsl.diagnostics import SourceCache, render_text
    from l3m.dsl.fmt import FormatError, format_text
    from l3m.dsl.parser import ParseFailure

    write = not (args.check or args.diff)
    changed = unchanged = errors = 0
    unreadable = False
    for path in _expand(args.items):
        try:
            text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            print(f"l3m fmt: cannot read '{path}': {getattr(e, 'strerror', None) or e}", file=sys.stderr)
            unreadable = True
            continue
        name = "<stdin>" if path == "-" else path
        try:
            out = format_text(text, name)
        except ParseFailure as e:
            sources = SourceCache()
            sources.add(name, text)
            for d in e.diagnostics:
                print(render_text(d, sources), file=sys.stderr)
            errors += 1
            continue
        except FormatError as e:  # never expected: the formatter refuses rather than change a program
            print(f"l3m fmt: {name}: internal error, left unchanged: {e}", file=sys.stderr)
            errors += 1
            continue
        if path == "-" and write:
            sys.stdout.write(out)
            continue
        if out == text:
            unchanged += 1
            continue
        changed += 1
        if not write:
            sys.stdout.writelines(difflib.unified_diff(text.splitlines(keepends=True), out.splitlines(keepends=True),
                                                       name, name + " (formatted)"))
            continue
        try:
            Path(path).write_text(out, encoding="utf-8")
        except OSError as e:
            print(f"l3m fmt: cannot write '{path}': {e.strerror or e}", file=sys.stderr)
            unreadable = True
    verb = "would reformat" if not write else "reformatted"
    if changed + unchanged + errors and args.items != ["-"]:
        print(f"l3m fmt: {changed} file{'s' * (changed != 1)} {verb}, {unchanged} unchanged"
              + (f", {errors} with errors" if errors else ""), file=sys.stderr)
        if changed and not write:
            print(f"l3m fmt: run `l3m fmt {' '.join(args.items)}` to rewrite {'it' if changed == 1 else 'them'}",
                  file=sys.stderr)
    if unreadable:
        return EXIT_USAGE
    if errors or (not write and changed):
        return EXIT_ERRORS
    return EXIT_OK
