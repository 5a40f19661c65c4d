"""Names the built model cannot hold: a model or block called like an attribute of torch's modules.

Each model, stage and block is a module under its own name (`vit.trunk.blocks`, see
`l3m.model.naming`), so a name such as `eval` or `to` would be shadowed by the module's method;
said at lint (E503) rather than when the model is built. Torch-free.
"""

from __future__ import annotations

from l3m.config import SECTION_SCHEMAS
from l3m.dsl.diagnostics import Diagnostic
from l3m.dsl.ir import ModelInfo, Program
from l3m.model.naming import RESERVED, ROLE_ROOTS


def check_names(program: Program) -> list[Diagnostic]:
    diags = []
    for m in program.models:
        if m.name in RESERVED and not _refused_by_resolver(m):
            diags.append(Diagnostic("E503", f"a model cannot be named '{m.name}': the built model has an attribute "
                                    "of that name", m.span, "rename the model"))
    for n in program.blocks:
        if n.name in RESERVED:
            diags.append(Diagnostic("E503", f"a block cannot be named '{n.name}': the built model has an attribute "
                                    "of that name", n.span, "rename the block"))
    return diags


def _refused_by_resolver(m: ModelInfo) -> bool:
    """A root model named like a section or role (`train`) already has its E503 from the override rules."""
    return m.parent is None and (m.name in ROLE_ROOTS or m.name in SECTION_SCHEMAS)
