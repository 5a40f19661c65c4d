"""From a run (or a checkpoint, or a weights file with its program) to a model ready to generate
and the tokenizer its data used.

Weights are read as `l3m export` reads them (safetensors / DCP through `l3m.train.checkpoint`,
never unpickled); the program is the run's recorded copy with its overrides. The tokenizer is the
one a data source declares (`tokenizer = ...`, its class default otherwise), opened with that
source's policy: a text stream encodes the prompt as it is, captions and unpacked documents put
BOS first; EOS, where the tokenizer has one, ends a sequence. Token shards (`TokenShards`) use the
tokenizer their manifest records.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from l3m.generation.decoder import Decoder, find_decoder


class GenerateError(ValueError):
    """A run, checkpoint, tokenizer or prompt that generate cannot use (exit 2 on the command line)."""


class WeightsMismatch(ValueError):
    """The weights do not fit the run's program (exit 1 on the command line)."""


@dataclass
class Text:
    """How the run's data turns text into ids: the tokenizer, whether BOS leads, the cleaning,
    and (for captions) the fixed number of tokens the model takes."""

    tokenizer: Any
    bos: bool
    clean: str = "none"
    length: int | None = None

    def encode(self, prompt: str) -> list[int]:
        from l3m.data.tokenizers.policy import clean_text

        bos = self.tokenizer.bos_id if self.bos else None
        return ([bos] if bos is not None else []) + self.tokenizer.encode(clean_text(prompt, self.clean))

    def decode(self, ids: list[int]) -> str:
        specials = {self.tokenizer.bos_id, self.tokenizer.pad_id, self.tokenizer.eos_id} - {None}
        return self.tokenizer.decode([i for i in ids if i not in specials])

    @property
    def eos_id(self) -> int | None:
        return self.tokenizer.eos_id

    @property
    def pad_id(self) -> int:
        for i in (self.tokenizer.pad_id, self.tokenizer.eos_id):
            if i is not None:
                return int(i)
        return 0


@dataclass
class Loaded:
    """A model ready to generate, its decoder, the run's text codec and what the data says of images."""

    decoder: Decoder
    text: Text
    aligned: bool  # logits at i predict token i (AIMv2's caption decoder), not token i + 1
    source: dict[str, Any]  # the tokenizing data source's arguments
    step: int = -1


def program_of(source: str | Path, file: str | Path | None, overrides: list[str] | tuple[str, ...]):
    """The compiled program the weights in `source` belong to."""
    import l3m
    from l3m.interop.export import run_record_of

    record = run_record_of(source) if file is None else None
    if file is None and record is None:
        raise GenerateError(f"{source} is not inside a run directory: give the program with --file FILE.l3m")
    program_path, recorded = (Path(file), []) if file is not None else record
    return l3m.load(str(program_path), [*recorded, *overrides])


def load(source: str | Path, file: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (),
         device: str | None = None) -> Loaded:
    """Build the program's model on `device` (default: CUDA when there is one, else the CPU), load the
    weights of `source` into it (they must fit exactly) and find its decoder and tokenizer.
    GenerateError for anything unusable."""
    import torch

    from l3m.interop.export import _weights
    from l3m.model.build import materialize
    from l3m.train.export import load_pretrained

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        kind = torch.device(device).type
    except RuntimeError:
        raise GenerateError(f"--device: unknown device {device!r} (cpu, cuda, cuda:1, ...)") from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise GenerateError(f"--device {device}: this machine has no CUDA device")
    if not Path(source).exists():
        raise GenerateError(f"no such run, checkpoint or weights file: {source}")
    compiled = program_of(source, file, overrides)
    model = compiled.build_model()
    try:
        decoder = find_decoder(model)
    except ValueError as e:
        raise GenerateError(str(e)) from None
    text, args = run_text(compiled.program)
    notes: list[str] = []
    try:
        state, step = _weights(source, notes)
    except FileNotFoundError as e:
        raise GenerateError(str(e)) from None
    model = materialize(model, device, check=False).eval()
    try:
        load_pretrained(model, state, strict=True)
    except ValueError as e:
        raise WeightsMismatch(f"{source}: {e}") from None
    return Loaded(decoder, text, aligned_logits(compiled.program, decoder), args, step)


def run_text(program) -> tuple[Text, dict[str, Any]]:
    """The text codec of the program's first data source that tokenizes text, and its arguments."""
    from l3m import registry
    from l3m.data.tokenizers import TokenizerError, load_tokenizer

    registry.load_builtins()
    nodes = sorted(program.of_role("source"), key=lambda n: (n.name != "train", n.index))
    for node in nodes:
        entry = registry.lookup(node.call.type_name)
        policy = entry.trait("token_policy") if entry is not None else None
        if policy not in ("stream", "caption", "manifest"):
            continue
        args = dict(node.call.kwargs)
        defaults = {k: p.default for k, p in entry.signature.parameters.items() if p.default is not p.empty}
        if policy == "manifest":  # token shards: the tokenizer `l3m data prepare` recorded
            return Text(_shards_tokenizer(args.get("root")), bos=False), args
        spec = args.get("tokenizer", defaults.get("tokenizer", "bytes"))
        try:
            tok = load_tokenizer(str(spec), policy)
        except (FileNotFoundError, TokenizerError) as e:
            raise GenerateError(f"the run's tokenizer cannot be opened: {e}") from None
        pack = args.get("pack", defaults.get("pack", True))
        caption = policy == "caption"
        length = args.get("seq_len") if caption and isinstance(args.get("seq_len"), int) else None
        clean = args.get("text_clean", defaults.get("text_clean", "none")) or "none"
        return Text(tok, bos=caption or not pack, clean=str(clean), length=length), args
    raise GenerateError("the program's data tokenizes no text (no source with a `tokenizer`): "
                        "generate does not know how to turn the prompt into tokens")


def _shards_tokenizer(root: Any):
    """The tokenizer that made the token shards in `root`, as their manifest names it."""
    from l3m.data.prepare.format import read_manifest
    from l3m.data.tokenizers import TokenizerError, load_tokenizer

    try:
        record = read_manifest(str(root))["tokenizer"]
        tok = load_tokenizer(str(record["name"]), "stream")
    except (FileNotFoundError, TokenizerError) as e:
        raise GenerateError(f"the tokenizer of the token shards in {root!r} cannot be opened: {e}") from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise GenerateError(f"the token shards in {root!r} name no usable tokenizer: {e}") from None
    if tok.vocab_size != record.get("vocab_size"):
        raise GenerateError(f"tokenizer {record['name']!r} now has {tok.vocab_size} tokens; the shards in {root!r} "
                            f"were made with {record.get('vocab_size')}")
    return tok


def aligned_logits(program, decoder: Decoder) -> bool:
    """True when a loss scores the logits against the tokens themselves without a shift (AIMv2:
    its cls token makes position i predict token i)."""
    for node in program.of_role("loss"):
        if node.call.type_name == "LMCrossEntropy" and node.read_keys[:2] == [decoder.logits_key, decoder.token_key]:
            return not node.call.kwargs.get("shift", False)
    return False
