"""Images/s of l3m's image loaders (issue [3/9]: the loader's images/s beside its tokens/s).

Writes N random JPEGs (the size of a typical web image, decoded to `--image-size`) as webdataset
tar shards and as an image folder, then times `WebDataset` and `ImageFolder` through l3m's loader
with 0 and 2 worker processes. Results go to `benchmarks/results/image_loader.json`.

    python benchmarks/image_loader.py --images 2000
"""

from __future__ import annotations

import argparse
import io
import json
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _jpeg(rng: np.random.Generator, side: int) -> bytes:
    from PIL import Image

    small = rng.integers(0, 256, (side // 8, side // 8, 3), dtype=np.uint8)  # smooth noise compresses like a photo
    buf = io.BytesIO()
    Image.fromarray(small).resize((side, side), Image.BILINEAR).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def write_data(base: Path, n: int, side: int, per_shard: int = 500) -> tuple[Path, Path]:
    """`n` random JPEGs (side × side) as tar shards and as `folder/<class>/<i>.jpg`."""
    rng = np.random.default_rng(0)
    shards, folder = base / "shards", base / "folder"
    shards.mkdir()
    for start in range(0, n, per_shard):
        with tarfile.open(shards / f"{start // per_shard:05d}.tar", "w") as tar:
            for i in range(start, min(n, start + per_shard)):
                data = _jpeg(rng, side)
                for name, payload in ((f"{i:07d}.jpg", data), (f"{i:07d}.cls", str(i % 10).encode())):
                    info = tarfile.TarInfo(name)
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
                d = folder / f"c{i % 10}"
                d.mkdir(parents=True, exist_ok=True)
                (d / f"{i:07d}.jpg").write_bytes(data)
    return shards, folder


def images_per_s(source, workers: int, batches: int) -> float:
    from l3m.data import build_loader

    loader = build_loader(source, seed=0, num_workers=workers)
    next(loader)  # workers started, first batch decoded
    t = time.perf_counter()
    for _ in range(batches):
        next(loader)
    return batches * source.batch_size / (time.perf_counter() - t)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--side", type=int, default=256, help="stored JPEG side (default 256)")
    ap.add_argument("--image-size", type=int, default=224, help="decoded and resized side (default 224)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args()

    from l3m.data.sources import ImageFolder, WebDataset

    with tempfile.TemporaryDirectory(prefix="l3m-img-bench-") as tmp:
        shards, folder = write_data(Path(tmp), args.images, args.side)
        batches = max(1, args.images // args.batch - 2)
        rows = []
        for name, make in (
            ("WebDataset", lambda: WebDataset(root=str(shards), label_ext="cls", image_size=args.image_size,
                                              batch_size=args.batch)),
            ("ImageFolder", lambda: ImageFolder(root=str(folder), image_size=args.image_size,
                                                batch_size=args.batch)),
        ):
            for workers in (0, 2):
                rate = images_per_s(make(), workers, batches)
                rows.append({"source": name, "workers": workers, "images_per_s": round(rate, 1)})
                print(f"{name:12s} workers={workers}: {rate:8.1f} images/s")
    result = {"images": args.images, "stored_side": args.side, "image_size": args.image_size,
              "batch": args.batch, "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "image_loader.json").write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
