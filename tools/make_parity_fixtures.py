"""Run the original ml-l3m on tiny configurations and write parity fixtures for l3m's tests.

    python tools/make_parity_fixtures.py --reference ../ml-l3m [--system aimv2 ...] [--out tests/data/parity]

Needs a checkout of github.com/apple/ml-l3m and, in the same environment, the packages its model code
imports: timm, hydra-core, omegaconf, fvcore, ftfy (not megablocks: the MoE fixture replaces it by a dense
stand-in of its dMoE, tools/parity/aimv2_moe.py). Run it in its own process: the original's package is also called
`l3m`, so this script never imports the project's l3m.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SYSTEMS = ("aimv1", "aimv2", "aimv2_moe", "clip", "llm", "vit")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reference", required=True, type=Path, help="checkout of apple/ml-l3m")
    ap.add_argument("--system", action="append", choices=SYSTEMS, help="only these (repeatable)")
    ap.add_argument("--out", type=Path, default=HERE.parent / "tests" / "data" / "parity")
    args = ap.parse_args(argv)

    sys.path.insert(0, str(HERE.parent))  # `tools.parity.*`, before the reference takes the name `l3m`
    from tools.parity import common

    commit = common.put_reference_on_path(args.reference.resolve())
    for system in args.system or SYSTEMS:
        maker = importlib.import_module(f"tools.parity.{system}")
        folder = maker.make(args.reference.resolve(), args.out, commit)
        print(f"{system}: wrote {folder}")
    total = common.fixture_bytes(args.out)
    print(f"fixtures: {total / 1024:.0f} KiB in {args.out}")
    if total > common.FIXTURE_BUDGET_BYTES:
        print(f"error: fixtures exceed {common.FIXTURE_BUDGET_BYTES // 1024} KiB", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
