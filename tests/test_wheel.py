"""The wheel alone: built from this checkout, installed in a clean venv, run from a folder
outside the repository, it runs its own named pipelines on the sample data it carries.

The clean venv borrows the project venv's installed dependencies through a ``.pth`` line (so
nothing is downloaded), but not its editable embedflow: the embedflow it imports is the wheel's.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile

import pyarrow.parquet as pq
import pytest

from .conftest import ROOT

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("wheel")
    # from a copy of the tracked tree: a build/ left in the checkout could carry deleted modules
    source = tmp / "source"
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, tracked):
        if (ROOT / name).is_file() and not (ROOT / name).is_symlink():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    build = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp / "dist"), str(source)]
    subprocess.run(build, check=True, capture_output=True, timeout=300)
    (wheel,) = (tmp / "dist").glob("embedflow-*.whl")
    venv.create(tmp / "venv", with_pip=False)
    python = tmp / "venv" / "bin" / "python"
    purelib = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], capture_output=True, text=True, check=True)
    with open(os.path.join(purelib.stdout.strip(), "deps.pth"), "w") as f:
        f.write(sysconfig.get_paths()["purelib"] + "\n")  # torch, transformers, … from the project venv
    install = [python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)]
    subprocess.run(install, check=True, capture_output=True, timeout=300)
    outside = tmp / "elsewhere"
    outside.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return {"wheel": wheel, "bin": tmp / "venv" / "bin", "cwd": outside, "env": {**env, "HF_HUB_OFFLINE": "1"}}


def test_the_wheel_carries_the_named_pipelines_and_their_sample_data(wheel_venv):
    names = set(zipfile.ZipFile(wheel_venv["wheel"]).namelist())
    assert "embedflow/pipelines/bundled/text_embedding.yaml" in names
    assert {"embedflow/samples/texts/python_docs.txt", "embedflow/samples/images/cat.jpg"} <= names


def test_embedflow_run_text_embedding_from_a_folder_outside_the_repo(wheel_venv):
    cli = [str(wheel_venv["bin"] / "embedflow"), "run", "text-embedding", "--limit", "40", "--quiet"]
    done = subprocess.run(cli, cwd=wheel_venv["cwd"], env=wheel_venv["env"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "read 40 rows, wrote 40, failed 0" in done.stdout and "-> out/text_vectors.parquet" in done.stdout
    table = pq.read_table(wheel_venv["cwd"] / "out" / "text_vectors.parquet")
    assert table.num_rows == 40 and len(table.column("vec")[0]) == 384


def test_ef_pipeline_image_embedding_from_a_folder_outside_the_repo(wheel_venv):
    script = (
        "import embedflow as ef\n"
        "assert 'site-packages' in ef.__file__, ef.__file__\n"
        "p = ef.pipeline('image-embedding')\n"
        "vec = p(ef.samples / 'images' / 'cat.jpg')\n"
        "print(ef.__file__, vec.shape, round(float((vec * vec).sum()), 4))\n"
    )
    python = str(wheel_venv["bin"] / "python")
    done = subprocess.run([python, "-c", script], cwd=wheel_venv["cwd"], env=wheel_venv["env"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    where, shape, norm = done.stdout.split(maxsplit=2)
    assert not where.startswith(str(ROOT)) and shape == "(1280,)" and norm.strip() == "1.0"
