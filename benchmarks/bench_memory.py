"""Peak memory while streaming images to Parquet: 2,000 vs 20,000 images.

Each size runs in a fresh subprocess: ``glob -> image_decode -> image_embedding.timm (a tiny
model) -> to_parquet``, and reports its peak resident memory (``ru_maxrss``). A streaming
engine with bounded queues holds the same few dozen rows whatever the input size, so the two
peaks should be nearly equal. The images are real photo crops (from the bundled samples),
small so that 20,000 of them run in about a minute; the model is tiny for the same reason —
the point is the queues, not the model.

    python benchmarks/bench_memory.py [--sizes 2000 20000] [--model test_efficientnet] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import HERE, report, table

PHOTOS = HERE.parent / "data" / "images"

CHILD = """
import json, resource, sys, time
import embedflow as ef
folder, out, model, device = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
start = time.perf_counter()
(ef.glob["path"](folder + "/*.jpg")
   .image_decode["path", "img"]()
   .image_embedding.timm["img", "vec"](model_name=model, pretrained=False, device=device)
   .select["path", "vec"]()
   .set_progress(False)
   .to_parquet(out))
print(json.dumps({"seconds": time.perf_counter() - start,
                  "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def make_images(folder: Path, count: int, seed: int = 0) -> None:
    """``count`` small JPEGs (96–160 px) cut from the sample photos, made once."""
    folder.mkdir(parents=True, exist_ok=True)
    have = len(list(folder.glob("*.jpg")))
    if have >= count:
        return
    rng = random.Random(seed + have)
    sources = [Image.open(p).convert("RGB") for p in sorted(PHOTOS.glob("*.jpg")) if "_" not in p.stem]
    for i in range(have, count):
        img = rng.choice(sources)
        w, h = img.size
        x, y = rng.randint(0, w - w // 3), rng.randint(0, h - h // 3)
        side = rng.randint(96, 160)
        img.crop((x, y, x + w // 3, y + h // 3)).resize((side, side)).save(folder / f"img_{i:06d}.jpg", quality=85)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 20000])
    parser.add_argument("--model", default="test_efficientnet")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    rows = []
    peaks = {}
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            folder = HERE / "data" / f"small_images_{size}"
            t0 = time.perf_counter()
            make_images(folder, size)
            made = time.perf_counter() - t0
            out = Path(tmp) / f"v{size}.parquet"
            proc = subprocess.run(
                [sys.executable, "-c", CHILD, str(folder), str(out), args.model, args.device], capture_output=True, text=True, check=True
            )
            result = json.loads(proc.stdout.strip().splitlines()[-1])
            peaks[size] = result["peak_mib"]
            rows.append(
                [
                    f"{size:,}",
                    f"{result['seconds']:.1f}",
                    f"{size / result['seconds']:.0f}",
                    f"{result['peak_mib']:.0f}",
                    f"{result['peak_mib'] / peaks[args.sizes[0]]:.2f}",
                ]
            )
            print(f"{size} images: {result} (images made in {made:.0f}s)", file=sys.stderr)
    report(
        f"Memory: streaming images to Parquet ({args.model}, random weights, {args.device})",
        table(["images", "seconds", "images/s", "peak RSS MiB", f"× peak at {args.sizes[0]:,}"], rows),
        ["each size in a fresh process; peak = ru_maxrss (includes torch and the model)", "target: peak at 20,000 ≤ 1.2× the peak at 2,000"],
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
