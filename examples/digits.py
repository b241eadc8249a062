"""Embeddings are what a network computes just before it decides — shown on handwritten digits.

Trains a small CNN on scikit-learn's bundled 8×8 digits for a few seconds on the CPU, then
embeds held-out digits by intercepting (a) the 10 values before the softmax and (b) the
penultimate layer, and measures how often a digit's nearest training neighbour is the same
digit, against raw pixels. Saves a 2-D projection of the penultimate embeddings coloured by
digit. Run: ``.venv/bin/python examples/digits.py`` (writes out/digits.png).
"""

from __future__ import annotations

import sys
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from torch import nn

import embedflow as ef


def load(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[:, None]  # (n, 1, 8, 8) in [0, 1]
    order = np.random.default_rng(seed).permutation(len(images))
    train, test = order[:1200], order[1200:]
    return images[train], digits.target[train], images[test], digits.target[test]


def small_cnn() -> nn.Module:
    return nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(1, 16, 3, padding=1),
            relu1=nn.ReLU(),
            pool1=nn.MaxPool2d(2),
            conv2=nn.Conv2d(16, 32, 3, padding=1),
            relu2=nn.ReLU(),
            flatten=nn.Flatten(),
            fc1=nn.Linear(32 * 4 * 4, 64),
            relu3=nn.ReLU(),
            fc2=nn.Linear(64, 10),
        )
    )


def train(x: np.ndarray, y: np.ndarray, epochs: int = 12, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    net = small_cnn()
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    xs, ys = torch.from_numpy(x), torch.from_numpy(y).long()
    for _ in range(epochs):
        perm = torch.randperm(len(xs))
        for start in range(0, len(xs), 64):
            idx = perm[start : start + 64]
            opt.zero_grad()
            nn.functional.cross_entropy(net(xs[idx]), ys[idx]).backward()
            opt.step()
    return net.eval()


def references(y: np.ndarray, per_digit: int) -> np.ndarray:
    """Indexes of the first ``per_digit`` training examples of each digit."""
    return np.concatenate([np.flatnonzero(y == d)[:per_digit] for d in range(10)])


def knn_accuracy(train_vecs: np.ndarray, train_y: np.ndarray, test_vecs: np.ndarray, test_y: np.ndarray) -> float:
    """How often a test item's nearest reference item (Euclidean) has the same digit."""
    a = test_vecs.reshape(len(test_vecs), -1).astype(np.float64)
    b = train_vecs.reshape(len(train_vecs), -1).astype(np.float64)
    dist = (a**2).sum(1)[:, None] - 2 * a @ b.T + (b**2).sum(1)[None, :]
    return float((train_y[dist.argmin(1)] == test_y).mean())


def embed(net: nn.Module, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(logits, penultimate) for each image, intercepted from the trained network."""
    dc = (
        ef.dc["img"](list(images))
        .embedding.torch["img", "logits"](model=net, layer=-1)  # fc2: the 10 values before softmax
        .embedding.torch["img", "penultimate"](model=net, layer=-2)  # relu3: the 64 values before
        .set_progress(False)
    )
    rows = dc.to_list()
    return np.stack([r["logits"] for r in rows]), np.stack([r["penultimate"] for r in rows])


def main(out_dir: str = "out", epochs: int = 12, per_digit: int = 3) -> dict[str, float]:
    start = time.perf_counter()
    x_train, y_train, x_test, y_test = load()
    net = train(x_train, y_train, epochs=epochs)
    trained = time.perf_counter() - start
    train_logits, train_pen = embed(net, x_train)
    test_logits, test_pen = embed(net, x_test)
    # nearest neighbours among a few labelled references per digit: an embedding is good when
    # things of one kind lie near each other, so few examples are enough
    ref = references(y_train, per_digit)
    result = {
        "raw pixels (64 values)": knn_accuracy(x_train[ref], y_train[ref], x_test, y_test),
        "before softmax (10 values)": knn_accuracy(train_logits[ref], y_train[ref], test_logits, y_test),
        "penultimate layer (64 values)": knn_accuracy(train_pen[ref], y_train[ref], test_pen, y_test),
    }
    print(f"trained a small CNN on {len(x_train)} digits in {trained:.1f}s; {len(x_test)} held-out digits")
    print(f"same-digit accuracy of the nearest of {per_digit} labelled references per digit:")
    for name, acc in result.items():
        print(f"  {name:<32} {acc:.3f}")
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    picture = Path(out_dir) / "digits.png"
    (
        ef.dc["vec", "digit"](list(zip(test_pen, y_test.tolist())))
        .project["vec", "xy"](dim=2)
        .plot(picture, column="xy", label="digit", title="held-out digits: penultimate layer, PCA to 2-D")
    )
    print(f"projection picture: {picture}")
    return result


if __name__ == "__main__":
    main()
    sys.exit(0)
