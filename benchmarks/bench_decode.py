"""Faster CPU decode, and what it costs: ``image_decode()`` exact vs ``max_side=`` (exact decode,
then shrink) vs ``max_side=`` + ``draft=True`` (JPEG decoded at 1/2–1/8 scale), on phone-sized
photos: 60 JPEGs of 1600–4000 px made once from the bundled photos (``data/large``).

For each: decode-only images/s (the engine's decode threads, no model), end-to-end images/s with
EfficientNet-Lite0 (real ImageNet weights from its model package) and the min / mean cosine of
its embeddings against the exact path's.

    python benchmarks/bench_decode.py [--max-side 320] [--repeats 3]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import HERE, interleaved, report, table

import embedflow as ef


def large_photos(count: int) -> list[str]:
    """``count`` JPEGs of 1600–4000 px (phone photos' sizes), made once from the bundled photos."""
    import random

    from PIL import Image

    folder = HERE / "data" / "large"
    folder.mkdir(parents=True, exist_ok=True)
    sources = sorted((HERE.parent / "data" / "images").glob("*.jpg"))
    rng = random.Random(0)
    paths = []
    for i in range(count):
        path = folder / f"photo_{i:03d}.jpg"
        width = rng.randint(1600, 4000)
        if not path.exists():
            img = Image.open(sources[i % len(sources)]).convert("RGB")
            img.resize((width, int(width * rng.choice((0.75, 0.5625, 1.0, 1.333)))), Image.Resampling.BICUBIC).save(path, quality=90)
        paths.append(str(path))
    return paths


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--max-side", type=int, default=512)
    parser.add_argument("--count", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    paths = large_photos(args.count)
    variants = {
        "exact": {},
        f"max_side={args.max_side}": {"max_side": args.max_side},
        f"max_side={args.max_side}, draft": {"max_side": args.max_side, "draft": True},
    }

    def decode_only(options):
        return lambda: np.array([img.shape for img in ef.dc(paths).image_decode(**options).set_progress(False).to_list()])

    def embedded(options):
        chain = ef.dc(paths).image_decode(**options).image_embedding.timm(model_name="efficientnet_lite0").normalize().set_progress(False)
        chain.head(2).to_list()  # loads the model once
        return chain.to_numpy

    decode = interleaved({name: decode_only(o) for name, o in variants.items()}, args.repeats)
    end_to_end = interleaved({name: embedded(o) for name, o in variants.items()}, args.repeats)
    exact = end_to_end["exact"][1]
    rows = []
    for name in variants:
        cos = (end_to_end[name][1] * exact).sum(1)
        rows.append([name, f"{len(paths) / decode[name][0]:.1f}", f"{len(paths) / end_to_end[name][0]:.1f}", f"{cos.min():.4f}", f"{cos.mean():.4f}"])
    report(
        f"Decode: exact vs max_side vs draft, {len(paths)} JPEGs 1600–4000 px, cpu",
        table(["decode", "decode-only images/s", "end-to-end images/s (EfficientNet-Lite0)", "min cosine vs exact", "mean cosine"], rows),
        [f"median of {args.repeats} runs, variants taking turns; model loading excluded"],
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
