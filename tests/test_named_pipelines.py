"""Pipelines by name, as functions: ``ef.pipeline("text-embedding")("a sentence")`` gives what
the file gives, keeps its models loaded, streams, names close matches for a typo, lists
published pipelines, and works from an installed wheel outside the repository."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import venv
import zipfile

import numpy as np
import pytest

import embedflow as ef
from embedflow.engines.replicas import cached
from embedflow.errors import UsageError
from embedflow.pipelines import pipelines

from .conftest import ROOT, write_fake_distribution

BUNDLED = {"text-embedding", "image-embedding", "text-search", "image-search", "text-search-index", "image-search-index"}


@pytest.fixture(scope="module")
def text_pipeline():
    return ef.pipeline("text-embedding")


def test_a_named_pipeline_embeds_one_item_or_many_as_the_file_does(text_pipeline, sample_texts):
    texts = sample_texts[:20]
    want = np.stack(
        [
            r["vec"]
            for r in ef.dc["text"](texts)
            .text_embedding.transformers["text", "vec"](model_name="sentence-transformers/all-MiniLM-L6-v2")
            .normalize["vec", "vec"]()
            .to_list()
        ]
    )
    one = text_pipeline(texts[3])
    assert isinstance(one, np.ndarray) and one.shape == (384,)
    np.testing.assert_allclose(one, want[3], atol=1e-6)
    np.testing.assert_allclose(np.stack(text_pipeline.batch(texts)), want, atol=1e-6)  # in order
    streamed = text_pipeline.map(t for t in texts)  # a generator in, results as they come
    np.testing.assert_allclose(np.stack(list(streamed)), want, atol=1e-6)


def test_the_models_stay_loaded_between_calls(text_pipeline):
    text_pipeline("first")
    step = text_pipeline._plan.steps[0]
    loaded = cached(step)["cpu"]
    text_pipeline("second")
    text_pipeline.batch(["third", "fourth"])
    assert cached(step)["cpu"] is loaded


def test_an_image_pipeline_takes_paths_and_a_bad_one_raises_naming_it(sample_images, tmp_path):
    p = ef.pipeline("image-embedding")
    vec = p(str(sample_images[0]))
    assert vec.shape == (1280,) and abs(float(np.linalg.norm(vec)) - 1) < 1e-5
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(ef.ItemError, match="broken.jpg"):
        p.batch([str(sample_images[0]), str(bad)])


def test_a_typo_names_the_close_match_and_lists_the_pipelines():
    with pytest.raises(ef.PipelineError) as info:
        ef.pipeline("text-embeding")
    message = str(info.value)
    assert message.startswith("unknown pipeline 'text-embeding'. Did you mean 'text-embedding'")
    assert all(name in message for name in BUNDLED)
    with pytest.raises(ef.PipelineError, match="pipeline file 'nowhere/p.yaml' does not exist"):
        ef.pipeline("nowhere/p.yaml")
    with pytest.raises(UsageError, match="take an iterable of items, got one str; call the pipeline on it"):
        list(ef.pipeline("text-embedding").map("a sentence"))


def test_packages_publish_pipelines_through_an_entry_point(tmp_path, monkeypatch):
    (tmp_path / "mypipes.py").write_text(f"PATH = {str(tmp_path / 'upper.yaml')!r}\n")
    (tmp_path / "upper.yaml").write_text(
        "name: upper\ndescription: Count letters.\nsource: {items: [], column: text}\nsteps: [{op: normalize, in: text, out: text}]\n"
    )
    write_fake_distribution(tmp_path, "mypipes", "letters = mypipes:PATH\n", group="embedflow.pipelines")
    monkeypatch.syspath_prepend(str(tmp_path))
    known = pipelines()
    assert set(known) >= BUNDLED | {"letters"} and known["letters"].origin == "mypipes"
    assert ef.pipeline("letters").inputs == ("text",)
    out = subprocess.run(
        [sys.executable, "-m", "embedflow", "pipelines"], capture_output=True, text=True, check=True, env={**os.environ, "PYTHONPATH": str(tmp_path)}
    )
    lines = out.stdout.splitlines()
    assert any(line.startswith("letters") and "(from mypipes)" in line for line in lines)
    assert any(line.startswith("text-embedding") and "all-MiniLM-L6-v2" in line for line in lines)


def test_the_command_line_runs_a_pipeline_by_name(tmp_path):
    (tmp_path / "in.txt").write_text("one\ntwo\n")
    args = ["run", "text-embedding", "--param", f"input={tmp_path / 'in.txt'}", "--param", f"output={tmp_path / 'out.parquet'}", "--quiet"]
    subprocess.run([sys.executable, "-m", "embedflow", *args], check=True, cwd=tmp_path, capture_output=True)
    import pyarrow.parquet as pq

    assert pq.read_table(tmp_path / "out.parquet").column("text").to_pylist() == ["one", "two"]


@pytest.mark.slow
def test_a_wheel_installed_outside_the_repository_has_the_named_pipelines(tmp_path):
    source = tmp_path / "src"  # a copy: building in place would leave build/ and a stale egg-info in the checkout
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for name in ("embedflow", "operators"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path / "dist"), str(source)], check=True
    )
    (wheel,) = (tmp_path / "dist").glob("embedflow-*.whl")
    assert "embedflow/pipelines/bundled/text_embedding.yaml" in zipfile.ZipFile(wheel).namelist()
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], capture_output=True, text=True, check=True
    ).stdout.strip()
    deps = subprocess.run(
        [sys.executable, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], capture_output=True, text=True, check=True
    ).stdout.strip()
    with open(os.path.join(site, "deps.pth"), "w") as f:  # the dependencies (torch, ...) from this venv; not its editable embedflow
        f.write(deps + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel)], check=True)
    code = textwrap.dedent("""
        import embedflow as ef
        assert "/venv/" in ef.__file__, ef.__file__
        p = ef.pipeline("text-embedding")
        print(p("a photo of a cat").shape, sorted(ef.pipelines.pipelines())[:1])
    """)
    out = subprocess.run([str(python), "-c", code], capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "PYTHONPATH": ""})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "(384,) ['image-embedding']"
