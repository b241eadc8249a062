"""`embedflow serve`: real HTTP against real server processes on 127.0.0.1 (ephemeral ports).
Vectors equal the offline pipeline's, concurrent requests each get their own rows, every bad
input gets its 4xx, a full queue 503, SIGTERM drains; the search page works in a browser."""

from __future__ import annotations

import base64
import concurrent.futures
import importlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import embedflow as ef

from .conftest import ROOT, requires
from .helpers import python_server

pytestmark = pytest.mark.slow
httpx = requires("httpx", "test")
requires("fastapi", "serve")
MINILM = "sentence-transformers/all-MiniLM-L6-v2"


class Server:
    """``embedflow serve`` in a subprocess; ``url`` once it listens."""

    def __init__(self, *args, env=None):
        full_env = {**os.environ, "EMBEDFLOW_PROGRESS": "0", **(env or {})}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "embedflow", "serve", *args, "--port", "0"], cwd=ROOT, env=full_env, stderr=subprocess.PIPE, text=True
        )
        deadline, self.log = time.time() + 120, []
        while time.time() < deadline:
            line = self.proc.stderr.readline()
            self.log.append(line)
            found = re.search(r"serving .* on (http://127\.0\.0\.1:\d+)", line)
            if found:
                self.url = found.group(1)
                return
            if not line and self.proc.poll() is not None:
                break
        self.stop()
        raise AssertionError("the server did not start:\n" + "".join(self.log))

    def post(self, path, **kwargs):
        return httpx.post(self.url + path, timeout=120, **kwargs)

    def stop(self, sig=signal.SIGTERM):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout=60)


@pytest.fixture(scope="module")
def text_server():
    server = Server("pipelines/text_embedding.yaml", "--max-wait-ms", "20", "--max-items", "600", "--max-bytes", "200000")
    yield server
    assert server.stop() == 0


@pytest.fixture(scope="module")
def offline(sample_texts):
    """The offline pipeline's vectors of the sample sentences, by text."""
    rows = ef.dc["text"](sample_texts).text_embedding.transformers["text", "vec"](model_name=MINILM).normalize["vec"]().to_list()
    return {r["text"]: r["vec"] for r in rows}


def test_the_openai_client_gets_the_offline_vectors(text_server, offline, sample_texts):
    openai = requires("openai", "test")
    client = openai.OpenAI(base_url=text_server.url + "/v1", api_key="unused")
    one = client.embeddings.create(input=sample_texts[0], model=MINILM)
    many = client.embeddings.create(input=sample_texts[:5], model=MINILM)
    assert [d.index for d in many.data] == list(range(5))
    for text, item in [(sample_texts[0], one.data[0]), *zip(sample_texts[:5], many.data)]:
        assert float(np.dot(item.embedding, offline[text])) > 0.9999
    assert many.usage.prompt_tokens > 5 and many.model == MINILM
    raw = text_server.post("/v1/embeddings", json={"input": sample_texts[1], "encoding_format": "base64"}).json()
    vec = np.frombuffer(base64.b64decode(raw["data"][0]["embedding"]), "<f4")
    assert float(np.dot(vec, offline[sample_texts[1]])) > 0.9999


def test_v1_models_lists_what_is_served_and_a_request_s_model_is_checked(text_server, sample_texts):
    openai = requires("openai", "test")
    client = openai.OpenAI(base_url=text_server.url + "/v1", api_key="unused")
    ids = [m.id for m in client.models.list()]
    assert len(ids) == 2 and ids[1] == MINILM and ids[0] in text_server.log[-1]  # the pipeline's name, then its model
    assert client.models.retrieve(MINILM).id == MINILM
    for name in ids:  # either name, or none, gets the vectors
        assert len(client.embeddings.create(input=sample_texts[0], model=name).data[0].embedding) == 384
    assert text_server.post("/v1/embeddings", json={"input": "x"}).status_code == 200
    wrong = text_server.post("/v1/embeddings", json={"input": "x", "model": "text-embedding-ada-002"})
    error = wrong.json()["error"]
    assert wrong.status_code == 404 and error["code"] == "model_not_found"
    assert error["message"].startswith("model 'text-embedding-ada-002' is not served here; this server serves: ") and MINILM in error["message"]
    assert httpx.get(text_server.url + "/v1/models/nope", timeout=30).status_code == 404


def test_64_concurrent_requests_each_get_their_own_rows(text_server, offline, sample_texts):
    def ask(i):
        texts = [sample_texts[(i + j) % len(sample_texts)] for j in range(1 + i % 3)]
        got = text_server.post("/v1/embeddings", json={"input": texts}).json()
        return texts, [d["embedding"] for d in got["data"]]

    with concurrent.futures.ThreadPoolExecutor(64) as pool:
        answers = list(pool.map(ask, range(64)))
    for texts, vectors in answers:
        assert len(vectors) == len(texts)
        assert all(float(np.dot(v, offline[t])) > 0.9999 for t, v in zip(texts, vectors))  # no mixing
    metrics = httpx.get(text_server.url + "/metrics").text
    rows = float(re.search(r"^embedflow_batch_rows_sum (\S+)", metrics, re.M).group(1))
    batches = float(re.search(r"^embedflow_batch_rows_count (\S+)", metrics, re.M).group(1))
    assert rows / batches > 1.5  # rows of different requests shared batches


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (b"{not json", 400, "malformed JSON"),
        (b"", 400, "no body"),
        (json.dumps({"input": 5}).encode(), 400, '"input" must be a string or a list of strings'),
        (json.dumps({"input": []}).encode(), 400, '"input" is empty'),
        (json.dumps({"input": ["ok", 7]}).encode(), 400, r'"input"\[1\] must be a string'),
        (json.dumps({"text": "x"}).encode(), 400, 'with "input"'),
        (json.dumps({"input": "x", "encoding_format": "int8"}).encode(), 400, "encoding_format"),
        (json.dumps({"input": ["x"] * 601}).encode(), 413, "at most 600 per request"),
        (json.dumps({"input": "x" * 300000}).encode(), 413, "at most 200000"),
        (b"[" * 100_000 + b"]" * 100_000, 400, "nested too deeply"),  # was a 500 (RecursionError)
        (b'{"input": "x", "n": ' + b"9" * 5000 + b"}", 400, "a value in the JSON is not usable: Exceeds the limit"),  # was a 500
    ],
)
def test_bad_requests_get_a_4xx_with_the_reason(text_server, body, status, message):
    reply = text_server.post("/v1/embeddings", content=body, headers={"Content-Type": "application/json"})
    assert reply.status_code == status
    assert re.search(message, reply.json()["error"]["message"])


def test_run_takes_rows_and_says_what_is_missing(text_server):
    reply = text_server.post("/run", json={"rows": [{"text": "a"}, {"text": "b c"}]})
    rows = reply.json()["rows"]
    assert [r["text"] for r in rows] == ["a", "b c"] and len(rows[0]["vec"]) == 384
    reply = text_server.post("/run", json={"rows": [{"txt": "a"}]})
    assert reply.status_code == 400 and "rows[0] has no 'text'" in reply.json()["error"]["message"]
    assert httpx.get(text_server.url + "/health").json()["status"] == "ok"
    assert httpx.get(text_server.url + "/docs").status_code == 200


@pytest.fixture(scope="module")
def image_server():
    server = Server("pipelines/image_embedding.yaml", "--files-root", str(ROOT / "data" / "images"))
    yield server
    server.stop()


def test_images_by_upload_base64_or_path_under_the_root_and_a_corrupt_one_is_a_422(image_server, sample_images):
    photo = sample_images[0]
    data = photo.read_bytes()
    by_path = image_server.post("/run", json={"rows": [{"path": photo.name}]}).json()["rows"][0]
    by_b64 = image_server.post("/run", json={"rows": [{"path": {"base64": base64.b64encode(data).decode()}}]}).json()["rows"][0]
    by_upload = image_server.post("/run", files={"path": (photo.name, data, "image/jpeg")}).json()["rows"][0]
    offline = ef.load_pipeline(ROOT / "pipelines" / "image_embedding.yaml", images=str(photo)).to_list()[0]["vec"]
    for row in (by_path, by_b64, by_upload):
        assert float(np.dot(row["vec"], offline)) > 0.9999
        assert set(row) == {"path", "vec"}  # the sink's columns; no decoded image echoed
    bad = image_server.post(
        "/run",
        json={"rows": [{"path": {"base64": base64.b64encode(data).decode()}}, {"path": {"base64": base64.b64encode(b"not an image").decode()}}]},
    )
    assert bad.status_code == 422 and bad.json()["error"]["index"] == 1
    assert "item 1: image_decode: ImageDecodeError" in bad.json()["error"]["message"]
    outside = image_server.post("/run", json={"rows": [{"path": "../../pyproject.toml"}]})
    assert outside.status_code == 403 and "outside the server's files root" in outside.json()["error"]["message"]


def test_a_nul_byte_in_a_path_is_a_400_and_metrics_count_the_status_sent(image_server):
    reply = image_server.post("/run", json={"rows": [{"path": "cat\u0000.jpg"}]})
    assert reply.status_code == 400 and "holds a NUL byte" in reply.json()["error"]["message"]
    assert httpx.get(image_server.url + "/files/cat%00.jpg", timeout=30).status_code == 404
    metrics = httpx.get(image_server.url + "/metrics", timeout=30).text
    assert re.search(r'embedflow_requests_total\{code="400",endpoint="/run"\} [1-9]', metrics), metrics
    assert 'code="500"' not in metrics


@pytest.mark.parametrize("endpoint", ["/run", "/v1/embeddings"])
def test_a_chunked_body_past_max_bytes_is_a_413_not_read_whole(image_server, endpoint):
    """No Content-Length (Transfer-Encoding: chunked): the bytes are counted as they come."""
    boundary = "xyz"
    head = f'--{boundary}\r\nContent-Disposition: form-data; name="path"; filename="a.jpg"\r\nContent-Type: image/jpeg\r\n\r\n'.encode()
    sent = []

    def body():
        yield head
        for _ in range(40):  # 40 MB, past the default 32 MB
            sent.append(1)
            yield b"\0" * (1 << 20)
        yield f"\r\n--{boundary}--\r\n".encode()

    content_type = f"multipart/form-data; boundary={boundary}" if endpoint == "/run" else "application/json"
    reply = image_server.post(endpoint, content=body(), headers={"Content-Type": content_type})
    assert reply.status_code == 413 and "larger than 33554432 bytes (the server's --max-bytes)" in reply.json()["error"]["message"]
    assert httpx.get(image_server.url + "/health", timeout=30).json()["status"] == "ok"


def test_a_full_queue_answers_503_with_retry_after_and_a_slow_request_504():
    server = Server("pipelines/text_embedding.yaml", "--max-queue", "8", "--max-batch-size", "4", "--timeout", "60")
    try:
        texts = [("word " * 200).strip()] * 8

        def ask(_):
            return server.post("/v1/embeddings", json={"input": texts})

        with concurrent.futures.ThreadPoolExecutor(12) as pool:
            replies = list(pool.map(ask, range(12)))
        codes = sorted(r.status_code for r in replies)
        assert codes.count(200) >= 1 and codes.count(503) >= 1, codes
        refused = next(r for r in replies if r.status_code == 503)
        assert int(refused.headers["Retry-After"]) >= 1 and "the queue holds" in refused.json()["error"]["message"]
    finally:
        server.stop()
    quick = Server("pipelines/text_embedding.yaml", "--timeout", "0.05", "--max-batch-size", "8")
    try:
        slow = quick.post("/v1/embeddings", json={"input": [("word " * 200).strip()] * 64})
        assert slow.status_code == 504 and "--timeout" in slow.json()["error"]["message"]
    finally:
        quick.stop()


def test_sigterm_drains_the_requests_in_flight_and_exits_0(sample_texts):
    server = Server("pipelines/text_embedding.yaml", "--max-batch-size", "16")
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        texts = sample_texts * 4
        pending = pool.submit(server.post, "/v1/embeddings", json={"input": texts})
        time.sleep(0.5)  # the request is being worked on
        server.proc.send_signal(signal.SIGTERM)
        reply = pending.result(timeout=120)
    assert reply.status_code == 200 and len(reply.json()["data"]) == len(texts)
    assert server.proc.wait(timeout=60) == 0


def test_a_chain_serves_from_python(tmp_path):
    code = "import embedflow as ef\nef.dc['text']([]).map['text', ('n', 'upper')](lambda t: (len(t), t.upper())).serve(port=0, name='lengths')\n"
    with python_server(code, tmp_path) as url:
        assert httpx.post(url + "/run", json={"rows": [{"text": "abcd"}]}).json() == {"rows": [{"text": "abcd", "n": 4, "upper": "ABCD"}]}
        reply = httpx.post(url + "/v1/embeddings", json={"input": "x"})
        assert reply.status_code == 400 and "does not map one text to one vector; use POST /run" in reply.json()["error"]["message"]


def test_without_the_serve_extra_the_message_says_how_to_install():
    code = "import sys; sys.modules['fastapi'] = None\nimport embedflow as ef\ntry:\n    ef.dc['t']([]).serve()\nexcept ef.PlanError as e:\n    print(e)\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "serving needs the serve extra, which is not installed: pip install 'embedflow[serve]'"


# --------------------------------------------------------------------------- the page, in a browser
def browser():
    """Headless Chromium from the distribution's packages, driven by Selenium (CI installs them)."""
    webdriver = requires("selenium.webdriver", "test")
    chromium = next((p for p in ("/usr/bin/chromium", "/usr/bin/chromium-browser") if Path(p).exists()), None)
    if chromium is None or not Path("/usr/bin/chromedriver").exists():
        if os.environ.get("CI"):
            raise AssertionError("CI needs chromium and chromium-driver (apt-get install chromium chromium-driver)")
        pytest.skip("chromium and chromium-driver are not installed")
    from selenium.webdriver.chrome.service import Service as DriverService

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking", "--no-first-run"):
        options.add_argument(flag)
    return webdriver.Chrome(service=DriverService("/usr/bin/chromedriver"), options=options)


def wait_for(driver, selector, timeout=60):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, timeout).until(expected_conditions.presence_of_element_located((By.CSS_SELECTOR, selector)))
    return driver.find_elements(By.CSS_SELECTOR, selector)


def test_the_search_pages_work_in_a_browser(tmp_path, sample_texts):
    from selenium.webdriver.common.by import By

    db = tmp_path / "search.db"
    for index in ("text_search_index", "image_search_index"):
        proc = subprocess.run(
            [sys.executable, "-m", "embedflow", "run", f"pipelines/{index}.yaml", "--param", f"db={db}", "--quiet"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 0, proc.stderr
    driver = browser()
    try:
        text = Server("pipelines/text_search.yaml", "--param", f"db={db}")
        try:
            driver.get(text.url + "/")
            driver.find_element(By.ID, "query").send_keys(sample_texts[7])
            driver.find_element(By.CSS_SELECTOR, "#search button").click()
            hits = wait_for(driver, "li.hit")
            assert sample_texts[7] in hits[0].text and hits[0].text.startswith("1.000")
        finally:
            text.stop()
        images = Server("pipelines/image_search.yaml", "--param", f"db={db}", "--files-root", str(ROOT))
        try:
            driver.get(images.url + "/")
            driver.find_element(By.ID, "file").send_keys(str(ROOT / "data" / "images" / "cat_crop.jpg"))
            hits = wait_for(driver, "li.hit img")
            assert hits[0].get_attribute("src").endswith("cat_crop.jpg")  # the photo itself first, as a thumbnail
            assert driver.execute_script("return arguments[0].naturalWidth", hits[0]) > 0  # the thumbnail loaded
        finally:
            images.stop()
    finally:
        driver.quit()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--max-batch-size", "0"], "max_batch_size=0 (--max-batch-size): rows per shared batch must be at least 1"),
        (["--timeout", "-1"], "timeout=-1.0 (--timeout): the seconds a request may take must be a positive number"),
        (["--max-queue", "0"], "max_queue=0 (--max-queue): rows that may wait must be at least 1"),
        (["--max-bytes", "-3"], "max_bytes=-3 (--max-bytes)"),
        (["--port", "99999"], "port=99999 (--port): a port is 0 to 65535"),
        (["--host", "203.0.113.9"], "cannot listen on 203.0.113.9:0"),
    ],
)
def test_bad_server_options_fail_before_any_model_loads(monkeypatch, capsys, args, message):
    from embedflow.cli import main

    def no_load(*_args, **_kwargs):
        raise AssertionError("the models were loaded before the options were checked")

    monkeypatch.setattr(importlib.import_module("embedflow.serve.server"), "Service", no_load)  # (ef.serve is a function)
    port = [] if "--port" in args else ["--port", "0"]
    assert main(["serve", "text-embedding", *port, *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Fix:" in err and "Traceback" not in err


def test_an_unexpected_error_or_a_gone_client_is_counted_as_what_was_sent():
    """/metrics counted every 500 as code="200"; a client that went away printed a traceback."""
    import asyncio

    from starlette.requests import ClientDisconnect

    from embedflow.serve.app import Limits, _answering

    counted = []

    class Metrics:
        def request(self, endpoint, code, seconds):
            counted.append(code)

    class FakeService:
        metrics = Metrics()

    answer = _answering(FakeService(), Limits())

    def failing(exc):
        async def work():
            raise exc

        return work

    replies = [asyncio.run(answer("/run", failing(exc))) for exc in (RuntimeError("boom"), ClientDisconnect())]
    assert [r.status_code for r in replies] == counted == [500, 499]
    assert b"RuntimeError: boom" in replies[0].body
