"""Exports of fine-tuned models: LoRA merged into the base weights, or the adapter tensors alone.

    l3m export runs/ft merged.safetensors                   # LoRA folded in: loads into the base program
    l3m export runs/ft lora.safetensors --adapters-only     # only lora_A/lora_B and Adapter tensors
    l3m export runs/ft OUT --format hf                      # merged, then as any other export

A full export of a model with LoRA writes `W + alpha / rank * B A` under the base weight's name and no LoRA
tensors, so other tools (and the same program without `lora`) load a plain model. Bottleneck `Adapter`s add
layers no merge can remove: their tensors stay in l3m's safetensors format, and hf/timm refuse them.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from torch import nn

from l3m.interop.export import ExportResult, _fit, _weights, program_of
from l3m.model.adapters import adapter_state, has_bottleneck_adapters, lora_layout, merged_state, without_lora


def checkpoint_has_lora(source: str | Path) -> bool:
    """Whether a run, checkpoint directory or safetensors file holds LoRA tensors (read from its metadata or
    header, no tensor loaded)."""
    from l3m.train.checkpoint import read_metadata, resolve_checkpoint

    p = Path(source)
    try:
        if p.is_dir():
            keys = [k[len("model/"):] for k in read_metadata(resolve_checkpoint(p)).state_dict_metadata
                    if k.startswith("model/")]
        elif p.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(p), framework="pt") as f:
                keys = list(f.keys())
        else:
            return False
    except Exception:  # unreadable: the ordinary export path reports what is wrong
        return False
    return any(k.endswith((".lora_A", ".lora_B")) for k in keys)


def plain_structure(model: nn.Module, format: str) -> Callable[[dict], dict]:
    """Make `model` the plain model a format without adapters receives (its LoRA'd linears become Linears,
    in place) and return what turns its weights into that model's (LoRA merged). ValueError for Adapter
    blocks, which have no place in such a format."""
    if has_bottleneck_adapters(model):
        raise ValueError(f"the model has Adapter blocks, which {format} has no place for: export them with "
                         "--adapters-only, or the whole model as l3m safetensors (the default format)")
    layout = lora_layout(model)
    if not layout:
        return dict
    without_lora(model)
    return lambda state: merged_state(layout, state)


def export_finetuned(source: str | Path, out: str | Path, *, file: str | Path | None = None,
                     overrides: Sequence[str] = (), ema: bool = False, adapters_only: bool = False) -> ExportResult:
    """Write `source`'s weights (a run, checkpoint or weights file) to `out` as safetensors: the adapter
    tensors alone (`adapters_only`), else every tensor with LoRA merged into the base weights."""
    from safetensors.torch import save_file

    from l3m.durable import atomic_output

    notes: list[str] = []
    model = program_of(source, file, overrides)[0].build_model()  # meta device: the structure only
    state, step = _weights(source, notes, ema)
    _fit(model, state)
    if adapters_only:
        tensors = adapter_state(model, state)
        kind = "adapters"
    else:
        lora = sum(1 for n in state if n.endswith(".lora_A"))
        tensors = merged_state(model, state)
        kind = "merged"
        if lora:
            notes.append(f"merged the LoRA updates of {lora} projection(s) into their weights")
        if has_bottleneck_adapters(model):
            notes.append("Adapter blocks cannot be merged: their tensors are written as they are")
    with atomic_output(out) as tmp:
        save_file({k: v.contiguous() for k, v in sorted(tensors.items())}, str(tmp),
                  metadata={"format": "pt", "producer": "l3m", "step": str(step), "l3m_weights": kind})
    return ExportResult([Path(out)], step, notes)


def cli_main(source: str, out: str, file: str | None, overrides: Sequence[str], ema: bool = False,
             adapters_only: bool = False) -> int:
    """`l3m export SOURCE OUT [--adapters-only]` for a fine-tuned model: exit 0 written, 1 the weights do
    not fit or the model has no adapters, 2 a missing or unreadable input or an unwritable output."""
    from l3m.interop import run_command

    def body() -> str:
        result = export_finetuned(source, out, file=file, overrides=overrides, ema=ema, adapters_only=adapters_only)
        for note in result.notes:
            print(f"note: {note}", file=sys.stderr)
        step = f" (step {result.step})" if result.step >= 0 else ""
        return f"exported the {'adapter tensors' if adapters_only else 'weights'} of {source}{step}: {out}"

    return run_command("export", body)
