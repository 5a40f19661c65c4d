"""l3m: train large models of any modality from one small, compiled `.l3m` file per experiment.

    import l3m
    compiled = l3m.load("examples/llm_bytes.l3m", overrides=["train.steps=10"])
    model = compiled.build_model()
"""

from __future__ import annotations

from l3m.registry import register

__version__ = "0.1.0"


def load(path: str, overrides: list[str] | tuple[str, ...] = (), world_size: int | None = None,
         extensions: tuple[str, ...] = (), import_extensions: bool = True):
    """Compile a `.l3m` file; raise `CompileError` (with every diagnostic) if it has errors.

    Its `extension` modules are imported (their code runs; a note on stderr says so), so that
    `build_model()` can build their blocks. To only check a file, pass `import_extensions=False`:
    they are then read from source with `ast` and nothing of the project runs.
    """
    from l3m.dsl import compile_file

    compiled = compile_file(path, overrides, world_size=world_size, extensions=extensions,
                            import_extensions=import_extensions)
    compiled.raise_errors()
    return compiled


def export(source, out, format: str = "safetensors", *, file=None, overrides=(), dtype=None, ema: bool = False):
    """Export a run, checkpoint or weights file: "safetensors" (l3m's names), "hf" (a Hugging Face
    Llama folder `transformers` loads) or "timm" (a timm ViT folder). See `l3m.interop.export`;
    returns its `ExportResult` (files written, step, notes)."""
    from l3m.interop.export import export as _export

    return _export(source, out, format, file=file, overrides=overrides, dtype=dtype, ema=ema)


def generate(source, prompts, *, max_new_tokens: int = 32, temperature: float = 0.0, top_p: float = 1.0,
             seed: int = 0, use_cache: bool = True, image=None, file=None, overrides=(), device=None) -> list[str]:
    """Continue `prompts` (a string or a list, batched) with the decoder of a run, checkpoint or
    weights file (`file`: its program), tokenized as the run's data was; greedy at temperature 0,
    else nucleus sampling (`top_p`) reproducible by `seed`. See `l3m.generation.api`."""
    from l3m.generation.api import generate as _generate

    return _generate(source, prompts, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                     seed=seed, use_cache=use_cache, image=image, file=file, overrides=overrides, device=device)


def __getattr__(name: str):
    """`l3m.CompileError` without importing the compiler when `l3m` is imported."""
    if name == "CompileError":
        from l3m.dsl.diagnostics import CompileError

        return CompileError
    raise AttributeError(f"module 'l3m' has no attribute {name!r}")


__all__ = ["CompileError", "export", "generate", "load", "register", "__version__"]
