"""Remote files through fsspec, against real local servers: an http.server on 127.0.0.1 serving
the bundled data (read, glob over its folder listing) and an S3 server (moto) started here for
reading and writing. The rows equal those of the local files; writes appear whole or not at
all; what cannot be done (writing over HTTP, a missing backend) says so in one line."""

from __future__ import annotations

import functools
import http.server
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

import embedflow as ef
from embedflow.pipelines import read_pipeline, run_pipeline

from .conftest import DATA, requires

requires("fsspec", "remote")
requires("s3fs", "remote")
requires("aiohttp", "remote")


@pytest.fixture(scope="module")
def http_url():
    """The repository's data/ folder over HTTP (with folder listings) on an ephemeral port."""
    handler = functools.partial(QuietHandler, directory=str(DATA))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def s3():
    """An S3 server (moto) on 127.0.0.1 with a bucket holding the bundled photos and texts."""
    requires("moto", "test")
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL")}
    os.environ.update(AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test", AWS_DEFAULT_REGION="us-east-1")
    os.environ["AWS_ENDPOINT_URL"] = f"http://127.0.0.1:{server._server.server_port}"
    import fsspec

    fsspec.filesystem("s3").clear_instance_cache()
    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    fs.mkdir("photos")
    for path in sorted((DATA / "images").glob("*.jpg"))[:8]:
        fs.put_file(str(path), f"photos/imgs/{path.name}")
    fs.put_file(str(DATA / "texts" / "sentences.txt"), "photos/texts/sentences.txt")
    yield fs
    server.stop()
    fsspec.filesystem("s3").clear_instance_cache()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def decoded(chain):
    return chain.image_decode["path", "img"]().map["img", "shape"](lambda img: img.shape).to_list()


def test_http_files_read_as_the_local_ones(http_url, sample_texts, tmp_path):
    assert ef.read_text(f"{http_url}/texts/sentences.txt").to_list() == sample_texts
    remote = decoded(ef.glob["path"](f"{http_url}/images/*.jpg"))
    local = decoded(ef.glob["path"](str(DATA / "images" / "*.jpg")))
    assert [r["path"].rsplit("/", 1)[-1] for r in remote] == [r["path"].rsplit("/", 1)[-1] for r in local]
    assert [r["shape"] for r in remote] == [r["shape"] for r in local]
    with pytest.raises(ef.EmbedflowError, match="http\\(s\\) URLs can be read, not written"):
        ef.dc["t"](["a"]).to_parquet(f"{http_url}/out.parquet")
    with pytest.raises(ef.EmbedflowError, match="input '.*/texts/nothing.txt' does not exist; check the URL"):
        ef.read_text(f"{http_url}/texts/nothing.txt").to_list()


def test_s3_glob_read_write_and_read_back(s3, tmp_path):
    rows = decoded(ef.glob["path"]("s3://photos/imgs/*.jpg"))
    names = sorted(p.name for p in (DATA / "images").glob("*.jpg"))[:8]
    assert [r["path"] for r in rows] == [f"s3://photos/imgs/{n}" for n in names]
    assert [r["shape"] for r in rows] == [r["shape"] for r in decoded(ef.glob["path"](*[str(DATA / "images" / n) for n in names]))]
    vectors = ef.dc["text", "vec"]([(f"t{i}", np.full(4, i, np.float32)) for i in range(300)])
    vectors.to_parquet("s3://photos/out/v.parquet")
    back = ef.read_parquet("s3://photos/out/v.parquet").to_list()
    assert [r["text"] for r in back] == [f"t{i}" for i in range(300)]
    np.testing.assert_array_equal(np.stack([r["vec"] for r in back]), np.stack([np.full(4, i, np.float32) for i in range(300)]))


def test_a_failed_write_leaves_no_object(s3):
    def boom(x):
        if x == 150:
            raise ValueError("boom")
        return x

    with pytest.raises(ef.ItemError, match="boom"):
        ef.dc["n"](range(300)).map["n", "n"](boom).to_parquet("s3://photos/out/partial.parquet")
    assert not s3.exists("photos/out/partial.parquet")


def test_a_pipeline_reads_and_writes_s3_and_resumes_locally(s3, tmp_path):
    (tmp_path / "p.yaml").write_text(
        "source: {read_text: s3://photos/texts/sentences.txt, column: text}\n"
        "steps: [{op: text_embedding.transformers, in: text, out: vec, with: {model_name: sentence-transformers/all-MiniLM-L6-v2}}]\n"
        "sink: {npy: s3://photos/out/texts.npy, column: vec}\n"
    )
    summary = run_pipeline(read_pipeline(tmp_path / "p.yaml"), progress=False)
    assert summary.written == 120 and summary.output == "s3://photos/out/texts.npy"
    with s3.open("photos/out/texts.npy", "rb") as f:
        got = np.load(f)
    local = (
        ef.read_text(str(DATA / "texts" / "sentences.txt"))
        .text_embedding.transformers(model_name="sentence-transformers/all-MiniLM-L6-v2")
        .to_numpy()
    )
    np.testing.assert_allclose(got, local, atol=1e-6)
    assert s3.exists("photos/out/texts.npy.keys.jsonl")


def test_without_the_backend_the_message_says_how_to_install():
    code = "import sys; sys.modules['s3fs'] = None\nimport embedflow as ef\ntry:\n    ef.read_text('s3://b/x.txt').to_list()\nexcept ef.EmbedflowError as e:\n    print(e)\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "'s3://b/x.txt': s3:// needs s3fs, which is not installed: pip install 'embedflow[remote]' (or pip install s3fs)"
