"""Diagnostics: stable codes, compiler-style messages, and their text / JSON / GitHub renderings."""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field

from l3m.dsl.ir import Span

# code -> (short name, explanation shown by `l3m lint --explain CODE`)
CODES: dict[str, tuple[str, str]] = {
    "E001": ("syntax", "The file does not follow the grammar of the .l3m language. The message says what was\n"
             "found and what could have stood there instead, e.g. `expected '->' or a key`."),
    "E002": ("unreadable", "The file could not be read as .l3m source: it is missing, its name (or the target of\n"
             "its symlink) does not end in `.l3m`, it is not a regular file (a directory, named pipe, device\n"
             "or socket; these are refused without being opened), it is not UTF-8 text, holds NUL bytes, or\n"
             "is larger than the front end accepts (16 MiB). Messages never quote such a file's contents."),
    "E003": ("version", "A file starts with `l3m 1`, the version of the language it is written in."),
    "E004": ("too-deep", "Expressions or lists nest deeper than 64 levels (brackets in the source, or lists inside\n"
             "lists in a value built from `let`s), or templates instantiate templates more than 32 levels deep\n"
             "(a template that instantiates itself). Split deep expressions with `let`."),
    "E101": ("unwritten-key", "A block, loss or metric reads a key that no data source, generator or block writes.\n"
             "Check the spelling (a suggestion is shown when one is close) or add the writer.\n\n"
             "    trunk { t: Transformer(...) tokns -> x }   # error: 'tokns' is never written"),
    "E102": ("duplicate-writer", "Two unrelated nodes write the same key. A node that reads a key and writes it\n"
             "back (`x -> x`) refines it and is fine; a node that writes a key somebody else already\n"
             "wrote, without reading it, is usually a mistake. Write `-> !x` to overwrite on purpose."),
    "E103": ("cycle", "The dataflow has a cycle: following the keys from some node leads back to it.\n"
             "The message prints the cycle. Overwrites (`x -> x`) never make cycles; reads of keys\n"
             "written only later in the file can."),
    "E104": ("backward-flow", "Dataflow must go forward: data -> preprocessor -> trunk -> postprocessor -> head\n"
             "-> losses and metrics. A node reads a key whose writer comes in a later stage of the same model,\n"
             "or a data generator reads a key that the model writes."),
    "E105": ("data-keys", "Every data source must write the same keys, so that the model, losses and metrics\n"
             "can run on any of them (train and eval)."),
    "E201": ("unknown-name", "The name is not registered as a block, data source, generator, loss, metric,\n"
             "optimizer or schedule (or is not a template `def`). `l3m blocks` lists what exists. Your\n"
             "own blocks are registered with `@l3m.register(...)` in a module named by `extension`."),
    "E202": ("wrong-kind", "A registered name is used where another kind is expected, e.g. a block used as a loss."),
    "E203": ("unknown-argument", "The constructor of the named class has no argument of that name."),
    "E204": ("missing-argument", "The constructor needs an argument that was not given."),
    "E205": ("argument-type", "An argument's value does not have the type that the constructor's annotation asks for."),
    "E206": ("too-many-arguments", "More positional arguments than the constructor takes."),
    "E207": ("duplicate", "A name (a `let`, an argument, a block, a setting, a key declaration) is defined twice."),
    "E301": ("unknown-port", "A key is bound to a port that the block does not have, or more keys are given\n"
             "than the block has ports. Ports are the arguments of the block's `forward` (inputs)\n"
             "and its `outputs` (outputs)."),
    "E302": ("unbound-port", "A required port of a block has no key bound to it."),
    "E401": ("import-missing", "An imported file does not exist or cannot be read. Paths are relative to the\n"
             "importing file."),
    "E402": ("import-cycle", "Files import each other in a cycle. The message prints the chain."),
    "E403": ("undefined", "A name used in an expression is neither a `let`, a parameter of the enclosing `def`,\n"
             "a name in an imported namespace, nor (inside `${...}`) an environment variable."),
    "E404": ("evaluation", "An expression cannot be evaluated: division by zero, arithmetic on a string, a\n"
             "`let` that depends on itself."),
    "E405": ("extension", "An extension module named by `extension \"...\"` could not be imported, or (in lint and\n"
             "graph, which read it without importing it) its source could not be found or parsed. `lint` and\n"
             "`graph` search sys.path, then the .l3m file's folder, the project root and the current folder."),
    "E410": ("import-not-l3m", "An `import` names a file whose name does not end in `.l3m`, or a symlink to such a\n"
             "file. Only .l3m sources are imported, and the file is refused before it is read, so no part of\n"
             "it (say, the first line of /etc/shadow) can appear in a message."),
    "E411": ("import-special-file", "An `import` names a directory, named pipe (FIFO), device or socket. Only regular\n"
             "files are imported; special files are refused after `stat`, without being opened, so that a pipe\n"
             "or /dev/zero cannot make the compiler hang or fill memory."),
    "E412": ("import-too-large", "An imported file is larger than 16 MiB, the most the front end reads from one file."),
    "E413": ("import-not-text", "An imported file is not UTF-8 text, or contains NUL bytes. It is refused before it is\n"
             "parsed, so none of its contents appear in a message."),
    "E420": ("secret-variable", "`${NAME}` names an environment variable that looks like a credential: its name\n"
             "contains KEY, TOKEN, SECRET, PASSWORD, PASSWD, PASSPHRASE, CREDENTIAL or AUTH (any case,\n"
             "anywhere in the name, so MONKEY and AUTHOR are refused too; the word TOKENIZER alone is exempt,\n"
             "so TOKENIZER_PATH is read). Interpolated values end up in the\n"
             "resolved program, the run directory, wandb's config and the run name, so such variables are\n"
             "never read, set or not, with or without a `:-default`. A `let` of that name is fine; tools that\n"
             "need a credential (wandb: WANDB_API_KEY) read it from the environment themselves."),
    "E430": ("too-large", "Evaluating an expression would build something too large: a value holding more than\n"
             "1,000,000 items (list elements at every level of nesting, string characters), an integer of\n"
             "more than 1024 bits (about 1.8e308; `**` is checked before it is computed), an integer literal\n"
             "of more than 320 digits, more than 100,000,000 list elements and characters built by the\n"
             "whole program, or more than 20,000 nodes once templates are expanded. These bounds keep\n"
             "compiling any file fast and small."),
    "E501": ("bad-override", "A command-line override names a path that does not exist in the program, or its\n"
             "value is malformed. Paths: `name` (a let), `train.steps`, `mesh.tp`, `optimizer.lr`,\n"
             "`data.train.batch_size`, `model.trunk.blocks.depth`, `loss.text.weight`, ..."),
    "E601": ("mesh", "The declared mesh cannot be laid over the world size: the product of the fixed\n"
             "dimensions must divide it, and at most one dimension may be -1."),
    "E602": ("setting", "A `train`, `mesh` or `log` section has a key that does not exist, or a value of the\n"
             "wrong type."),
    "E603": ("section", "A section appears twice, e.g. two `optimizer` lines or two `mesh` blocks."),
    "E701": ("incomplete", "The program lacks something the command needs, e.g. `train` needs a data source\n"
             "named `train`, a model, a loss and an optimizer."),
    "E811": ("tokenizer", "A data source's `tokenizer` cannot be used: the file or folder does not exist, it is not\n"
             "a Hugging Face tokenizer.json or a SentencePiece .model, or it lacks a token its policy needs\n"
             "(captions end with EOS). Paths are relative to the working directory; `l3m tokenizer list`\n"
             "names the shipped tokenizers. `tokenizer = \"\"` (an unset `${VAR:-}`) is left to run time."),
    "E812": ("vocab-size", "A `vocab` argument (TokenEmbedding, LMHead, a decoder's vocabulary) is smaller than the\n"
             "vocabulary of the tokenizer the data is encoded with, so some token ids would index past the\n"
             "embedding or never be predicted. Set it to `l3m tokenizer info TOKENIZER`'s size or larger.\n\n"
             "    train: TextBytes(tokenizer = \"stdlib_bpe_2k\") -> tokens, targets\n"
             "    embed: TokenEmbedding(vocab = 256, dim = 64) tokens -> x   # error: 2048 tokens"),
    "E813": ("special-id", "A special token id the file names is not what the tokenizer has: an `eos_id`, `pad_id`,\n"
             "`bos_id` or `ignore_index` outside the vocabulary; an `eos_id` (EOS pooling) other than the EOS\n"
             "the captions end with; a caption loss's `ignore_index` other than the padding id; or a\n"
             "`pad_token` the tokenizer lacks. `l3m tokenizer info TOKENIZER` prints the special ids."),
    "W101": ("unused-output", "A key written by a block or generator is never read by anything later. Remove the\n"
             "binding, or read it (for example in a loss or metric)."),
    "W102": ("unused-declaration", "A key declared in `keys { ... }` is never written."),
    "W103": ("unused-import", "An imported namespace is never used."),
    "W104": ("extension-unchecked", "`lint` and `graph` read extension modules from source and never run them. Where\n"
             "the source does not tell (outputs computed at import, a base class from another package,\n"
             "**kwargs, a registration with a computed name), the message says which check was skipped."),
    "N001": ("extension-loaded", "Reports each extension module that the file names, so reviewers see what\n"
             "Python code a run will load. `lint` and `graph` only read it; plan, train, eval and export import it."),
}


@dataclass
class Diagnostic:
    code: str
    message: str
    span: Span | None
    help: str | None = None
    notes: list[tuple[str, Span | None]] = field(default_factory=list)

    @property
    def severity(self) -> str:
        return {"E": "error", "W": "warning", "N": "note"}[self.code[0]]

    @property
    def is_error(self) -> bool:
        return self.code.startswith("E")

    def to_json(self) -> dict:
        s = self.span
        return {
            "file": s.file if s else None,
            "line": s.line if s else None,
            "col": s.col if s else None,
            "end_line": s.end_line if s else None,
            "end_col": s.end_col if s else None,
            "code": self.code,
            "name": CODES[self.code][0],
            "severity": self.severity,
            "message": self.message,
            "help": self.help,
            "import_chain": list(s.chain) if s else [],
        }


class CompileError(Exception):
    """Raised by API entry points (`l3m.load`) when a program has errors."""

    def __init__(self, diagnostics: list[Diagnostic], sources: SourceCache | None = None):
        self.diagnostics = diagnostics
        self.sources = sources or SourceCache()
        super().__init__("\n".join(render_text(d, self.sources, color=False) for d in diagnostics if d.is_error))


def suggest(name: str, candidates: Iterable[str]) -> str | None:
    """The closest candidate, for 'did you mean'."""
    pool = [c for c in candidates if c]
    match = difflib.get_close_matches(name, pool, n=1, cutoff=0.6)
    if not match:
        lowered = {c.lower(): c for c in pool}
        match = difflib.get_close_matches(name.lower(), list(lowered), n=1, cutoff=0.6)
        match = [lowered[m] for m in match]
    return match[0] if match else None


def did_you_mean(name: str, candidates: Iterable[str]) -> str | None:
    s = suggest(name, candidates)
    return f"did you mean '{s}'?" if s else None


class SourceCache:
    """Source text of every file the compiler read, for printing the offending line."""

    def __init__(self) -> None:
        self.texts: dict[str, list[str]] = {}

    def add(self, file: str, text: str) -> None:
        self.texts[file] = text.splitlines()

    def line(self, file: str, line: int) -> str | None:
        lines = self.texts.get(file)
        if lines is None or not (1 <= line <= len(lines)):
            return None
        return lines[line - 1]


_COLORS = {"error": "\033[1;31m", "warning": "\033[1;33m", "note": "\033[1;36m", "bold": "\033[1m", "blue": "\033[1;34m", "end": "\033[0m"}


def render_text(d: Diagnostic, sources: SourceCache, color: bool = False) -> str:
    c = _COLORS if color else dict.fromkeys(_COLORS, "")
    where = f"{d.span}: " if d.span else ""
    out = [f"{c['bold']}{where}{c['end']}{c[d.severity]}{d.severity}[{d.code}]{c['end']}{c['bold']}: {d.message}{c['end']}"]
    if d.span:
        out += _snippet(d.span, sources, c)
        for link in d.span.chain:
            out.append(f"  {c['blue']}={c['end']} note: imported from {link}")
    for text, span in d.notes:
        out.append(f"  {c['blue']}={c['end']} note: {text}" + (f" ({span})" if span else ""))
    if d.help:
        out.append(f"  {c['blue']}={c['end']} help: {d.help}")
    return "\n".join(out)


def _snippet(span: Span, sources: SourceCache, c: dict) -> list[str]:
    text = sources.line(span.file, span.line)
    if text is None:
        return []
    text = text.expandtabs(4)[:300]
    num = str(span.line)
    pad = " " * len(num)
    width = span.end_col - span.col if span.end_line == span.line and span.end_col > span.col else 1
    width = max(1, min(width, len(text) - span.col + 2, 120))
    caret = " " * (span.col - 1) + "^" * width
    bar = f"{c['blue']}|{c['end']}"
    return [f" {pad} {bar}", f" {c['blue']}{num}{c['end']} {bar} {text}", f" {pad} {bar} {c['error']}{caret}{c['end']}"]


def render_github(d: Diagnostic) -> str:
    """A GitHub Actions workflow command, one line."""
    level = {"error": "error", "warning": "warning", "note": "notice"}[d.severity]
    msg = d.message + (f" ({d.help})" if d.help else "")
    msg = msg.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
    if d.span:
        return f"::{level} file={d.span.file},line={d.span.line},col={d.span.col},title={d.code}::{msg}"
    return f"::{level} title={d.code}::{msg}"


def render_json(diags: list[Diagnostic]) -> str:
    return json.dumps([d.to_json() for d in diags], indent=2)


def explain(code: str) -> str | None:
    code = code.upper()
    if code not in CODES:
        return None
    name, text = CODES[code]
    return f"{code} ({name})\n\n{text}\n"
