"""The README's Python runs as written: every fenced Python block is marked, right above its
fence, ``<!-- runnable -->`` (this test runs it, in a fresh folder beside the clone's ``data/``,
offline, in a process of its own) or ``<!-- not run: why -->``; the first block is runnable."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from .conftest import ROOT

README = ROOT / "README.md"
FENCE = re.compile(r"^```python\n(.*?)^```$", re.S | re.M)
MARK = re.compile(r"<!-- (runnable|not run: .+?)(?::.*)? -->\s*$")


def python_blocks() -> list[tuple[int, str, str]]:
    """(line, mark, code) of each fenced Python block; mark is '' when the block has none."""
    text = README.read_text()
    blocks = []
    for found in FENCE.finditer(text):
        line = text.count("\n", 0, found.start()) + 1
        above = text[: found.start()].rstrip("\n").rsplit("\n", 1)[-1]
        mark = MARK.search(above)
        blocks.append((line, mark.group(1) if mark else "", found.group(1)))
    return blocks


RUNNABLE = [(line, code) for line, mark, code in python_blocks() if mark == "runnable"]


def test_every_block_says_whether_it_runs_and_the_first_one_does():
    blocks = python_blocks()
    unmarked = [line for line, mark, _ in blocks if not mark]
    assert not unmarked, f"README.md lines {unmarked}: mark each Python block <!-- runnable --> or <!-- not run: why -->"
    assert blocks[0][1] == "runnable" and len(RUNNABLE) >= 4


@pytest.mark.parametrize(("line", "code"), RUNNABLE, ids=[f"README.md:{line}" for line, _ in RUNNABLE])
def test_the_block_runs_as_written(line, code, tmp_path):
    (tmp_path / "data").symlink_to(ROOT / "data")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "EMBEDFLOW_PROGRESS": "0", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"README.md:{line} failed:\n{proc.stderr[-3000:]}"
    if 'to_parquet("vectors.parquet")' in code:  # the first block: what its comment promises
        table = pq.read_table(tmp_path / "vectors.parquet")
        assert table.num_rows == len(list((ROOT / "data" / "images").glob("*.jpg"))) == 36
        assert table.column_names == ["path", "vec"] and len(table.column("vec")[0]) == 1280


def test_every_environment_variable_read_is_in_the_readme_table():
    """Each EMBEDFLOW_* name the code, the operators or the set-up scripts read is a row of the
    README's "Environment variables" table — and the table lists no variable nothing reads."""
    pattern = re.compile(r"\bEMBEDFLOW_[A-Z_]+[A-Z]\b")
    sources = [*ROOT.joinpath("embedflow").rglob("*.py"), *ROOT.joinpath("operators").rglob("*.py"), *ROOT.joinpath("scripts").glob("*.sh")]
    read = {name for path in sources for name in pattern.findall(path.read_text())}
    table = README.read_text().split("## Environment variables", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"^\| `(EMBEDFLOW_[A-Z_]+)`", table, re.M))
    assert read - listed == set(), "read but not in the README's table"
    assert listed - read == set(), "in the README's table but read nowhere"
