"""`l3m tokenizer train | info | list`: make, inspect and find tokenizers (`l3m.data.tokenizers`; no network).

Kept outside `l3m.data` so that building the command-line parser imports nothing heavy.
"""

from __future__ import annotations

import argparse
import json
import sys

EXIT_OK, EXIT_ERRORS, EXIT_USAGE = 0, 1, 2


def add_parser(sub) -> None:
    """Register `tokenizer` and its subcommands on the main parser's subparsers."""
    s = sub.add_parser("tokenizer", help="train a byte-level BPE tokenizer, or show one (info, list)")
    tsub = s.add_subparsers(dest="tokenizer_command", metavar="SUBCOMMAND")

    t = tsub.add_parser("train", help="train a byte-level BPE (Hugging Face `tokenizers`) on local text")
    t.add_argument("corpus", nargs="+", metavar="CORPUS",
                   help="files, folders, globs, `stdlib` (Python's standard library) or `digits` (l3m's digit captions)")
    t.add_argument("--vocab", type=int, required=True, metavar="N", help="vocabulary size, special tokens included")
    t.add_argument("--output", "-o", required=True, metavar="TOKENIZER.json")
    t.add_argument("--special", action="append", default=None, metavar="TOKEN",
                   help="a special token, ids 0, 1, ... in order (repeatable; default <pad> <bos> <eos>)")
    t.add_argument("--min-frequency", type=int, default=2, metavar="N", help="merge pairs seen at least N times")
    t.add_argument("--pattern", default="**/*", help="files to read inside folders (default **/*)")
    t.add_argument("--max-bytes", type=int, default=0, metavar="N", help="stop reading after about N bytes (0: all)")
    t.set_defaults(func=cmd_train)

    i = tsub.add_parser("info", help="vocabulary size and special ids of a tokenizer")
    i.add_argument("tokenizer", metavar="TOKENIZER", help="a path, a shipped name, or bytes")
    i.add_argument("--encode", metavar="TEXT", help="also print the ids of TEXT")
    i.add_argument("--format", choices=("text", "json"), default="text")
    i.set_defaults(func=cmd_info)

    ls = tsub.add_parser("list", help="the tokenizers shipped with l3m")
    ls.set_defaults(func=cmd_list)
    s.set_defaults(func=lambda args: _usage(s))


def _usage(parser) -> int:
    parser.print_help(sys.stderr)
    return EXIT_USAGE


def cmd_train(args: argparse.Namespace) -> int:
    from l3m.data.tokenizers.train import DEFAULT_SPECIALS, train_bpe

    specials = tuple(args.special) if args.special else DEFAULT_SPECIALS
    print(f"l3m tokenizer: training a byte-level BPE of {args.vocab} tokens on {' '.join(args.corpus)}",
          file=sys.stderr)
    try:
        info = train_bpe(args.corpus, args.vocab, args.output, specials, args.min_frequency, args.pattern,
                         args.max_bytes)
    except FileNotFoundError as e:
        print(f"l3m tokenizer: {e}", file=sys.stderr)
        return EXIT_USAGE
    except ValueError as e:
        print(f"l3m tokenizer: {e}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as e:
        print(f"l3m tokenizer: cannot write {args.output}: {e.strerror or e}", file=sys.stderr)
        return EXIT_USAGE
    if info["vocab_size"] < args.vocab:
        print(f"l3m tokenizer: note: the corpus supports only {info['vocab_size']} tokens with "
              f"--min-frequency {args.min_frequency} (asked for {args.vocab})", file=sys.stderr)
    ids = ", ".join(f"{t} {i}" for t, i in info["specials"].items())
    print(f"wrote {info['output']}: vocabulary {info['vocab_size']} ({ids}) from {info['documents']} documents, "
          f"{info['bytes']:,} bytes", file=sys.stderr)
    return EXIT_OK


def cmd_info(args: argparse.Namespace) -> int:
    from l3m.data.tokenizers import TokenizerError, load_tokenizer

    try:
        tok = load_tokenizer(args.tokenizer)
    except (OSError, TokenizerError) as e:
        print(f"l3m tokenizer: {e}", file=sys.stderr)
        return EXIT_USAGE
    data = {"source": tok.source, "kind": tok.kind, "vocab_size": tok.vocab_size,
            "specials": {r: {"id": i, "token": t} for r, (i, t) in sorted(tok.specials.items())}}
    if args.encode is not None:
        data["ids"] = tok.encode(args.encode)
    if args.format == "json":
        print(json.dumps(data, indent=2))
        return EXIT_OK
    print(tok.summary())
    if args.encode is not None:
        print(" ".join(map(str, data["ids"])))
    return EXIT_OK


def cmd_list(args: argparse.Namespace) -> int:
    from l3m.data.tokenizers import load_tokenizer, shipped

    for name in shipped():
        tok = load_tokenizer(name)
        roles = ", ".join(f"{r} {i}" for r, (i, _) in sorted(tok.specials.items()))
        print(f"{name}: vocabulary {tok.vocab_size}; {roles}")
    return EXIT_OK
