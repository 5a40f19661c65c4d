"""Weights from other libraries: Hugging Face Llama, timm ViT, open_clip CLIP and torchtitan Llama 3
checkpoints in and out of l3m models.

    l3m import llama    model.safetensors   models/llama.l3m  llama_l3m.safetensors
    l3m import timm-vit vit.safetensors     my_vit.l3m        vit_l3m.safetensors

An import renames (and regroups) a foreign checkpoint's tensors to the parameter names of the
model a `.l3m` file builds, proves on the meta device that they fit it exactly (no tensor missing,
left over or mis-shaped; nothing is allocated), and writes them as safetensors that
`l3m eval FILE --checkpoint OUT` and `load_pretrained` read. An export is the inverse, so
foreign -> l3m -> foreign gives back the very same tensors.

Whole model folders that other libraries load directly (config, weights, tokenizer) are
`l3m export RUN OUT --format hf|timm` (`l3m.interop.export`, `hf`, `timm_export`).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from l3m.interop.llama import check_llama_config, l3m_to_llama, llama_to_l3m, read_config
from l3m.interop.mapping import read_foreign, save_safetensors
from l3m.interop.openclip import l3m_to_open_clip, open_clip_to_l3m
from l3m.interop.timm_vit import l3m_to_vit, vit_to_l3m
from l3m.interop.torchtitan_llama import l3m_to_titan, titan_to_l3m
from l3m.train.export import LoadReport, load_pretrained, read_weights

Convert = Callable[[Mapping[str, torch.Tensor], nn.Module], dict[str, torch.Tensor]]

# kind -> (foreign names to l3m names, l3m names to foreign names)
CONVERTERS: dict[str, tuple[Convert, Convert]] = {
    "llama": (llama_to_l3m, l3m_to_llama),
    "timm-vit": (vit_to_l3m, l3m_to_vit),
    "open-clip": (open_clip_to_l3m, l3m_to_open_clip),
    "torchtitan-llama": (titan_to_l3m, l3m_to_titan),
}


def _converters(kind: str) -> tuple[Convert, Convert]:
    if kind not in CONVERTERS:
        raise KeyError(f"unknown checkpoint kind {kind!r}; expected one of {', '.join(CONVERTERS)}")
    return CONVERTERS[kind]


def import_weights(
    kind: str, weights: Mapping[str, torch.Tensor], model: nn.Module
) -> dict[str, torch.Tensor]:
    """A `kind` checkpoint's tensors under `model`'s parameter names (model may be on meta)."""
    return _converters(kind)[0](weights, model)


def export_weights(kind: str, state: Mapping[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """l3m-named tensors of `model` (its state dict, or a file of them) under `kind`'s names."""
    return _converters(kind)[1](state, model)


def load_foreign(
    model: nn.Module, kind: str, source: str | Path | Mapping[str, torch.Tensor], strict: bool = True
) -> LoadReport:
    """Load a `kind` checkpoint (a file, a folder of safetensors shards or a state dict) into
    `model` in place."""
    weights = source if isinstance(source, Mapping) else read_foreign(source)
    return load_pretrained(model, import_weights(kind, weights, model), strict=strict)


def save_foreign(model: nn.Module, kind: str, path: str | Path) -> int:
    """Write `model`'s weights under `kind`'s names as safetensors; returns the tensor count."""
    tensors = export_weights(kind, model.state_dict(), model)
    save_safetensors(tensors, path, {"producer": "l3m", "kind": kind})
    return len(tensors)


def _fits(model: nn.Module, tensors: Mapping[str, torch.Tensor]) -> LoadReport:
    """Names and shapes of `tensors` against a meta-device model, allocating nothing."""
    return load_pretrained(model, {k: v.to("meta") for k, v in tensors.items()}, strict=True)


def run_command(what: str, body: Callable[[], str]) -> int:
    """Run `l3m WHAT` and print what `body` returns; exit codes as the other commands: 0 done, 1 the
    weights or the program do not fit (one line), 2 a missing or unreadable input or an unwritable output."""
    from l3m.dsl.diagnostics import CompileError

    try:
        print(body())
        return 0
    except CompileError as e:
        print(str(e), file=sys.stderr)
        return 2 if all(d.code == "E002" for d in e.diagnostics) else 1
    except (FileNotFoundError, IsADirectoryError, PermissionError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (ValueError, KeyError) as e:
        print(f"error: l3m {what}: {e.args[0] if e.args else e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _model(l3m_file: str, overrides: Sequence[str]) -> nn.Module:
    import l3m

    return l3m.load(l3m_file, list(overrides)).build_model()  # meta device: no memory


def import_main(kind: str, src: str, l3m_file: str, out: str, overrides: Sequence[str] = ()) -> int:
    """`l3m import KIND SRC FILE.l3m OUT`: rename checkpoint `src` (a file, or a folder of
    safetensors shards) to the names of FILE's model. For `llama`, a `config.json` beside `src`
    (or in it) is checked against the file: RoPE, norm epsilon, activation, tying."""

    def body() -> str:
        _converters(kind)
        model = _model(l3m_file, overrides)
        weights = read_foreign(src)
        if kind == "llama":
            config = read_config(src)
            problems = check_llama_config(config, model) if config is not None else []
            if problems:
                raise ValueError(f"{l3m_file} does not match config.json: " + "; ".join(problems))
        tensors = import_weights(kind, weights, model)
        report = _fits(model, tensors)
        save_safetensors(tensors, out, {"producer": "l3m import", "kind": kind})
        return f"imported {len(report.loaded)} tensors from {src} ({kind}) for {l3m_file}: {out}"

    return run_command("import", body)


def export_main(kind: str, src: str, l3m_file: str, out: str, overrides: Sequence[str] = ()) -> int:
    """The inverse of `import_main`: l3m-named weights (a safetensors file, a checkpoint or a run)
    of FILE's model written under `kind`'s names."""

    def body() -> str:
        _converters(kind)
        model = _model(l3m_file, overrides)
        from l3m.interop.finetune_export import plain_structure

        to_plain = plain_structure(model, kind)  # LoRA merged into the weights (l3m.model.adapters)
        state = to_plain(read_weights(src))
        _fits(model, state)
        tensors = export_weights(kind, state, model)
        save_safetensors(tensors, out, {"producer": "l3m", "kind": kind})
        return f"exported {len(tensors)} tensors of {l3m_file} from {src} as {kind}: {out}"

    return run_command("export", body)


__all__ = [
    "CONVERTERS",
    "export_main",
    "export_weights",
    "import_main",
    "import_weights",
    "load_foreign",
    "save_foreign",
]
