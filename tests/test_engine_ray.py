"""The Ray engine: the same answers as the local engine, from Python and from YAML."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import embedflow as ef
from embedflow import DataCollection
from embedflow.engines.incremental import content_keys
from embedflow.errors import EmbedflowError, ItemError
from embedflow.io.readers import Part
from embedflow.io.results import ResultStore
from embedflow.io.sources import Source
from embedflow.pipelines import read_pipeline, run_pipeline

from .conftest import ROOT, requires

ray = requires("ray", "ray")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    yield
    ray.shutdown()


def test_text_chain_equals_the_local_engine(sample_texts):
    chain = (
        ef.dc["text"](sample_texts)
        .text_embedding.transformers["text", "vec"](model_name="sentence-transformers/all-MiniLM-L6-v2")
        .normalize["vec"]()
        .select["text", "vec"]()
    )
    local = chain.to_list()
    remote = chain.set_engine("ray").to_list()
    assert [r["text"] for r in remote] == sample_texts
    np.testing.assert_allclose(np.stack([r["vec"] for r in remote]), np.stack([r["vec"] for r in local]), atol=1e-6)


def test_workers_and_batch_size_mean_on_ray_what_they_mean_locally(sample_texts, sample_images):
    """workers= is how many prepare a step's items at once (decode tasks; an actor's threads),
    no longer the number of model actors; batch_size= the rows per forward. Same output."""
    texts = ef.dc(sample_texts[:40]).text_embedding.transformers(model_name="sentence-transformers/all-MiniLM-L6-v2", workers=2, batch_size=8)
    np.testing.assert_allclose(np.stack(texts.set_engine("ray").to_list()), np.stack(texts.to_list()), atol=1e-6)
    images = ef.dc([str(p) for p in sample_images[:6]]).image_decode(workers=2).map(lambda img: img.size)
    assert images.set_engine("ray").to_list() == images.to_list()


def test_cheap_steps_head_filter_and_order():
    chain = ef.dc(range(500)).map(lambda x: x * 2).filter(lambda x: x % 3 == 0).head(40)
    assert chain.set_engine("ray").to_list() == chain.to_list()


@pytest.mark.parametrize("name", ["text_embedding", "image_embedding"])
def test_bundled_pipelines_give_the_same_output_on_both_engines(tmp_path, name):
    overrides = {"input": str(ROOT / "data" / "texts" / "sentences.txt")} if name == "text_embedding" else {}
    outputs = {}
    for engine in ("local", "ray"):
        out = tmp_path / f"{engine}.parquet"
        pipeline = read_pipeline(ROOT / "pipelines" / f"{name}.yaml", output=str(out), **overrides)
        summary = run_pipeline(pipeline, engine=engine, progress=False)
        assert summary.failed == 0
        outputs[engine] = pq.read_table(out)
    local, remote = outputs["local"], outputs["ray"]
    assert local.column_names == remote.column_names and local.num_rows == remote.num_rows > 0
    first = local.column_names[0]
    assert local.column(first).to_pylist() == remote.column(first).to_pylist()
    vl = np.stack(local.column("vec").to_numpy(zero_copy_only=False))
    vr = np.stack(remote.column("vec").to_numpy(zero_copy_only=False))
    np.testing.assert_allclose(vr, vl, atol=1e-5)


def test_bad_rows_are_skipped_and_recorded_on_ray(tmp_path, sample_images):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for p in sample_images[:2]:
        shutil.copy(p, folder / p.name)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff not really")
    out = tmp_path / "v.parquet"
    pipeline = read_pipeline(ROOT / "pipelines" / "image_embedding.yaml", images=str(folder / "*.jpg"), output=str(out))
    summary = run_pipeline(pipeline, engine="ray", progress=False)
    assert (summary.written, summary.failed) == (2, 1)
    record = list(Path(summary.errors).read_text().splitlines())[0]
    assert "broken.jpg" in record and "image_decode" in record
    assert [Path(p).name for p in pq.read_table(out).column("path").to_pylist()] == sorted(p.name for p in sample_images[:2])


def test_yaml_run_with_engine_ray_from_the_command_line(tmp_path):
    out = tmp_path / "v.parquet"
    env = {**os.environ, "EMBEDFLOW_RAY_NUM_CPUS": "2", "EMBEDFLOW_PROGRESS": "0"}
    env.pop("RAY_ADDRESS", None)
    args = [
        sys.executable,
        "-m",
        "embedflow",
        "run",
        "pipelines/text_embedding.yaml",
        "--engine",
        "ray",
        "--quiet",
        "--param",
        f"input={ROOT / 'data' / 'texts' / 'sentences.txt'}",
        "--param",
        f"output={out}",
    ]
    proc = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "read 120 rows, wrote 120, failed 0" in proc.stdout
    assert pq.read_table(out).column("text").to_pylist() == (ROOT / "data" / "texts" / "sentences.txt").read_text().splitlines()


def test_without_ray_the_message_says_how_to_install():
    code = (
        "import sys; sys.modules['ray'] = None\n"
        "import embedflow as ef\n"
        "chain = ef.dc([1]).set_engine('ray')  # the name is checked; the engine loads when a sink runs\n"
        "try:\n    chain.to_list()\nexcept ef.PlanError as e:\n    print(e)\n"
        "assert 'ray' not in [m for m in sys.modules if sys.modules[m] is not None and m.split('.')[0] == 'ray']\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "the ray engine needs Ray, which is not installed: pip install 'embedflow[ray]'"


def test_the_core_never_imports_ray():
    code = "import sys, embedflow as ef; ef.dc([1]).map(abs).to_list(); assert 'ray' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.fixture
def small_parts(monkeypatch):
    """Cut file sources into many small parts, so that several Ray tasks read each file."""
    from embedflow.io import readers, sources

    monkeypatch.setattr(sources, "line_parts", lambda path, kind, columns: readers.line_parts(path, kind, columns, target_bytes=256))
    monkeypatch.setattr(sources, "parquet_parts", lambda path, columns: readers.parquet_parts(path, columns, target_rows=40))


@dataclass(frozen=True)
class DriverRefusingPart(Part):
    """A part that fails if it is read in the process that made it (the driver)."""

    part: Part
    driver: int

    first_row = property(lambda self: self.part.first_row)
    rows = property(lambda self: self.part.rows)
    portable = property(lambda self: self.part.portable)

    def read(self):
        if os.getpid() == self.driver:
            raise AssertionError("the source was read on the driver")
        return self.part.read()


@dataclass(frozen=True, kw_only=True)
class DriverRefusingSource(Source):
    inner: Source

    def _parts(self, split):
        return [DriverRefusingPart(p, os.getpid()) for p in self.inner.parts(split)]

    def identity(self):
        return self.inner.identity()


def refusing_driver_reads(chain):
    """The same chain, but its source fails if it is read in this (the driver) process."""
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers need these classes
    src = chain.plan.source
    refusing = DriverRefusingSource(kind=src.kind, label=src.label, named=src.named, columns=src.columns, inner=src)
    return DataCollection(replace(chain.plan, source=refusing), chain.named, chain.columns, settings=chain.settings)


@pytest.mark.parametrize("kind", ["read_text", "read_jsonl", "read_parquet"])
def test_file_sources_are_read_by_ray_tasks_in_order(tmp_path, small_parts, kind):
    lines = [f"sentence number {i}" + "!" * (i % 7) for i in range(700)]
    if kind == "read_text":
        path = tmp_path / "t.txt"
        path.write_text("\n".join(lines) + "\n")
        chain = ef.read_text["text"](path)
    elif kind == "read_jsonl":
        path = tmp_path / "t.jsonl"
        path.write_text("".join(json.dumps({"text": t, "i": i}) + ("\n\n" if i % 5 == 0 else "\n") for i, t in enumerate(lines)))
        chain = ef.read_jsonl["text"](path)
    else:
        path = tmp_path / "t.parquet"
        pq.write_table(pa.table({"text": lines, "i": list(range(700))}), path, row_group_size=33)
        chain = ef.read_parquet["text"](path)
    assert len(chain.plan.source.parts(split=True)) > 5
    chain = chain.map["text", "n"](len).filter(lambda r: r["n"] % 3 != 0)
    local = chain.to_list()
    assert len(local) > 400
    assert refusing_driver_reads(chain.set_engine("ray")).to_list() == local


def test_an_incremental_run_on_ray_computes_only_the_rows_the_store_lacks(tmp_path, small_parts):
    sentences = ROOT / "data" / "texts" / "sentences.txt"
    reference = tmp_path / "reference.parquet"
    run_pipeline(read_pipeline(ROOT / "pipelines" / "text_embedding.yaml", input=str(sentences), output=str(reference)), progress=False)
    expected = pq.read_table(reference).to_pylist()
    # an earlier run stored rows 0-49; their vectors are marked (zeros) to tell them apart
    out = tmp_path / "v.parquet"
    pipeline = read_pipeline(ROOT / "pipelines" / "text_embedding.yaml", input=str(sentences), output=str(out))
    keys = content_keys(pipeline.collection.plan)
    store = ResultStore(tmp_path / ".v.parquet.cache").open()
    store.add([(content, 0, {"text": r["text"], "vec": np.zeros(384, np.float32)}) for (_n, content, _k), r in zip(keys[:50], expected)])
    store.close()
    summary = run_pipeline(pipeline, engine="ray", progress=False)
    assert (summary.read, summary.reused, summary.written, summary.failed) == (120, 50, 120, 0)
    got = pq.read_table(out).to_pylist()
    assert [r["text"] for r in got] == [r["text"] for r in expected]  # each row once, in order
    assert all(not any(r["vec"]) for r in got[:50])  # the stored rows were not computed again
    np.testing.assert_allclose(np.array([r["vec"] for r in got[50:]]), np.array([r["vec"] for r in expected[50:]]), atol=1e-5)


class FailsOnFive(ef.Operator):
    """A batchable operator (it runs in a Ray actor) that fails on the item 5."""

    batchable = True

    def forward(self, batch):
        if 5 in batch:
            raise ValueError("five is bad")
        return batch


def test_an_error_on_ray_reaches_the_caller_as_itself_with_its_cause(tmp_path):
    def bad(x):
        if x == 5:
            raise ValueError("five is bad")
        return x

    for chain in (ef.dc(range(10)).map(bad), ef.dc(range(10)).map(abs).map(FailsOnFive(), batch_size=4)):
        with pytest.raises(ItemError, match=r"map failed on row 5 .*ValueError: five is bad") as err:
            chain.set_engine("ray").to_list()
        assert isinstance(err.value.__cause__, ValueError)
    path = tmp_path / "t.jsonl"
    path.write_text('{"a": 1}\n\n{"a": 2}\nnot json\n')
    with pytest.raises(EmbedflowError, match=r"^.*t\.jsonl:4: not valid JSON"):
        ef.read_jsonl(path).map(lambda r: r).set_engine("ray").to_list()


class SlowLen(ef.Operator):
    """A batchable operator slow enough to be killed in the middle of a run."""

    batchable = True
    default_batch_size = 4

    def __init__(self, delay: float = 0.02):
        self.delay = delay

    def forward(self, batch):
        time.sleep(self.delay * len(batch))
        return [np.array([len(t)], np.float32) for t in batch]


def model_actor_pids():
    """Processes of this machine that are Ray actors running a model stage."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if proc.name.isdigit() and cmdline.startswith("ray::") and "ModelActor" in cmdline:
            pids.append(int(proc.name))
    return pids


def test_a_killed_model_actor_loses_and_duplicates_no_row(tmp_path, registered):
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers need SlowLen
    registered("raytest.slow_len")(SlowLen)
    lines = [f"line {i}" for i in range(300)]
    data = tmp_path / "in.txt"
    data.write_text("".join(f"{line}\n" for line in lines))
    out = tmp_path / "v.parquet"
    path = tmp_path / "p.yaml"
    path.write_text(
        f"source: {{read_text: {data}, column: text}}\nsteps: [{{op: raytest.slow_len, in: text, out: vec, with: {{delay: 0.05}}}}]\nsink: {{parquet: {out}}}\n"
    )
    result = {}  # 300 rows x 50 ms: a run of 15 s, still going when the actor is killed even on a loaded machine

    def go():
        try:
            result["summary"] = run_pipeline(read_pipeline(path), engine="ray", progress=False)
        except BaseException as exc:  # noqa: BLE001 - examined below
            result["error"] = exc

    thread = threading.Thread(target=go)
    thread.start()
    deadline = time.time() + 120
    while not model_actor_pids() and time.time() < deadline and thread.is_alive():
        time.sleep(0.1)
    time.sleep(1.5)  # let it finish a few blocks
    pids = model_actor_pids()
    assert pids, f"no model actor was found to kill (the run {'ended' if not thread.is_alive() else 'is still going'}: {result})"
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    thread.join(300)
    if "error" in result:  # a clean failure: the rerun resumes and computes the rest once
        assert not isinstance(result["error"], AssertionError), result["error"]
        result["summary"] = run_pipeline(read_pipeline(path), engine="ray", progress=False)
    assert result["summary"].written == len(lines)
    assert pq.read_table(out).column("text").to_pylist() == lines  # every row once, in order


def test_actors_run_the_onnx_backend(tmp_path):
    """backend='onnx' inside Ray's model actors: the vectors torch gives (a tiny random BERT)."""
    requires("onnxruntime", "onnx")
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)).save_pretrained(
        tmp_path
    )
    AutoTokenizer.from_pretrained(ef.resolve_model("sentence-transformers/all-MiniLM-L6-v2")).save_pretrained(tmp_path)
    texts = ["x", "a short one", "a much longer sentence that the shorter ones are padded to", ""]
    on_ray = ef.dc(texts).text_embedding.transformers(model_name=str(tmp_path), backend="onnx", batch_size=2).set_engine("ray").to_numpy()
    local = ef.dc(texts).text_embedding.transformers(model_name=str(tmp_path), backend="torch").to_numpy()
    np.testing.assert_allclose(on_ray, local, rtol=1e-4, atol=1e-5)


def test_cpu_tasks_prepare_for_a_gpu_actor_with_the_same_answers(sample_texts, sample_images, tmp_path, monkeypatch):
    """On GPUs, tokenizing and decoding run in Ray's CPU tasks (the operator set up without its
    weights) and the actor gets (row, item, size): forced here on the CPU, the vectors, the
    order and the skipped rows are the local engine's."""
    from embedflow.engines.ray import engine as ray_engine
    from embedflow.engines.ray.tasks import can_prepare_elsewhere

    used = []

    def prepare_in_tasks(use_gpu, stage):
        used.append(can_prepare_elsewhere(stage))
        return used[-1]

    monkeypatch.setattr(ray_engine, "prepare_in_tasks", prepare_in_tasks)
    texts = sample_texts[:40]
    chain = ef.dc(texts).text_embedding.transformers(model_name="sentence-transformers/all-MiniLM-L6-v2", backend="torch", batch_size=8)
    np.testing.assert_allclose(chain.set_engine("ray").to_numpy(), chain.set_engine("local").to_numpy(), atol=1e-5)
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff" + b"not a jpeg" * 20)
    paths = [str(sample_images[0]), str(bad), str(sample_images[1])]
    failed: list = []
    on_ray = ef.dc(paths).safe(errors=failed).image_embedding.timm(model_name="resnet18", checkpoint_path=str(_resnet18(tmp_path)), pretrained=False)
    vectors = on_ray.set_engine("ray").to_numpy()
    local = (
        ef.dc([paths[0], paths[2]]).image_embedding.timm(model_name="resnet18", checkpoint_path=str(_resnet18(tmp_path)), pretrained=False).to_numpy()
    )
    np.testing.assert_allclose(vectors, local, atol=1e-4)
    assert len(failed) == 1 and "broken.jpg" in str(failed[0])
    assert used == [True, True]


def _resnet18(folder):
    import timm
    import torch

    path = folder / "resnet18.pth"
    if not path.exists():
        torch.manual_seed(0)
        torch.save(timm.create_model("resnet18", pretrained=False).state_dict(), path)
    return path
