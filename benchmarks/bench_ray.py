"""The Ray engine beside the local engine: the same text and image chains, side by side.

Runs on a local Ray started here with ``--num-cpus`` CPUs (2 by default, like CI); Ray's own
start-up is excluded, each run's actor start-up and model load are included (a Ray job pays
them every time). Medians of ``--repeats``, engines taking turns.

    python benchmarks/bench_ray.py [--num-cpus 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import HERE, interleaved, report, table

import embedflow as ef


def main() -> int:
    import ray

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num-cpus", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--texts", type=int, default=2000)
    parser.add_argument("--images", type=int, default=300)
    args = parser.parse_args()

    t0 = time.perf_counter()
    ray.init(num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False)
    ray_start = time.perf_counter() - t0

    from bench_images import make_images

    texts = (HERE.parent / "data" / "texts" / "python_docs.txt").read_text(encoding="utf-8").splitlines()[: args.texts]
    make_images(HERE / "data" / "images", args.images)
    text_file = HERE / "data" / "texts.txt"
    text_file.parent.mkdir(parents=True, exist_ok=True)
    text_file.write_text("".join(t + "\n" for t in texts), encoding="utf-8")
    text_chain = (
        ef.dc(texts).text_embedding.transformers(model_name="sentence-transformers/all-MiniLM-L6-v2", batch_size=32).normalize().set_progress(False)
    )
    # the same texts from a file: on Ray, read by Ray tasks instead of the driver
    file_chain = (
        ef.read_text(text_file)
        .text_embedding.transformers(model_name="sentence-transformers/all-MiniLM-L6-v2", batch_size=32)
        .normalize()
        .set_progress(False)
    )
    image_chain = (
        ef.glob(str(HERE / "data" / "images" / "*.jpg"))
        .head(args.images)
        .image_decode()
        .image_embedding.timm(model_name="resnet18", pretrained=False, batch_size=16)
        .set_progress(False)
    )
    text_chain.to_numpy()
    image_chain.to_numpy()  # the local engine keeps its models between runs; Ray reloads per run
    res = interleaved(
        {
            "text local": text_chain.to_numpy,
            "text ray": text_chain.set_engine("ray").to_numpy,
            "text file local": file_chain.to_numpy,
            "text file ray": file_chain.set_engine("ray").to_numpy,
            "images local": image_chain.to_numpy,
            "images ray": image_chain.set_engine("ray").to_numpy,
        },
        args.repeats,
    )
    rows = []
    for kind, n in (("text", len(texts)), ("text file", len(texts)), ("images", args.images)):
        t_local, t_ray = res[f"{kind} local"][0], res[f"{kind} ray"][0]
        rows.append([f"{kind} ({n} items)", f"{t_local:.2f}", f"{n / t_local:.1f}", f"{t_ray:.2f}", f"{n / t_ray:.1f}", f"{t_local / t_ray:.2f}"])
    report(
        f"Ray engine vs local engine (local Ray, {args.num_cpus} CPUs)",
        table(["chain", "local s", "local items/s", "ray s", "ray items/s", "ray speed × local"], rows),
        [
            f"median of {args.repeats} runs, engines taking turns; Ray start-up ({ray_start:.1f}s) excluded, per-run actor start and model load included",
            "text: MiniLM batch 32 on the first 2,000 docstring sentences (ef.dc: rows sent from the driver; text file: ef.read_text, read by Ray tasks); images: resnet18 (random weights) on 300 JPEGs of 300–1200 px",
        ],
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
