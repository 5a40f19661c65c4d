"""Which part of a model generates text: the keys its tokens come in and its logits go out by, and
whether its key/value cache can be used.

A model is a causal decoder when one `LMHead` writes logits and a causal self-attention lies on the
way (the LLM, the Llama-style model, AIMv2's multimodal decoder). The cache needs more: every block
must treat tokens one by one, or be a trunk of causal self-attention, or a position table starting
at 0, so that running only the newest token (with the cached keys) gives what the whole sequence would.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from l3m.model.blocks.attention import Attention
from l3m.model.blocks.embeddings import PosEmbed, TokenEmbedding
from l3m.model.blocks.heads import LMHead
from l3m.model.blocks.rope import Rope
from l3m.model.blocks.transformer import CrossAttentionDecoder, Transformer
from l3m.model.core import MetaModel

# Blocks that map each token alone (no position, no neighbour): safe to run on the newest token only.
TOKENWISE = ("TokenEmbedding", "LMHead", "Linear", "LayerNorm", "RMSNorm", "Activation", "MLP", "SwiGLU", "GeGLU")


class NotADecoder(ValueError):
    """The model cannot generate text (no LMHead, or no causal attention)."""


@dataclass
class Decoder:
    """A model's text decoder: tokens enter at `token_key`, logits leave at `logits_key`;
    `cache_problem` says why the key/value cache cannot be used (None: it can)."""

    model: MetaModel
    token_key: str
    logits_key: str
    vocab: int
    cache_problem: str | None
    positions: int | None = None  # the longest sequence its position table covers (None: no table)

    @property
    def cached(self) -> bool:
        return self.cache_problem is None


def find_decoder(model: MetaModel) -> Decoder:
    """The decoder of `model`; NotADecoder saying what is missing."""
    items = model.block_items()
    heads = [(p, rw) for p, rw in items if isinstance(rw.block, LMHead)]
    embeds = [(p, rw) for p, rw in items if isinstance(rw.block, TokenEmbedding)]
    if len(heads) != 1 or not embeds:
        what = "no LMHead" if not heads else "several LMHeads" if len(heads) > 1 else "no TokenEmbedding"
        raise NotADecoder(f"the model has {what}: it is not a causal text decoder (generate needs one LMHead "
                          "fed by a TokenEmbedding through causal attention)")
    if not any(isinstance(m, Attention) and m.causal and not m.cross for m in model.modules()):
        raise NotADecoder("the model has no causal self-attention: it is not a text decoder that generate can run")
    head = heads[0][1]
    tables = [rw.block.num for _, rw in items if isinstance(rw.block, PosEmbed)]
    return Decoder(model, embeds[0][1].read_keys[0], head.write_keys[0], head.block.proj.out_features,
                   _cache_problem(items), min(tables) if tables else None)


def _cache_problem(items) -> str | None:
    for path, rw in items:
        block, kind = rw.block, type(rw.block).__name__
        if kind in TOKENWISE:
            continue
        if isinstance(block, PosEmbed):
            if block.offset != 0:
                return f"{path} ({kind}) starts its positions at offset {block.offset}"
            continue
        if isinstance(block, Transformer) and not isinstance(block, CrossAttentionDecoder):
            problem = _trunk_problem(block, len(rw.read_keys))
            if problem:
                return f"{path} ({kind}): {problem}"
            continue
        return f"{path} ({kind}) is not a block the cache knows to run token by token"
    return None


def _trunk_problem(trunk: Transformer, reads: int) -> str | None:
    layers = list(trunk.layers)
    if reads != 1:
        return "it reads a mask or a context"
    if len({id(layer) for layer in layers}) != len(layers):
        return "its layers share weights (share_layers)"
    for layer in layers:
        attn: nn.Module | None = layer.attn
        if layer.cross_attn is not None:
            return "it cross-attends"
        if attn is None:
            if layer.identity_attn:
                continue
            return "a layer has no self-attention"
        if not isinstance(attn, Attention) or not attn.causal:
            return "its self-attention is not causal"
        if attn.pos is not None and not isinstance(attn.pos, Rope):
            return f"its attention's positions ({type(attn.pos).__name__}) are not 1-D"
    return None
