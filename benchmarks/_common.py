"""Shared helpers of the benchmark scripts: timing, the results table, RESULTS.md."""

from __future__ import annotations

import datetime as dt
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "RESULTS.md"


def timed(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """Median wall time of ``repeats`` calls of ``fn`` and the last result."""
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def interleaved(methods: dict[str, Callable[[], Any]], repeats: int) -> dict[str, tuple[float, Any]]:
    """Time every method ``repeats`` times, taking turns (A B C A B C ...) so that a slow
    spell of the machine hits every method alike; returns name -> (median seconds, result)."""
    times: dict[str, list[float]] = {name: [] for name in methods}
    results: dict[str, Any] = {}
    for _ in range(repeats):
        for name, fn in methods.items():
            start = time.perf_counter()
            results[name] = fn()
            times[name].append(time.perf_counter() - start)
    return {name: (statistics.median(times[name]), results[name]) for name in methods}


def machine() -> str:
    """One line about the machine and the library versions."""
    cpu = platform.processor() or platform.machine()
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count()
    versions = []
    for dist in ("embedflow", "torch", "transformers", "timm", "sentence-transformers", "pillow"):
        try:
            versions.append(f"{dist} {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            pass
    gpu = ""
    try:
        import torch

        if torch.cuda.is_available():
            gpu = f", GPU {torch.cuda.get_device_name(0)}"
    except ImportError:
        pass
    return f"{platform.system()} {cpu}, {cores} cores{gpu}, Python {platform.python_version()}; " + ", ".join(versions)


def table(headers: list[str], rows: list[list[Any]]) -> str:
    """A Markdown table."""
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def report(title: str, text: str, notes: list[str] | None = None) -> None:
    """Print the result and append it to RESULTS.md with the date, machine and command."""
    command = "python " + " ".join([os.path.relpath(sys.argv[0], HERE.parent)] + sys.argv[1:])
    block = [
        f"## {title}",
        "",
        f"{dt.datetime.now().strftime('%Y-%m-%d %H:%M')} — {machine()}",
        f"Command: `{command}`",
        "",
        text,
        "",
    ]
    if notes:
        block += [f"- {n}" for n in notes] + [""]
    print("\n".join(block))
    with RESULTS.open("a", encoding="utf-8") as f:
        f.write("\n".join(block) + "\n")
