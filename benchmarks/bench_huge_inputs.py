"""What one huge input costs (issue 21): a 200 MB line through the text chain, and a 30 MB string
to a served pipeline's ``/v1/embeddings`` while small requests keep coming.

    .venv/bin/python benchmarks/bench_huge_inputs.py

Prints wall time and peak memory (the process's for the chain; the server's RSS above its idle
level for the request) and the slowest small request answered meanwhile. Loopback only.
"""

from __future__ import annotations

import itertools
import re
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
WORDS = (ROOT / "data" / "texts" / "sentences.txt").read_text().split()


def huge_line(path: Path, size: int) -> None:
    path.write_text(" ".join(itertools.islice(itertools.cycle(WORDS), size // 4))[:size] + "\n")


def chain(path: Path) -> None:
    megabytes = path.stat().st_size // 10**6
    code = (
        "import time, resource, embedflow as ef\n"
        "t = time.perf_counter()\n"
        f"v = ef.read_text({str(path)!r}).text_embedding.transformers(model_name='sentence-transformers/all-MiniLM-L6-v2', backend='torch').to_numpy()\n"
        f"print(f'chain, one {megabytes} MB line: {{time.perf_counter() - t:.1f}} s, peak RSS {{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024}} MB')\n"
    )
    subprocess.run([sys.executable, "-W", "ignore", "-c", code], check=True)


def served(size: int, port: int = 8765) -> None:
    server = subprocess.Popen(
        [str(Path(sys.executable).with_name("embedflow")), "serve", "text-embedding", "--port", str(port)], stderr=subprocess.PIPE, text=True
    )
    try:
        for line in server.stderr:
            if "serving" in line:
                break
        url = f"http://127.0.0.1:{port}/v1/embeddings"

        def rss() -> int:
            return int(re.search(r"VmRSS:\s+(\d+)", Path(f"/proc/{server.pid}/status").read_text()).group(1)) // 1024

        httpx.post(url, json={"input": "warm up"}, timeout=60)
        idle, peak, done = rss(), [0], threading.Event()

        def watch() -> None:
            while not done.is_set():
                peak[0] = max(peak[0], rss())
                time.sleep(0.02)

        small: list[float] = []

        def others() -> None:
            for _ in range(20):
                start = time.perf_counter()
                httpx.post(url, json={"input": "a small one"}, timeout=300)
                small.append(time.perf_counter() - start)

        threading.Thread(target=watch, daemon=True).start()
        meanwhile = threading.Thread(target=others)
        start = time.perf_counter()
        meanwhile.start()
        reply = httpx.post(url, json={"input": " ".join(WORDS * (size // len(" ".join(WORDS)) + 1))[:size]}, timeout=300)
        took = time.perf_counter() - start
        meanwhile.join()
        done.set()
        print(
            f"served, one {size // 10**6} MB string: HTTP {reply.status_code} in {took:.2f} s, RSS +{peak[0] - idle} MB, slowest small request meanwhile {max(small):.2f} s"
        )
    finally:
        server.terminate()
        server.wait(30)


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        line = Path(tmp) / "line.txt"
        huge_line(line, 200_000_000)
        chain(line)
    served(30_000_000)
    print(f"(this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024} MB)")
