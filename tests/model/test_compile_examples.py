"""Every example's MetaModel is one graph for torch.compile: dynamo counts zero graph breaks."""

from __future__ import annotations

import pytest
import torch
from helpers import EXAMPLES
from test_zoo import first_batch

from l3m.dsl import compile_file
from l3m.model.build import materialize


@pytest.mark.slow
@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_zero_graph_breaks(path):
    compiled = compile_file(str(path))
    model = materialize(compiled.build_model(), "cpu")
    torch._dynamo.reset()
    explained = torch._dynamo.explain(model)(first_batch(compiled.program))
    assert explained.graph_break_count == 0, [str(r.reason)[:200] for r in explained.break_reasons]
    assert explained.graph_count == 1
