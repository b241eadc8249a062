"""Projections of a whole stream of vectors to 2 or 3 dimensions, to look at them.

PCA needs nothing beyond numpy; ``tsne`` uses scikit-learn and ``umap`` umap-learn when they
are installed.

>>> import numpy as np
>>> pca(np.array([[0.0, 0.0], [1.0, 1.0], [2.0, 2.0]]), 1).round(3).ravel().tolist()
[-1.414, 0.0, 1.414]
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import PlanError
from ..rows import read_inputs, write_outputs

if TYPE_CHECKING:
    import numpy as np

METHODS = ("pca", "tsne", "umap")


def pca(x: np.ndarray, dim: int) -> np.ndarray:
    """Principal components via SVD of the centred data; each axis's sign is fixed so that its
    largest loading is positive (the result does not flip between runs)."""
    import numpy as np

    x = np.asarray(x, dtype=np.float64)
    centred = x - x.mean(axis=0)
    _u, _s, vt = np.linalg.svd(centred, full_matrices=False)
    axes = vt[:dim]
    signs = np.sign(axes[np.arange(len(axes)), np.abs(axes).argmax(axis=1)])
    signs[signs == 0] = 1
    return centred @ (axes * signs[:, None]).T


def project(x: np.ndarray, dim: int, method: str, seed: int = 0) -> np.ndarray:
    """``x`` (n, d) projected to (n, dim) with ``method``."""
    if method == "pca":
        return pca(x, dim)
    if method == "tsne":
        try:
            from sklearn.manifold import TSNE
        except ImportError as exc:
            raise PlanError("project(method='tsne') needs scikit-learn: pip install scikit-learn") from exc
        return TSNE(n_components=dim, random_state=seed, perplexity=min(30.0, max(2.0, (len(x) - 1) / 3))).fit_transform(x)
    if method == "umap":
        try:
            import umap
        except ImportError as exc:
            raise PlanError("project(method='umap') needs umap-learn: pip install umap-learn") from exc
        return umap.UMAP(n_components=dim, random_state=seed).fit_transform(x)
    raise PlanError(f"project(method={method!r}): use one of {', '.join(METHODS)}")


class Projector:
    """The whole-stream function of a ``project`` step: rows in, rows with points out."""

    def __init__(self, dim: int, method: str, inputs: tuple[str, ...] | None, outputs: tuple[str, ...] | None):
        self.dim, self.method, self.inputs, self.outputs = dim, method, inputs, outputs

    def __call__(self, rows: list[Any]) -> list[Any]:
        import numpy as np

        if not rows:
            return rows
        vectors = np.stack([np.asarray(read_inputs(r, self.inputs)[0], dtype=np.float64).ravel() for r in rows])
        if len(vectors) <= self.dim:
            msg = f"project(dim={self.dim}) needs more than {self.dim} rows, got {len(vectors)}"
            raise PlanError(msg)
        points = project(vectors, self.dim, self.method).astype(np.float32)
        return [write_outputs(r, self.inputs, self.outputs, p) for r, p in zip(rows, points)]

    def __repr__(self) -> str:
        return f"{self.method}(dim={self.dim})"


def plot(points: Any, path: Any, labels: list[Any] | None = None, notes: list[Any] | None = None, title: str | None = None) -> Any:
    """A PNG scatter of 2-D or 3-D points (an array, or a list of vectors), coloured by ``labels``, annotated with ``notes``."""
    import numpy as np

    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise PlanError("plot() needs matplotlib: pip install 'embedflow[viz]'") from exc
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] not in (2, 3):
        msg = f"plot(): points must be 2-D or 3-D (use .project(dim=2) first), got shape {points.shape}"
        raise PlanError(msg)
    three = points.shape[1] == 3
    fig = plt.figure(figsize=(7, 6), dpi=110)
    ax: Any = fig.add_subplot(projection="3d") if three else fig.add_subplot()  # 2-D or 3-D axes: one call shape for both
    if labels is None:
        ax.scatter(*points.T, s=18)
    else:
        names = sorted({str(v) for v in labels}, key=lambda v: (len(v), v))
        cmap = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")
        for i, name in enumerate(names):
            mask = np.array([str(v) == name for v in labels])
            ax.scatter(*points[mask].T, s=18, color=cmap(i % cmap.N), label=name)
        if len(names) <= 20:
            ax.legend(fontsize=8, markerscale=1.5, loc="best")
    if notes is not None:
        for p, text in zip(points, notes):
            ax.text(*p, str(text), fontsize=8)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
