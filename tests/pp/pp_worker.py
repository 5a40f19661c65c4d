"""Pipeline-parallel training runs in one torchrun launch (gloo, CPU): `pp_worker.py OUT LLM CLIP MODE`.

MODE `pp2` (2 ranks): the LLM under gpipe, 1f1b and interleaved 1f1b, the CLIP split by cost and
split inside its text trunk, and checkpoints resumed across meshes (`OUT/from_single` holds a
single-process checkpoint at step 3, resumed here under pp = 2; a pp = 2 checkpoint at step 3 is
resumed on the pp = 1 mesh dp_shard = 2; 1f1b runs with activation checkpointing). MODE `pp2_dp2` (4 ranks):
the LLM under pp = 2 × dp_shard = 2 (FSDP) and pp = 2 × dp_replicate = 2.
Each run writes into OUT/<name>; the test compares them with single-process runs. Prints `OK MODE`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch.distributed as dist
from pp_programs import TEXT_SPLIT

from l3m.dist import init_distributed
from l3m.train.api import train_main


def train(program: Path, out: Path, overrides: list[str]) -> None:
    code = train_main(str(program), overrides, str(out))
    if code != 0:
        raise SystemExit(f"training {out.name} ({' '.join(overrides)}) failed with exit code {code}")


def main() -> None:
    out, llm, clip, mode = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]
    init_distributed("cpu")  # held for every run: train_main leaves a process group it did not start
    if mode == "pp2":
        for schedule in ("gpipe", "1f1b", "interleaved_1f1b"):  # 1f1b also with activation checkpointing
            ac = ["train.activation_checkpointing=full"] if schedule == "1f1b" else []
            train(llm, out / f"llm_{schedule}", ["mesh.pp=2", f"mesh.pp_schedule={schedule}", *ac])
        train(clip, out / "clip_cost", ["mesh.pp=2"])
        train(clip, out / "clip_text_split", ["mesh.pp=2", TEXT_SPLIT, "mesh.pp_schedule=gpipe"])
        train(llm, out / "from_single", ["mesh.pp=2"])  # resumes the single-process checkpoint at step 3
        train(llm, out / "to_fsdp", ["mesh.pp=2", "train.steps=3"])
        train(llm, out / "to_fsdp", ["mesh.dp_shard=2"])
    elif mode == "pp2_dp2":
        train(llm, out / "llm_pp2_dp2", ["mesh.pp=2", "mesh.dp_shard=2"])
        train(llm, out / "llm_pp2_rep2", ["mesh.pp=2", "mesh.dp_replicate=2", "mesh.dp_shard=1"])
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    dist.barrier()
    if dist.get_rank() == 0:
        print(f"OK {mode}", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
