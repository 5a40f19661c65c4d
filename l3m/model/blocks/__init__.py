"""The block library; importing this package registers every block."""

from l3m.model.blocks import (  # noqa: F401
    attention,
    conv,
    elementwise,
    embeddings,
    feedforward,
    heads,
    layers,
    masks,
    moe,
    norms,
    peft,
    pooling,
    reshape,
    rope,
    tokens,
    transformer,
)
