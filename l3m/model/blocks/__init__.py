"""The block library; importing this package registers every block."""

from l3m.model.blocks import (  # noqa: F401
    attention,
    embeddings,
    feedforward,
    heads,
    layers,
    masks,
    moe,
    norms,
    pooling,
    transformer,
)
