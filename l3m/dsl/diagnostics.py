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
    "E106": ("criterion-output", "A loss or metric reads a key that a loss or metric writes. Losses and metrics all\n"
             "read what the data and the model wrote; their own outputs are logged, never passed to one\n"
             "another, so such a key would be missing when the step runs. Read the model's key instead.\n\n"
             "    metric ppl: Perplexity()       logits, targets -> ppl\n"
             "    loss   ce:  LMCrossEntropy()   ppl, targets -> loss     # error: 'ppl' is a metric's output"),
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
             "`data.train.batch_size`, `loss.text.weight`, and for the model the paths `l3m plan` prints:\n"
             "`vit.trunk.blocks.depth` (a block's argument), `vit.dim` (an argument of a template instance)."),
    "E502": ("old-override", "An override uses the spelling from before one name per thing: `model.<...>`. A model's\n"
             "paths start with the model's own name, as `l3m plan` and `l3m graph` print them, so\n"
             "`model.trunk.blocks.depth=2` is now `vit.trunk.blocks.depth=2` and `model.dim=32` is `vit.dim=32`\n"
             "(for `model vit = ...`). The same path prefixes parameter names, freeze/no_decay/init globs and\n"
             "checkpoint and export tensor names (`vit.trunk.blocks.layers.0.norm1.weight`)."),
    "E503": ("model-name", "The model is named like a section or a declaration kind (`train`, `mesh`, `log`, `data`,\n"
             "`loss`, `metric`, `optimizer`, `schedule`, ...). An override path starts with the model's name\n"
             "(`vit.dim=32`), so `train.steps` could then mean either; rename the model. A `let` may share the\n"
             "model's name: a let is overridden by its bare name (`vit=3`), the model only by a dotted path."),
    "E601": ("mesh", "The declared mesh cannot be laid over the world size: the product of the fixed\n"
             "dimensions must divide it, and at most one dimension may be -1."),
    "E602": ("setting", "A `train`, `mesh` or `log` section, or a settings line of `data` (`on_error`,\n"
             "`max_error_fraction`), has a key that does not exist, or a value of the wrong type, or a\n"
             "negative count (`train.steps`, `log_every`, `eval_every`, `checkpoint_every`, `keep`, ...)."),
    "E603": ("section", "A section appears twice, e.g. two `optimizer` lines or two `mesh` blocks."),
    "E604": ("global-batch", "The train source's `batch_size` is the global batch of one optimizer step; it must\n"
             "split into `train.micro_batch` × data-parallel ranks (`dp_replicate × dp_shard`) × `train.grad_accum`.\n"
             "Checked when the mesh or `--world-size` fixes the data-parallel size."),
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
    "E821": ("token-shards", "A `TokenShards` directory holds a manifest.json that cannot be used: not valid JSON,\n"
             "not a token-shard manifest, another format version, or a field is missing. Prepare it again\n"
             "with `l3m data prepare --tokenizer TOK --output DIR CORPUS...`."),
    "W821": ("token-shards-absent", "A `TokenShards` directory (or its manifest.json) is not there, so lint cannot check\n"
             "its vocabulary against the model. Fine when the data is prepared on another machine; a run\n"
             "stops with a message if it is still missing. An interrupted prepare is finished by re-running it."),
    "E830": ("document-mask", "Document masking is asked for where it cannot work: a data source binds its\n"
             "`segments` port but cannot give it (byte streams and `pack = false` have no packed documents), or\n"
             "a `DocumentMask` has neither `segments` bound (`DocumentMask() (segments = segments) -> mask`)\n"
             "nor an `eos_id` to find documents in `tokens`. Also: a source with optional ports (`WebDataset`,\n"
             "`HFDataset`: image?, text?, label?) bound where its arguments give no such port, or positionally\n"
             "so that a key lands on another port (`-> image, label` binds `label` to `text`): bind by name."),
    "E831": ("mixture", "A `Mixture` data source is malformed: a name in `sources` is not another entry of the\n"
             "`data` section (or is a mixture itself, or `train`), `weights` are not positive or not one per\n"
             "source, or a source does not write every key the mixture writes."),
    "E208": ("tie-target", "A block's `tie` argument names no block of the model, or several (tie by the block's\n"
             "name when it is unique, else by its path such as `gpt.preprocessor.embed`), or the block itself.\n\n"
             "    head { lm: LMHead(dim = 64, vocab = 2048, tie = \"embd\") x -> logits }   # no block 'embd'"),
    "E640": ("pattern", "A parameter-name pattern matches nothing, so the setting would silently do nothing:\n"
             "a `train.freeze`, `train.trainable` or `train.init_include` glob that matches no parameter of the\n"
             "model (checked by `lint` from the blocks' static parameter names, and again by `plan` and\n"
             "`train`), or a `train.init_include` / `init_exclude` glob that matches no tensor of the\n"
             "`init_from` file (checked by `train`). Patterns are fnmatch globs over full names; `l3m plan` lists the blocks, whose paths\n"
             "start the names (`vit.trunk.blocks.layers.0.attn.qkv.weight`). Lint skips a glob that could match\n"
             "inside a block whose parameters it cannot know (an extension's), and `init_include` under\n"
             "`init_rename`. An optimizer's `no_decay` glob that matches nothing is only a note (N640).\n\n"
             "    train { freeze = [\"vit.trunk.block.*\"] }   # error: the block is called 'blocks'"),
    "N640": ("no-decay-pattern", "An optimizer's `no_decay` glob matches no parameter of the model, so weight decay\n"
             "applies as if it were not there. Only a note: shared recipes list globs for other models too\n"
             "(`*pos*` for a model whose positions are a frozen table, `*bias` for one without biases)."),
    "E780": ("tie-no-weight", "A block's `tie` names a block that has no weight to share: tying shares the target's\n"
             "`.weight` (a TokenEmbedding's table, a Linear's matrix), and blocks such as a Transformer or a\n"
             "mask have none.\n\n"
             "    head { lm: LMHead(dim = 64, vocab = 256, tie = \"blocks\") x -> logits }   # 'blocks' is a Transformer"),
    "E781": ("tie-shape", "A block's `tie` shares a weight whose shape differs from the tying block's own:\n"
             "an LMHead's weight is [vocab, dim] and must equal the TokenEmbedding's [vocab, dim], so both\n"
             "need the same `vocab` and `dim`. Lint computes both shapes from the blocks' arguments.\n\n"
             "    embed: TokenEmbedding(vocab = 256, dim = 64) ...\n"
             "    lm:    LMHead(dim = 64, vocab = 512, tie = \"embed\") x -> logits   # [512, 64] vs [256, 64]"),
    "E790": ("share-target", "A block's `share` argument (use another block's parameters instead of its own) names no\n"
             "block, several (name one by its path, such as `cnn.trunk.conv1`), the block itself, or a chain\n"
             "of `share` arguments that loops back.\n\n"
             "    conv2: Conv2d(in_channels = 16, out_channels = 16, share = \"conv\") x -> x   # no block 'conv'"),
    "E791": ("share-class", "A block's `share` names a block of another class: only a block of the same class has\n"
             "the same parameters to share (a Conv2d shares a Conv2d's weight and bias).\n\n"
             "    bn2: BatchNorm(channels = 16, share = \"conv1\") x -> x   # conv1 is a Conv2d"),
    "E792": ("share-shape", "A block's `share` names a block whose parameters have other names or shapes: both must\n"
             "be built from the same arguments (channels, kernel, groups, bias, ...). Lint computes both\n"
             "blocks' parameters from their arguments.\n\n"
             "    conv1: Conv2d(in_channels = 16, out_channels = 16) x -> x\n"
             "    conv2: Conv2d(in_channels = 16, out_channels = 32, share = \"conv1\") x -> y   # [32, 16, 3, 3] vs [16, 16, 3, 3]"),
    "E750": ("shape-mismatch", "A block, loss or metric reads a key whose shape cannot be what it declares: a dim\n"
             "is another number, or the ranks differ. Lint propagates shapes from the data sources (and\n"
             "`keys { }`) through every block's declared `shapes`; the message names the writer of the key with\n"
             "its shape and what the reader expects, at the argument that fixes the expected dim when the file\n"
             "wrote one (else at the key). A sequence longer than a block's table (`max_len`) is E754.\n\n"
             "    proj: Linear(in_features = 32, out_features = 64) x -> x   # x is [B, N, 48]: error"),
    "E751": ("dtype-mismatch", "A block reads a key of the wrong kind of number: integer ids where it computes on\n"
             "floats (a Linear on token ids), or floats where it needs integer ids (an embedding on features)."),
    "E752": ("key-declaration", "A `keys { }` declaration disagrees with what the data source (or first writer) of that\n"
             "key gives: another dtype, another number of dims, or a dim that is another number. Symbols (B,\n"
             "N) match anything, the same symbol the same thing.\n\n"
             "    keys { tokens: long[B, 128] }\n"
             "    data { train: TextBytes(seq_len = 256) -> tokens, targets }   # error: tokens is [B, 256]"),
    "E753": ("value-range", "A key holds integer ids or labels that may be larger than what the block, loss or\n"
             "metric reading it accepts: token ids of a tokenizer (or bytes < 256) into an embedding or\n"
             "head with a smaller `vocab`, labels of a dataset's classes (DigitsImages: < 10) into a loss\n"
             "whose logits have fewer classes (`num_classes`). Ids past an embedding index out of range at\n"
             "run time (a device-side assert on a GPU). Make the table at least as large as the data's range.\n\n"
             "    train: DigitsImages() -> image, label\n"
             "    head:  Classifier(dim = 64, num_classes = 5) x -> logits     # error: labels go up to 9"),
    "E754": ("check-failed", "A block's declared constraint on its arguments (and on the shapes it receives) does\n"
             "not hold, e.g. `heads` not dividing `dim` in `Attention`, `kv_heads` not dividing `heads`, `top_k` above\n"
             "the experts, a sequence longer than a position table (`N <= max_len`: often a forgotten cls\n"
             "token, or `data.train.seq_len` beyond the model's context). Reported at the argument."),
    "E755": ("shape-rule", "A block whose shapes a rule computes (`shapes = \"@name\"`, l3m/dsl/shapes/rules.py)\n"
             "found arguments or inputs that cannot work together: the same kind of constraint as E754, for\n"
             "blocks a one-line declaration cannot describe. E.g. a `Transformer` whose `heads` do not divide\n"
             "`dim` (without `head_dim`), an odd head size with RoPE, `SelectTokens` outside the sequence, or\n"
             "`Concat` of sequences whose widths differ. Reported at the argument."),
    "E756": ("shape-declaration", "A registered class declares `shapes` or `checks` that cannot be read (a bug in the\n"
             "class, usually an extension): the message quotes the grammar error. The grammar is in the\n"
             "docstring of l3m/dsl/shapes/spec.py, e.g. `shapes = \"x: [B, N, dim] -> x: [B, N, out]\"`."),
    "E901": ("block-failed", "A block, loss, metric or other node raised an error while it was built (its\n"
             "constructor refused the file's arguments) or while it ran on a batch (a shape that does not\n"
             "fit, e.g. a `Linear` whose `in_features` differ from the width of the block before it). The\n"
             "message names the node, its type and what it said; a note gives the shapes of its inputs.\n"
             "Set L3M_DEBUG=1 to see the Python traceback as well."),
    "E902": ("label-range", "A class label is outside the classes of the logits a loss or metric compares it with:\n"
             "the message names the key, the label and the number of classes. Labels must lie in\n"
             "[0, classes) (or be the loss's `ignore_index`). Labels are checked on every batch on the CPU\n"
             "and on the first batches on a GPU, where an out-of-range label would otherwise stop the\n"
             "process with a device-side assert. Fix the data, or the head's `num_classes` / `vocab`."),
    "E605": ("float8-tp", "`train.float8` is set with tensor parallelism (`mesh.tp > 1`). Float8 layers split over\n"
             "tensor-parallel ranks need torchao's float8 parallel styles, which l3m's plans do not use yet.\n"
             "Use `mesh.tp = 1` (FSDP shards the float8 layers' weights) or `train.float8 = false`."),
    "E606": ("pp-split", "`mesh.pp_split` names where a pipeline stage starts: a block path\n"
             "(`clip.text.trunk.blocks`) or a layer of a Transformer block (`gpt.trunk.blocks.layers.12`). The\n"
             "message says which entry is neither (with the closest name), when there are more entries than\n"
             "cuts (`pp` stages have pp - 1; interleaved_1f1b: pp × pp_virtual stages), or when one names the\n"
             "model's first block. `l3m plan` with `mesh { pp = N }` prints the stages and the keys at each cut."),
    "W605": ("float8-unavailable", "`train.float8` is set but the `torchao` package, which swaps the Linear layers for\n"
             "float8 ones, is not installed where lint ran: `pip install 'l3m[float8]'`. Only a warning, as the\n"
             "training machine may differ; `train` refuses to start without it, and also on the CPU or on a GPU\n"
             "below compute capability 8.9 (float8 tensor cores: Ada, Hopper and newer)."),
    "W606": ("float8-eager", "`train.float8` is set while `train.compile` is off. Without `torch.compile` the\n"
             "casts to float8 and their scales run as separate kernels and float8 is usually slower than bf16;\n"
             "set `train.compile = \"blocks\"` (or `\"model\"`)."),
    "W101": ("unused-output", "A key written by a block or generator is never read by anything later. Remove the\n"
             "binding, or read it (for example in a loss or metric)."),
    "W102": ("unused-declaration", "A key declared in `keys { ... }` is never written."),
    "W103": ("unused-import", "An imported namespace is never used."),
    "W105": ("default-unused", "A `default NAME(arg = ...)` statement (or `default.NAME.arg=...` on the command line)\n"
             "reaches no call: nothing in its scope (the file and the files it imports) calls NAME, or every\n"
             "call writes the argument itself. Check the name, or remove the statement."),
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
