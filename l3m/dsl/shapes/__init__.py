"""Static shapes (contract C3): declared per class (`shapes`, `checks`; grammar in `spec`), propagated
through the dataflow by `check_shapes`, torch-free."""

from __future__ import annotations

from l3m.dsl.shapes.engine import check_shapes
from l3m.dsl.shapes.spec import ShapeError, ShapeSpec, SpecSyntaxError, TensorType, eval_check, parse_spec
from l3m.dsl.shapes.table import KeyShape, ShapeTable

__all__ = ["KeyShape", "ShapeError", "ShapeSpec", "ShapeTable", "SpecSyntaxError", "TensorType", "check_shapes",
           "eval_check", "parse_spec"]
