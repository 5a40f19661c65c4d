"""Check the program's token ids against the tokenizers its data sources encode text with.

A source whose class has a `token_policy` ("stream" or "caption") encodes text with its
`tokenizer` argument. The checker opens each tokenizer (a small JSON or SentencePiece read, no
torch work) and holds the file's numbers against it:

- E811: the tokenizer file is missing, unreadable, or lacks a token the policy needs;
- E812: a `vocab` argument (TokenEmbedding, LMHead, ...) is smaller than the tokenizer's vocabulary;
- E813: a special id the file names (`eos_id`, `pad_id`, `bos_id`, a loss's `ignore_index`) is not
  in the vocabulary, or is not the id the data actually emits (EOS pooling on an id the captions
  never contain; a caption loss that ignores a real token instead of the padding);
- E821 / W821: a `TokenShards` directory whose manifest is unusable / not there (its vocabulary is
  the manifest's, `token_policy = "manifest"`).

`tokenizer = ""` (an unset `${VAR:-}`) means "given at run time": nothing is checked.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from l3m import registry
from l3m.data.tokenizers import Tokenizer, TokenizerError, load_tokenizer
from l3m.dsl.diagnostics import Diagnostic
from l3m.dsl.ir import Node, Program, Span
from l3m.dsl.sigparams import defaults, named_names

_ID_ARGS = ("eos_id", "pad_id", "bos_id")


@dataclass
class _Use:
    """One source's tokenizer, as the checker sees it."""

    node: Node
    spec: str  # the `tokenizer` argument as written
    tok: Tokenizer
    policy: str
    span: Span | None  # the `tokenizer` argument (or the call when it is defaulted)
    pad_id: int | None  # captions: the id they are padded with


# The arguments `check_tokenizers` compares with the vocabulary (others are skipped at once).
_CHECKED_ARGS = frozenset(("vocab", "ignore_index", *_ID_ARGS))


def check_tokenizers(program: Program) -> list[Diagnostic]:
    diags: list[Diagnostic] = []
    uses = [u for n in program.of_role("source") if n.valid for u in _open(n, diags)]
    if not uses:
        return diags
    largest = max(uses, key=lambda u: u.tok.vocab_size)
    captions = [u for u in uses if u.policy == "caption"]
    caption_eos = {u.tok.eos_id for u in captions}
    caption_pad = {u.pad_id for u in captions}
    token_keys = {b.key for u in uses for b in u.node.writes}
    for node in program.nodes:
        if node.role not in ("block", "loss", "metric") or not node.valid:
            continue
        args = _args(node)
        for name, (value, span) in args.items():
            if name not in _CHECKED_ARGS or not isinstance(value, int) or isinstance(value, bool):
                continue
            where = _where(program, node, span)
            if name == "vocab" and value < largest.tok.vocab_size:
                diags.append(Diagnostic(
                    "E812", f"'{node.path}' has vocab = {value}, but {_who(largest)} has "
                    f"{largest.tok.vocab_size} tokens: ids up to {largest.tok.vocab_size - 1} would index past it",
                    where, f"set vocab = {largest.tok.vocab_size} (or larger)", _notes(program, node, span, largest)))
            elif name in _ID_ARGS or (name == "ignore_index" and value >= 0):
                diags += _check_id(program, node, name, value, span, largest, caption_eos, caption_pad,
                                   captions, reads_tokens=bool(token_keys & set(node.read_keys)))
    return diags


def _check_id(program: Program, node: Node, name: str, value: int, span: Span | None, largest: _Use,
              caption_eos: set, caption_pad: set, captions: list[_Use], reads_tokens: bool) -> list[Diagnostic]:
    where = _where(program, node, span)
    tok = largest.tok
    if value >= tok.vocab_size:
        return [Diagnostic("E813", f"'{node.path}' has {name} = {value}, which is not an id of {_who(largest)} "
                           f"(vocabulary {tok.vocab_size})", where, None, _notes(program, node, span, largest))]
    if name == "eos_id" and len(caption_eos) == 1 and value not in caption_eos:
        (eos,) = caption_eos
        use = captions[0]
        return [Diagnostic("E813", f"'{node.path}' pools at eos_id = {value}, but the captions of "
                           f"{_who(use)} end with {use.tok.describe_id(eos)}", where, f"set eos_id = {eos}",
                           _notes(program, node, span, use))]
    if name == "ignore_index" and reads_tokens and len(caption_pad) == 1 and value not in caption_pad:
        (pad,) = caption_pad
        use = captions[0]
        return [Diagnostic("E813", f"'{node.path}' ignores id {use.tok.describe_id(value)}, but the captions of "
                           f"{_who(use)} are padded with {use.tok.describe_id(pad)}", where,
                           f"set ignore_index = {pad} (or -100 to ignore nothing)", _notes(program, node, span, use))]
    return []


def _open(node: Node, diags: list[Diagnostic]) -> list[_Use]:
    entry = registry.lookup(node.call.type_name)
    policy = entry.trait("token_policy") if entry is not None else None
    if policy == "manifest":
        return _open_manifest(node, entry, diags)
    if policy not in ("stream", "caption"):
        return []
    args = _args(node, entry)
    spec, span = args.get("tokenizer", ("bytes", None))
    if not isinstance(spec, str) or spec == "":
        return []
    span = span or node.call.type_span
    try:
        tok = load_tokenizer(spec, policy)
    except (OSError, TokenizerError) as e:
        diags.append(Diagnostic("E811", f"'{node.path}' cannot use tokenizer {spec!r}: {e}", span,
                                "give a tokenizer.json, a SentencePiece .model, a Hugging Face snapshot folder, "
                                "a shipped name (`l3m tokenizer list`) or \"bytes\""))
        return []
    pad_id = None
    rows = policy == "stream" and args.get("pack", (True, None))[0] is False  # one padded row per document
    if policy == "caption" or rows:
        if tok.eos_id is None:
            what = "rows (pack = false)" if rows else "captions"
            diags.append(Diagnostic("E811", f"'{node.path}': tokenizer {spec!r} has no EOS token, which {what} "
                                    "end with", span))
            return []
        pad_token, pad_span = args.get("pad_token", ("", None))
        if isinstance(pad_token, str) and pad_token:
            pad_id = tok.special_id(pad_token)
            if pad_id is None:
                diags.append(Diagnostic("E813", f"'{node.path}' pads with {pad_token!r}, which tokenizer {spec!r} "
                                        "does not have", pad_span or span,
                                        "name a token of the vocabulary or a role: bos, eos, pad, unk"))
                return []
        else:
            pad_id = tok.pad_id if tok.pad_id is not None else tok.eos_id
    return [_Use(node, spec, tok, policy, span, pad_id)]


def _open_manifest(node: Node, entry: registry.Entry, diags: list[Diagnostic]) -> list[_Use]:
    """A source of prepared token shards (`TokenShards`): the vocabulary its manifest records."""
    root, span = _args(node, entry).get("root", (None, None))
    if not isinstance(root, str) or root == "":
        return []
    span = span or node.call.type_span
    try:
        tok = entry.hook("manifest_tokenizer")(root)
    except FileNotFoundError as e:
        diags.append(Diagnostic("W821", f"'{node.path}': cannot check the token shards: {e}", span))
        return []
    except (OSError, ValueError) as e:
        diags.append(Diagnostic("E821", f"'{node.path}' cannot use the token shards in {root!r}: {e}", span,
                                "prepare them again with `l3m data prepare --tokenizer TOK --output DIR CORPUS...`"))
        return []
    return [_Use(node, tok.source, tok, "stream", span, None)]


def _args(node: Node, entry: registry.Entry | None = None) -> dict[str, tuple[Any, Span | None]]:
    """Every argument of the node's call by parameter name, with its span (defaults included, span None)."""
    entry = entry or registry.lookup(node.call.type_name)
    if entry is None:
        return {}
    try:
        sig = entry.signature
        names = named_names(sig)
    except (TypeError, ValueError):
        return {}
    out: dict[str, tuple[Any, Span | None]] = {k: (v, None) for k, v in defaults(sig).items()}
    call = node.call
    for name, value, span in zip(names, call.args, call.arg_spans):
        out[name] = (value, span)
    for name, value in call.kwargs.items():
        out[name] = (value, call.kwarg_spans.get(name))
    return out


def _where(program: Program, node: Node, span: Span | None) -> Span | None:
    return span or node.call.type_span


def _who(use: _Use) -> str:
    return f"the tokenizer {use.spec!r} of '{use.node.path}'"


def _notes(program: Program, node: Node, span: Span | None, use: _Use) -> list[tuple[str, Span | None]]:
    notes: list[tuple[str, Span | None]] = [(use.tok.summary(use.spec), use.span)]
    model = next((m for m in program.models if m.path == node.model), None)
    if model is not None and span is not None and span.file != model.span.file:
        notes.append((f"the value comes from the instance '{model.path}'", model.span))
    return notes


def source_vocab(node: Node, entry: registry.Entry | None = None) -> int | None:
    """The vocabulary size of the tokenizer a data source encodes with (for the shape checker's
    `tokenizer_vocab`); None when the source has none or it cannot be opened (E811 says why)."""
    try:
        uses = _open(node, [])
    except Exception:  # a tokenizer file the checker cannot read is E811's business, not the shapes'
        return None
    return uses[0].tok.vocab_size if uses else None
