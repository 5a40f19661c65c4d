"""Resolve: AST + imports + overrides -> `ir.Program`.

Overrides replace expressions *before* anything is evaluated, so `dim=512` reaches every use of
`dim`. `let`s are evaluated lazily, once, in their own file's scope; templates (`def`) are
expanded into nested models with their internal keys namespaced by the instance name. Each
node is held against the registry: its name, its constructor's arguments and its ports.

This module is the entry point; the stages, one concern each, are in `l3m.dsl.resolver`.
"""

from __future__ import annotations

from l3m.dsl.ir import STAGES
from l3m.dsl.resolver.program import Result, resolve
from l3m.dsl.source import read_source

__all__ = ["Result", "resolve", "read_source", "STAGES"]
