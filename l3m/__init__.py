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


__all__ = ["load", "register", "__version__"]
