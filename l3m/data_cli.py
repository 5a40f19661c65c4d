"""`l3m data prepare`: tokenize text/JSONL corpora into token shards for `TokenShards` (`l3m.data.prepare`).

Kept outside `l3m.data` so that building the command-line parser imports nothing heavy.
"""

from __future__ import annotations

import argparse
import sys

EXIT_OK, EXIT_ERRORS, EXIT_USAGE = 0, 1, 2


def add_parser(sub) -> None:
    """Register `data` and its subcommands on the main parser's subparsers."""
    s = sub.add_parser("data", help="prepare training data (tokenize a corpus into token shards)")
    dsub = s.add_subparsers(dest="data_command", metavar="SUBCOMMAND")

    p = dsub.add_parser("prepare", help="tokenize text and JSONL files into binary token shards (resumable)")
    p.add_argument("corpus", nargs="+", metavar="CORPUS",
                   help="text files (one document each), JSONL files (.jsonl/.ndjson: one document a line), "
                        "folders or globs")
    p.add_argument("--tokenizer", "-t", required=True, metavar="TOK",
                   help="a tokenizer.json, a SentencePiece .model, a snapshot folder, a shipped name or bytes")
    p.add_argument("--output", "-o", required=True, metavar="DIR", help="the shard directory (new, or the same "
                   "DIR of an interrupted run with the same arguments, which is resumed)")
    p.add_argument("--workers", "-j", type=int, default=0, metavar="N",
                   help="tokenizer processes (default: one per CPU)")
    p.add_argument("--text-key", default="text", metavar="KEY", help="the JSONL field holding the text")
    p.add_argument("--pattern", default="**/*", help="files to read inside folders (default **/*)")
    p.add_argument("--shard-bytes", type=int, default=0, metavar="N",
                   help="input text per shard, about (default: corpus / 64, between 1 and 64 MiB)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar or progress lines")
    p.set_defaults(func=cmd_prepare)
    s.set_defaults(func=lambda args: _usage(s))


def _usage(parser) -> int:
    parser.print_help(sys.stderr)
    return EXIT_USAGE


def cmd_prepare(args: argparse.Namespace) -> int:
    from l3m.data.prepare.plan import PrepareError
    from l3m.data.prepare.run import prepare, print_error, summary

    if args.workers < 0:
        print_error(PrepareError(f"--workers must be 0 (one per CPU) or more, got {args.workers}", 2))
        return EXIT_USAGE
    try:
        result = prepare(args.tokenizer, args.output, args.corpus, workers=args.workers, text_key=args.text_key,
                         shard_bytes=args.shard_bytes, pattern=args.pattern, progress=not args.no_progress)
    except PrepareError as e:
        print_error(e)
        return e.code
    except OSError as e:  # disk full, permissions: an I/O error, said in one line
        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        print(f"l3m data prepare: {e.strerror or e}{where}", file=sys.stderr)
        return EXIT_USAGE
    if result.manifest["tokenizer"]["eos_id"] is None:
        print(f"l3m data prepare: note: tokenizer {args.tokenizer!r} has no EOS token, so documents follow each "
              "other with no separator (their boundaries are in the .docs.npy index)", file=sys.stderr)
    print(summary(result, args.output))
    return EXIT_OK
