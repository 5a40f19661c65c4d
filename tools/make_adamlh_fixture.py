"""Write tests/train/fixtures/adamlh_reference.json by running the original ml-l3m `AdamLH`.

The reference repository is not available in CI, so its optimizer is run once here, on a fixed
toy problem, and the resulting parameters are stored; tests/train/test_adamlh.py replays the same
problem with l3m's `AdamLH` and compares. Usage:

    .venv/bin/python tools/make_adamlh_fixture.py /work/ref-ml-l3m
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import torch

OUT = Path(__file__).resolve().parents[1] / "tests" / "train" / "fixtures" / "adamlh_reference.json"

# The toy problem (shared with the test, which builds it from the stored inputs).
PEAK_LR, WEIGHT_DECAY, BETAS, EPS = 1e-2, 0.1, (0.9, 0.95), 1e-8
LRS = [1e-4, 5e-3, 1e-2, 8e-3, 3e-3, 1e-3]  # the schedule's value at each step


def problem() -> dict:
    g = torch.Generator().manual_seed(0)
    return {
        "w": torch.randn(3, 4, generator=g).tolist(),  # decayed
        "b": torch.randn(4, generator=g).tolist(),  # not decayed
        "grads_w": [torch.randn(3, 4, generator=g).tolist() for _ in LRS],
        "grads_b": [torch.randn(4, generator=g).tolist() for _ in LRS],
    }


def main(ref_root: str) -> None:
    path = Path(ref_root) / "src" / "l3m" / "optim" / "adamw_lh.py"
    spec = importlib.util.spec_from_file_location("ref_adamw_lh", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    data = problem()
    w = torch.nn.Parameter(torch.tensor(data["w"], dtype=torch.float64))
    b = torch.nn.Parameter(torch.tensor(data["b"], dtype=torch.float64))
    opt = mod.AdamLH(
        [{"params": [w], "weight_decay": WEIGHT_DECAY}, {"params": [b], "weight_decay": 0.0}],
        lr=PEAK_LR, betas=BETAS, eps=EPS, weight_decay=WEIGHT_DECAY,
    )
    for i, lr in enumerate(LRS):
        for group in opt.param_groups:
            group["lr"] = lr
        w.grad = torch.tensor(data["grads_w"][i], dtype=torch.float64)
        b.grad = torch.tensor(data["grads_b"][i], dtype=torch.float64)
        opt.step()
    data.update(
        peak_lr=PEAK_LR, weight_decay=WEIGHT_DECAY, betas=list(BETAS), eps=EPS, lrs=LRS,
        final_w=w.detach().tolist(), final_b=b.detach().tolist(), source=str(path.relative_to(ref_root)),
    )
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(data, indent=1) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "/work/ref-ml-l3m")
