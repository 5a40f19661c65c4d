"""`l3m export --format FORMAT` and `l3m.export(...)`: a trained model written as others load it.

    l3m export runs/llama_tiny OUT --format hf        # a Hugging Face folder (transformers)
    l3m export runs/vit_digits OUT --format timm      # a timm folder (timm.create_model)
    l3m export runs/x model.safetensors               # l3m's own names (the default format)

The weights come from a run directory (its newest complete checkpoint), one checkpoint
directory, or a safetensors/torch file of l3m-named tensors. The program they belong to is the
run's own record (`program.l3m` with the recorded overrides, found beside the checkpoint), or
`--file FILE.l3m` with overrides; the model is built on the meta device (no memory) to read its
structure, and the weights must fit it exactly. The run's tokenizer (a data source's
`tokenizer`) and sequence length / image statistics go into the folder's config.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FORMATS = ("safetensors", "hf", "timm")


@dataclass
class ExportResult:
    """What an export wrote: the files (paths), the checkpoint step (-1 unknown) and notes."""

    files: list[Path]
    step: int = -1
    notes: list[str] = field(default_factory=list)


def program_of(source: str | Path, file: str | Path | None, overrides: Sequence[str]) -> tuple[Any, Path]:
    """The compiled program `source`'s weights belong to, and its path: `file` when given, else the one
    its run directory recorded (with the run's overrides, then `overrides`)."""
    import l3m

    if file is None and not Path(source).exists():
        raise FileNotFoundError(f"no such run, checkpoint or weights file: {source}")
    record = run_record_of(source) if file is None else None
    if file is None and record is None:
        raise ValueError(f"{source} is not inside a run directory: give the program with --file FILE.l3m")
    program_path, recorded = (Path(file), []) if file is not None else record
    return l3m.load(str(program_path), [*recorded, *overrides]), program_path


def run_record_of(source: str | Path) -> tuple[Path, list[str]] | None:
    """(program.l3m, recorded overrides) of the run that `source` (a run, its `ckpt/`, one step
    directory, or a file inside a run) belongs to; None when it is not inside a run."""
    from l3m.train.rundir import NotARunRecord, read_run_record

    p = Path(source).resolve()
    for d in [p, *p.parents][:4]:
        if (d / "run.json").is_file() and (d / "program.l3m").is_file():
            try:
                program, overrides, _ = read_run_record(d)
            except NotARunRecord:
                return None
            return program, overrides
    return None


def _weights(source: str | Path, notes: list[str], ema: bool = False) -> tuple[dict, int]:
    """The l3m-named tensors of `source` and the step they were saved at (-1 for a file);
    with `ema`, a checkpoint's weight averages (`train.ema`) in place of the trained weights."""
    from l3m.train.checkpoint import load_model_tensors, read_state, resolve_checkpoint
    from l3m.train.export import read_weights

    p = Path(source)
    if not p.exists():
        raise FileNotFoundError(f"no such run, checkpoint or weights file: {p}")
    if p.is_dir():
        ckpt = resolve_checkpoint(p, report=notes.append)
        tensors = load_model_tensors(ckpt)
        if ema:
            from l3m.train.ema import with_averages

            tensors = with_averages(ckpt, tensors)
        return tensors, int(read_state(ckpt).get("step", -1))
    if ema:
        raise ValueError(f"--ema needs a run or checkpoint directory (the averages are kept there), not {p}")
    return read_weights(p), -1


def _source_args(program) -> list[dict[str, Any]]:
    """The keyword arguments of the program's data sources, the training source first."""
    nodes = sorted(program.of_role("source"), key=lambda n: (n.name != "train", n.index))
    return [dict(n.call.kwargs) for n in nodes]


def _first(sources: list[dict[str, Any]], name: str) -> Any:
    return next((s[name] for s in sources if s.get(name) not in (None, "")), None)


def _tokenizer(sources: list[dict[str, Any]], notes: list[str]):
    from l3m.data.tokenizers import TokenizerError, load_tokenizer

    spec = _first(sources, "tokenizer")
    if not isinstance(spec, str):
        notes.append("the program's data names no tokenizer: none is written")
        return None
    try:
        return load_tokenizer(spec)
    except (FileNotFoundError, TokenizerError) as e:
        notes.append(f"no tokenizer written: {e}")
        return None


def _fit(model, state: Mapping) -> None:
    """The weights must be exactly the model's (names and shapes), checked without allocating."""
    from l3m.train.export import load_pretrained

    load_pretrained(model, {k: v.to("meta") for k, v in state.items()}, strict=True)


def _check_maps(model, format: str, image_size: int | None) -> None:
    """ValueError naming what of `model` has no counterpart in `format`."""
    if format == "hf":
        from l3m.interop.hf import hf_layout

        hf_layout(model)
    else:
        from l3m.interop.timm_export import timm_export

        timm_export(model, image_size)


def export(
    source: str | Path,
    out: str | Path,
    format: str = "safetensors",
    *,
    file: str | Path | None = None,
    overrides: Sequence[str] = (),
    dtype: str | None = None,
    ema: bool = False,
) -> ExportResult:
    """Export the weights of `source` (a run, checkpoint or weights file) to `out` in `format`:
    "safetensors" (one file, l3m's names), "hf" (a Hugging Face Llama folder) or "timm" (a timm
    ViT folder). `file`/`overrides` name the program when `source` is not inside a run directory
    (with a run, `overrides` are added to the recorded ones); `ema` exports a checkpoint's weight
    averages (`train.ema`); `dtype` casts (hf, timm). Raises ValueError for a model that
    does not map to the format (the message names the part), FileNotFoundError for a missing
    source, and `CompileError` for a program that does not compile."""
    if format not in FORMATS:
        raise ValueError(f"unknown export format {format!r}; expected one of {', '.join(FORMATS)}")
    notes: list[str] = []
    if format == "safetensors":
        return _export_safetensors(source, out, notes, ema)

    compiled, program_path = program_of(source, file, overrides)
    model = compiled.build_model()  # meta device: the structure only
    sources = _source_args(compiled.program)
    size = _first(sources, "image_size")
    size = size if isinstance(size, int) else None
    from l3m.interop.finetune_export import plain_structure

    to_plain = plain_structure(model, format)  # LoRA merged into the weights (l3m.model.adapters)
    _check_maps(model, format, size)  # before reading any weights
    state, step = _weights(source, notes, ema)
    state = to_plain(state)
    _fit(model, state)
    meta = {"step": str(step), "program": str(program_path)}
    target = Path(out)
    if format == "hf":
        from l3m.interop.hf import write_hf_llama
        from l3m.interop.hf_tokenizer import not_exported_note

        tok = _tokenizer(sources, notes)
        seq = _first(sources, "seq_len")
        if tok is not None and (why := not_exported_note(tok)):
            notes.append(why)
        names = write_hf_llama(model, state, target, tokenizer=tok, dtype=dtype, metadata=meta,
                               max_positions=int(seq) if isinstance(seq, int) else None)
    else:
        from l3m.interop.timm_export import write_timm

        names, more = write_timm(model, state, target, image_size=size,
                                 mean=_first(sources, "mean"), std=_first(sources, "std"), dtype=dtype,
                                 metadata=meta)
        notes += more
    return ExportResult([target / n for n in names], step, notes)


def _export_safetensors(source: str | Path, out: str | Path, notes: list[str], ema: bool) -> ExportResult:
    from l3m.train.checkpoint import resolve_checkpoint
    from l3m.train.export import export_checkpoint

    if not Path(source).exists():
        raise FileNotFoundError(f"no such run or checkpoint directory: {source}")
    ckpt = resolve_checkpoint(source, report=notes.append)
    info = export_checkpoint(ckpt, out, ema=ema)
    return ExportResult([Path(out)], info["step"], notes)


def cli_main(source: str, out: str, format: str, file: str | None, overrides: Sequence[str],
             dtype: str | None = None, ema: bool = False) -> int:
    """`l3m export SOURCE OUT --format hf|timm` (exit codes as `l3m.interop.run_command`)."""
    from l3m.interop import run_command

    def body() -> str:
        result = export(source, out, format, file=file, overrides=overrides, dtype=dtype, ema=ema)
        for note in result.notes:
            print(f"note: {note}", file=sys.stderr)
        step = f" (step {result.step})" if result.step >= 0 else ""
        return f"exported {source}{step} as {format}: " + ", ".join(str(f) for f in result.files)

    return run_command(f"export --format {format}", body)
