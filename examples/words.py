"""Nearby things lie nearby: nearest neighbours and a 2-D map of words, with the packaged MiniLM.

Run: ``.venv/bin/python examples/words.py`` (prints neighbours, writes out/words.png).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

import embedflow as ef

WORDS = [
    "alligator",
    "crocodile",
    "lizard",
    "snake",
    "eagle",
    "hawk",
    "sparrow",
    "owl",
    "turnip",
    "carrot",
    "potato",
    "cabbage",
    "violin",
    "cello",
    "piano",
    "guitar",
]
MINILM = "sentence-transformers/all-MiniLM-L6-v2"


def main(out_dir: str = "out") -> dict[str, list[tuple[str, float]]]:
    dc = ef.dc["word"](WORDS).text_embedding.transformers["word", "vec"](model_name=MINILM).normalize["vec"]().set_progress(False)
    rows = dc.to_list()
    vecs = np.stack([r["vec"] for r in rows])
    sims = vecs @ vecs.T
    neighbours = {}
    for i, word in enumerate(WORDS):
        order = [j for j in np.argsort(-sims[i]) if j != i][:2]
        neighbours[word] = [(WORDS[j], float(sims[i, j])) for j in order]
        print(f"{word:<10} -> " + ", ".join(f"{w} ({s:.2f})" for w, s in neighbours[word]))
    far = float(sims[WORDS.index("turnip"), WORDS.index("eagle")])
    near = float(sims[WORDS.index("alligator"), WORDS.index("crocodile")])
    print(f"alligator~crocodile {near:.2f}, turnip~eagle {far:.2f}")
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    groups = ["reptile"] * 4 + ["bird"] * 4 + ["vegetable"] * 4 + ["instrument"] * 4
    picture = Path(out_dir) / "words.png"
    (
        ef.dc["vec", "word", "group"](list(zip(vecs, WORDS, groups)))
        .project["vec", "xy"](dim=2)
        .plot(picture, column="xy", label="group", annotate="word", title="MiniLM word vectors, PCA to 2-D")
    )
    print(f"map: {picture}")
    return neighbours


if __name__ == "__main__":
    main()
    sys.exit(0)
