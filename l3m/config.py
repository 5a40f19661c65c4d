"""Schemas of the settings sections (`train`, `mesh`, `log`, and the `data` section's settings lines).

The checker holds each section's keys and value types against these dataclasses, so a
typo (`train { stpes = 10 }`) is a compile error with a suggestion, and the trainer reads
typed values.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Literal


@dataclass
class TrainConfig:
    steps: int = 1000
    dtype: Literal["fp32", "bf16", "fp16"] = "fp32"
    # torch.compile: "blocks" each repeated layer (regional), "model" the whole forward, false/"none" nothing;
    # true: the whole model in one process, each layer on a mesh; "auto": "blocks" on a GPU, nothing on the
    # CPU (`compile_mode` below)
    compile: bool | Literal["auto", "none", "blocks", "model"] = "auto"
    # Linear layers in float8 (torchao; a GPU of compute capability >= 8.9): true is "tensorwise" scaling
    # (l3m.dist.float8 says which layers)
    float8: bool | Literal["tensorwise", "rowwise"] = False
    grad_clip: float = 0.0  # 0 disables clipping
    grad_accum: int = 1  # micro-batches per rank per optimizer step (the train source's batch_size is global)
    micro_batch: int = 0  # samples per micro-batch per rank; 0: derived (batch_size / (dp ranks × grad_accum))
    eval_every: int = 0  # 0: only at the end (when eval data is declared)
    eval_steps: int = 0  # batches per evaluation; 0: the whole eval set
    checkpoint_every: int = 0  # 0: only at the end
    keep: int = 2  # checkpoints kept
    log_every: int = 10
    seed: int = 0
    deterministic: bool = False
    tf32: bool = False  # float32 matmuls/convolutions may use TF32 tensor cores (faster, ~10-bit mantissa)
    activation_checkpointing: Literal["none", "full", "selective", "mlp"] = "none"  # l3m.dist.ac
    # An LM head whose logits only the cross-entropy reads computes the loss in chunks of this many tokens
    # in training, never forming [tokens, vocab] logits (l3m.model.fusion); -1: sized by the vocabulary, 0: off
    lm_loss_chunk: int = -1
    # A trunk whose output only a pooling block reads (ClsPool, EosPool) computes its last layer for the
    # pooled tokens alone in training (l3m.model.pruning): same values and gradients, fewer FLOPs
    prune_rows: bool = True
    # Training on the CPU keeps freed memory in the process for the next step instead of handing it back to
    # the OS and page-faulting on it again (glibc only; l3m.train.host_memory)
    keep_freed_memory: bool = True
    reshard_after_forward: bool = True
    param_dtype: Literal["fp32", "bf16", "fp16", "auto"] = "auto"  # FSDP2 MixedPrecisionPolicy
    reduce_dtype: Literal["fp32", "bf16", "fp16"] = "fp32"
    num_workers: int = 0
    freeze: list[str] = field(default_factory=list)  # parameter-name globs kept frozen
    # With adapters (Lora, Adapter) in the model only they train, and what these globs name (a new head);
    # without adapters, only what these globs name trains (l3m.model.adapters).
    trainable: list[str] = field(default_factory=list)
    # Pretrained weights (safetensors or a weights-only torch file) loaded before step 0 of a new run,
    # for fine-tuning and probing: which tensors (globs) and "old.prefix=new.prefix" renames. A list loads
    # several files in order, a later file's tensor winning (a base model, then its fine-tuned adapters).
    init_from: str | list[str] = ""
    init_include: list[str] = field(default_factory=list)
    init_exclude: list[str] = field(default_factory=list)
    init_rename: list[str] = field(default_factory=list)
    # An exponential moving average of the trainable weights (l3m.train.ema): 0 turns it off; from step
    # `ema_start` on, ema = ema × decay + weights × (1 - decay) after each optimizer step (before it the
    # average follows the weights). Kept on the weights' device or on the CPU, saved in checkpoints;
    # `eval_ema` evaluates (during training and in `l3m eval`) with the averaged weights.
    ema: float = 0.0
    ema_start: int = 0
    ema_device: Literal["same", "cpu"] = "same"
    eval_ema: bool = False


@dataclass
class MeshConfig:
    dp_replicate: int = 1
    dp_shard: int = -1  # -1: what is left of the world size
    tp: int = 1
    cp: int = 1
    # Expert parallelism: MoE experts split over `ep` ranks taken from dp_shard x cp (not a world dimension
    # of its own: those ranks hold different tokens, which all-to-all dispatch sends to the experts' owners).
    ep: int = 1
    # Pipeline parallelism (l3m.dist.pp): the model's blocks and layers split into `pp` stages (the outermost
    # mesh dimension), balanced by cost; `pp_split` pins where stages start (block paths or `<block>.layers.K`).
    pp: int = 1
    pp_split: list[str] = field(default_factory=list)
    # "gpipe", "1f1b", or "interleaved_1f1b" (pp_virtual stages per rank); train.grad_accum micro-batches
    pp_schedule: Literal["gpipe", "1f1b", "interleaved_1f1b"] = "1f1b"
    pp_virtual: int = 2  # stages per rank with interleaved_1f1b


@dataclass
class LogConfig:
    wandb: Literal["offline", "online", "disabled"] = "offline"
    project: str = "l3m"
    name: str = ""
    console: Literal["rich", "plain", "none"] = "rich"  # rich is plain when not a terminal or NO_COLOR is set
    tensorboard: bool = False  # TensorBoard event files in RUN_DIR/tensorboard (needs the `tensorboard` package)


@dataclass
class DataConfig:
    """Settings lines of the `data` section (beside its sources): what a bad sample does.

    `raise`: a sample that cannot be read stops the run with one line naming the file and offset.
    `skip`: it is replaced by the next sample that loads and counted (`data_errors` in the metrics,
    kept in checkpoints); past `max_error_fraction` of the samples seen (measured over at least
    `l3m.data.loader.MIN_ERROR_WINDOW` samples) the run stops.
    """

    on_error: Literal["raise", "skip"] = "raise"
    max_error_fraction: float = 0.01


CompileMode = Literal["none", "blocks", "model"]


def compile_mode(setting: bool | str, world_size: int = 1, device_type: str = "cpu") -> CompileMode:
    """What `train.compile` compiles. "blocks": each repeated layer on its own (regional compile: one
    graph reused by every layer, compiled fast); "model": the whole model's forward as one graph;
    `false` / "none": nothing. `true` keeps its first meaning: the whole model in one process, each
    layer on a mesh (where FSDP2's hooks sit between the layers).

    "auto" (the default) is where compiling pays: on a GPU, regional compilation costs tens of seconds
    once (seconds from a warm cache) and each step saves far more; on a CPU the first compile (15-30 s)
    outlasts what a CPU-sized run saves (benchmarks/RESULTS.md, section 4), so nothing is compiled."""
    if setting == "auto":
        return "blocks" if device_type == "cuda" else "none"
    if setting is True:
        return "model" if world_size == 1 else "blocks"
    if setting in (False, "none"):
        return "none"
    if setting in ("blocks", "model"):
        return setting  # type: ignore[return-value]
    raise ValueError(f"train.compile must be true, false, 'auto', 'none', 'blocks' or 'model', not {setting!r}")


SECTION_SCHEMAS: dict[str, type] = {"train": TrainConfig, "mesh": MeshConfig, "log": LogConfig, "data": DataConfig}


def section_fields(name: str) -> dict[str, Any]:
    """Field name -> annotation for a settings section."""
    import typing

    schema = SECTION_SCHEMAS[name]
    hints = typing.get_type_hints(schema)
    return {f.name: hints[f.name] for f in fields(schema)}


def build_section(name: str, values: dict[str, Any]) -> Any:
    return SECTION_SCHEMAS[name](**values)


def resolve_mesh(mesh: MeshConfig, world_size: int) -> dict[str, int]:
    """Fill in the one `-1` dimension; raise ValueError with a readable reason if it cannot fit."""
    if world_size < 1:
        raise ValueError(f"the world size must be a positive number of processes, got {world_size}")
    dims = {"dp_replicate": mesh.dp_replicate, "dp_shard": mesh.dp_shard, "tp": mesh.tp, "cp": mesh.cp}
    free = [k for k, v in dims.items() if v == -1]
    bad = [k for k, v in dims.items() if v == 0 or v < -1]
    if bad:
        raise ValueError(f"mesh size {bad[0]} = {dims[bad[0]]} must be a positive integer or -1")
    if len(free) > 1:
        raise ValueError(f"only one mesh dimension may be -1, but {' and '.join(free)} are")
    pp = getattr(mesh, "pp", 1)
    if not isinstance(pp, int) or pp < 1:
        raise ValueError(f"mesh size pp = {pp} must be a positive integer")
    fixed = pp
    for v in dims.values():
        if v != -1:
            fixed *= v
    if free:
        if world_size % fixed:
            raise ValueError(
                f"the fixed mesh dimensions multiply to {fixed}, which does not divide the world size {world_size}"
            )
        dims[free[0]] = world_size // fixed
    elif fixed != world_size:
        raise ValueError(f"the mesh dimensions multiply to {fixed}, but the world size is {world_size}")
    if pp != 1:
        dims["pp"] = pp
    ep = getattr(mesh, "ep", 1)
    if ep != 1:
        if not isinstance(ep, int) or ep < 1:
            raise ValueError(f"mesh size ep = {ep} must be a positive integer")
        if (dims["dp_shard"] * dims["cp"]) % ep:
            raise ValueError(f"ep = {ep} must divide dp_shard x cp = {dims['dp_shard'] * dims['cp']}: expert-parallel "
                             "ranks are taken from the ranks that hold different tokens")
        dims["ep"] = ep
    return dims
