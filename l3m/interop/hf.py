"""A Hugging Face model folder for a Llama-shaped l3m model: what `from_pretrained` loads.

    OUT/model.safetensors   LlamaForCausalLM's tensor names (q/k/v/o, gate/up/down; l3m's fused
                            qkv split per key/value group, see `l3m.interop.llama`)
    OUT/config.json         a LlamaConfig read off the built model (not the file's text): sizes,
                            heads, RoPE (theta, Llama 3 scaling), RMSNorm epsilon, tying, dtype
    OUT/tokenizer.json ...  the run's tokenizer when it has one (`l3m.interop.hf_tokenizer`)

Only what `LlamaForCausalLM` computes exactly is written; anything else is refused, naming the
part that does not map (a LayerNorm, a GELU MLP, learned positions, an extra block, a head bias).
Biases that Hugging Face can only have all-or-none (`attention_bias` covers q, k, v and o) are
written as zeros where the l3m model has none: the same function. Each file is written
atomically with an ordinary mode; `config.json` comes last, so a folder without it is an
export that did not finish.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from l3m.durable import atomic_output
from l3m.interop.llama import LlamaLayout, l3m_to_llama, llama_layout
from l3m.interop.mapping import save_safetensors
from l3m.model.blocks.embeddings import TokenEmbedding
from l3m.model.blocks.heads import LMHead
from l3m.model.blocks.transformer import Transformer

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
DEFAULT_POSITIONS = 2048  # when nothing in the program says how long its sequences are


def _refuse_extra_blocks(model: nn.Module) -> None:
    """A Llama is embedding -> Transformer -> head; any other block would be left out silently."""
    from l3m.interop.mapping import blocks_of

    kinds = (TokenEmbedding, Transformer, LMHead)
    other = [(p, type(b).__name__) for p, b in blocks_of(model, nn.Module) if not isinstance(b, kinds)]
    if other:
        names = ", ".join(f"{p} ({k})" for p, k in other)
        raise ValueError(f"blocks with no place in Hugging Face's LlamaForCausalLM: {names}")
    inputs = getattr(model, "input_keys", ["tokens"])
    if len(inputs) != 1:
        raise ValueError(f"the model reads {', '.join(inputs)}; LlamaForCausalLM reads token ids only "
                         "(a mask or other input does not map)")


def hf_layout(model: nn.Module) -> LlamaLayout:
    """The Llama layout of `model`, or ValueError naming everything that does not map to
    Hugging Face's LlamaForCausalLM."""
    problems = []
    layout = None
    for check in (_refuse_extra_blocks, llama_layout):
        try:
            layout = check(model) or layout
        except ValueError as e:
            problems.append(str(e))
    if layout is not None and model.get_submodule(layout.head).bias is not None:
        problems.append(f"LMHead {layout.head.rsplit('.', 1)[0]!r} has a bias; Hugging Face's lm_head has none")
    if problems:
        raise ValueError("; ".join(problems))
    return layout


def _parts(model: nn.Module, layout: LlamaLayout):
    trunk: Transformer = model.get_submodule(layout.trunk)
    attn, mlp = trunk.layers[0].attn, trunk.layers[0].mlp
    return trunk, attn, mlp


def _biases(model: nn.Module, layout: LlamaLayout) -> tuple[bool, bool]:
    """(attention_bias, mlp_bias) the Hugging Face config needs."""
    trunk, _, _ = _parts(model, layout)
    attn_bias = mlp_bias = False
    for layer in trunk.layers:
        a = layer.attn
        qkv = [a.qkv] if a.fused else [a.q, a.k, a.v]
        attn_bias |= any(p.bias is not None for p in [*qkv, a.proj])
        mlp_bias |= layer.mlp.w1.bias is not None
    return attn_bias, mlp_bias


def llama_config(
    model: nn.Module,
    layout: LlamaLayout,
    *,
    dtype: str,
    max_positions: int | None = None,
    specials: Mapping[str, int] | None = None,
) -> dict:
    """The `config.json` of a `LlamaForCausalLM` computing what `model` computes."""
    trunk, attn, mlp = _parts(model, layout)
    vocab, dim = model.get_submodule(layout.embed.rsplit(".", 1)[0]).weight.shape
    q_rows = attn.qkv.out_features * attn.rep // (attn.rep + 2) if attn.fused else attn.q.out_features
    attn_bias, mlp_bias = _biases(model, layout)
    rope: dict = {"rope_type": "default", "rope_theta": float(layout.rope_theta)}
    legacy = None
    positions = max_positions or DEFAULT_POSITIONS
    if layout.rope_scaling:
        factor, low, high, original = layout.rope_scaling
        legacy = {"rope_type": "llama3", "factor": factor, "low_freq_factor": low, "high_freq_factor": high,
                  "original_max_position_embeddings": int(original)}
        rope.update(legacy, rope_type="llama3")
        positions = max(positions, int(original * factor))  # Hugging Face wants more than the original
    specials = dict(specials or {})
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": int(vocab),
        "hidden_size": int(dim),
        "intermediate_size": int(mlp.w1.out_features),
        "num_hidden_layers": layout.depth,
        "num_attention_heads": q_rows // layout.head_dim,
        "num_key_value_heads": layout.kv_heads,
        "head_dim": layout.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": int(positions),
        "rms_norm_eps": float(layout.norm_eps),
        "rope_parameters": rope,  # transformers 5
        "rope_theta": float(layout.rope_theta),  # transformers 4 reads these two
        "rope_scaling": legacy,
        "attention_bias": attn_bias,
        "attention_dropout": 0.0,
        "mlp_bias": mlp_bias,
        "tie_word_embeddings": layout.tied,
        "bos_token_id": specials.get("bos"),
        "eos_token_id": specials.get("eos"),
        "pad_token_id": specials.get("pad"),
        "initializer_range": 0.02,
        "use_cache": True,
        "dtype": dtype,
        "torch_dtype": dtype,  # transformers 4's name
    }


def hf_state(state: Mapping[str, torch.Tensor], model: nn.Module, layout: LlamaLayout) -> dict[str, torch.Tensor]:
    """`state` under LlamaForCausalLM's names, with zero biases where the config's all-or-none
    `attention_bias` / `mlp_bias` needs one that the l3m model lacks."""
    out = l3m_to_llama(state, model)
    attn_bias, mlp_bias = _biases(model, layout)
    wanted = [*(f"self_attn.{p}_proj" for p in "qkvo" if attn_bias),
              *(f"mlp.{p}_proj" for p in ("gate", "up", "down") if mlp_bias)]
    for i in range(layout.depth):
        for part in wanted:
            weight = out[f"model.layers.{i}.{part}.weight"]
            out.setdefault(f"model.layers.{i}.{part}.bias", torch.zeros(weight.shape[0], dtype=weight.dtype))
    return out


def cast(tensors: Mapping[str, torch.Tensor], dtype: str | None) -> tuple[dict[str, torch.Tensor], str]:
    """Floating tensors in `dtype` (None: as stored); returns them and the dtype's name."""
    if dtype is None:
        floats = [t.dtype for t in tensors.values() if t.is_floating_point()]
        have = max(set(floats), key=floats.count) if floats else torch.float32
        name = next((n for n, d in DTYPES.items() if d == have), "float32")
        return dict(tensors), name
    name = ALIASES.get(dtype, dtype)
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; expected one of {', '.join([*DTYPES, *ALIASES])}")
    to = DTYPES[name]
    return {k: (v.to(to) if v.is_floating_point() else v) for k, v in tensors.items()}, name


def write_json(path: Path, data: dict) -> None:
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def write_weights_folder(out_dir: str | Path, tensors: Mapping[str, torch.Tensor],
                         metadata: Mapping[str, str] | None) -> Path:
    """The export folder (made if missing; a file in its place is refused) with `model.safetensors` in it."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    save_safetensors(tensors, out / "model.safetensors", {"producer": "l3m", **dict(metadata or {})})
    return out


def write_hf_llama(
    model: nn.Module,
    state: Mapping[str, torch.Tensor],
    out_dir: str | Path,
    *,
    tokenizer=None,
    max_positions: int | None = None,
    dtype: str | None = None,
    metadata: Mapping[str, str] | None = None,
) -> list[str]:
    """Write the Hugging Face folder (see the module doc); returns the names of the files written.

    `model` may be on the meta device (only its structure is read); `state` holds its l3m-named
    tensors. `tokenizer` is an `l3m.data.tokenizers.Tokenizer` or None.
    """
    from l3m.interop.hf_tokenizer import write_tokenizer

    layout = hf_layout(model)
    tensors, dtype_name = cast(hf_state(state, model, layout), dtype)
    out = write_weights_folder(out_dir, tensors, metadata)
    files = ["model.safetensors"]
    specials: dict[str, int] = {}
    if tokenizer is not None:
        files += write_tokenizer(tokenizer, out, model_max_length=max_positions)
        specials = {role: i for role, (i, _) in tokenizer.specials.items()}
    config = llama_config(model, layout, dtype=dtype_name, max_positions=max_positions, specials=specials)
    write_json(out / "config.json", config)
    return [*files, "config.json"]
