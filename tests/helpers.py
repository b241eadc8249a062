"""Helpers of the runner and trust tests: a plugin package of slow operators visible to
``embedflow run`` subprocesses, a pipeline file that uses them, and the CLI as a subprocess."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

from .conftest import ROOT, write_fake_distribution

SLOW_OPS = '''
import time
import numpy as np

def mark(text, log, delay=0.0):
    """Append the text to a log file (to see what was computed), wait, return a vector."""
    with open(log, "a") as f:
        f.write(text + "\\n")
    time.sleep(delay)
    if text == "poison":
        raise ValueError("poisoned row")
    return np.array([len(text), text.count("1")], np.float32)


from embedflow import Operator


class Embed(Operator):
    """Batchable, sorted by length: logs each text as its batch is computed."""

    batchable = True
    default_batch_size = 8

    def __init__(self, log: str, delay: float = 0.0):
        self.log, self.delay = log, delay

    def sort_key(self, text):
        return len(text)

    def forward(self, batch):
        with open(self.log, "a") as f:
            f.write("".join(t + "\\n" for t in batch))
        time.sleep(self.delay * len(batch))
        if "poison" in batch:
            raise ValueError("poisoned row")
        return [np.array([len(t), t.count("1")], np.float32) for t in batch]


def small_mlp():
    """A factory for embedding.torch (allowed only with --allow-import slowops)."""
    import torch

    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(2, 4), torch.nn.ReLU(), torch.nn.Linear(4, 3))
'''


# Crash tests kill a run at the instants where its files change. Nothing in embedflow is shaped
# for them: the kill is injected at the filesystem boundary by this sitecustomize, which Python
# imports at start-up in a subprocess that has the plugin folder on PYTHONPATH. It acts only when
# EMBEDFLOW_TEST_KILL (made by kill_at) is set.
KILLER = """
import os

_spec = os.environ.get("EMBEDFLOW_TEST_KILL")
if _spec:
    import signal

    _kind, _target, _nth = _spec.split("|")
    _seen = [0]

    def _die_the_nth_time():
        _seen[0] += 1
        if _seen[0] >= int(_nth):
            os.kill(os.getpid(), signal.SIGKILL)

    if _kind == "after-replace":  # a file or folder renamed into place, what follows not done
        _real_replace = os.replace

        import re

        def _replace(src, dst, *args, **kwargs):
            _real_replace(src, dst, *args, **kwargs)
            path = os.fspath(dst)
            if re.search(_target[3:], path) if _target.startswith("re:") else path == _target:
                _die_the_nth_time()

        os.replace = _replace
    elif _kind == "half-written":  # the output sink got half of the rows it is handed
        import embedflow.io.files as _files

        _sink = getattr(_files, _target)
        _real_write = _sink.write

        def _write(self, numbers, rows):
            half = len(rows) // 2
            _real_write(self, numbers[:half], rows[:half])
            _die_the_nth_time()
            _real_write(self, numbers[half:], rows[half:])

        _sink.write = _write
"""


def kill_at(point, output):
    """The environment that makes an ``embedflow run`` started with the plugin SIGKILL itself,
    as a power cut would, at ``point`` (``name`` or ``name:n``, the n-th time) of a file sink's
    run writing ``output``: ``segment-written`` (a segment of results in the store, its sidecar
    not yet there: it does not count), ``segment-listed`` (the sidecar in place: it counts),
    ``merge-half`` (half the rows written into the output), ``output-written`` (the output in
    place, the store's record of what it used not yet written)."""
    name, _, nth = point.partition(":")
    kinds = {
        "segment-written": ("after-replace", r"re:/segments/[^/]+\.arrow$"),
        "segment-listed": ("after-replace", r"re:/segments/[^/]+\.json$"),
        "merge-half": ("half-written", "ParquetSink"),
        "output-written": ("after-replace", str(output)),
    }
    kind, target = kinds[name]
    return {"EMBEDFLOW_TEST_KILL": f"{kind}|{target}|{nth or 1}"}


def make_plugin(tmp_path):
    """A plugin package (``slow.mark``, ``slow.embed``) visible to subprocesses through
    PYTHONPATH only (the ``plugin`` fixture of conftest.py), with the crash tests' kill switch
    (:data:`KILLER`, :func:`kill_at`)."""
    site = tmp_path / "site"
    (site / "slowops").mkdir(parents=True)
    (site / "slowops" / "__init__.py").write_text(SLOW_OPS)
    (site / "sitecustomize.py").write_text(KILLER)
    write_fake_distribution(site, "slowops", "slow.mark = slowops:mark\nslow.embed = slowops:Embed\n")
    return site


# A shell that starts jobs in the background (as CI may) leaves SIGINT ignored in them, and Python
# then never raises KeyboardInterrupt. The launcher restores the default disposition and execs the
# CLI. It is not a ``preexec_fn``: that forces a plain fork() of the pytest process, and after the
# Ray tests gRPC's fork handlers can abort the child (SIGABRT, "epoll_wait error: Bad file descriptor").
DEFAULT_SIGINT_LAUNCHER = (
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
    "os.execv(sys.executable, [sys.executable, '-m', 'embedflow', *sys.argv[1:]])"
)


def embedflow(args, plugin=None, env=None, default_sigint=False, **kwargs):
    full_env = {**os.environ, "EMBEDFLOW_PROGRESS": "0", **(env or {})}
    if plugin is not None:
        full_env["PYTHONPATH"] = str(plugin) + os.pathsep + full_env.get("PYTHONPATH", "")
    command = [sys.executable, "-c", DEFAULT_SIGINT_LAUNCHER] if default_sigint else [sys.executable, "-m", "embedflow"]
    return subprocess.Popen(
        [*command, *args], env=full_env, cwd=kwargs.pop("cwd", ROOT), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs
    )


def slow_pipeline(tmp_path, rows=400, on_error="raise", sink="parquet", op="slow.mark"):
    """A pipeline file that runs ``op`` (slow.mark, per item; slow.embed, batched and sorted)
    on ``rows`` lines; params input, output, log and delay."""
    data = tmp_path / "lines.txt"
    data.write_text("".join(f"line {i}\n" for i in range(rows)))
    path = tmp_path / "slow.yaml"
    path.write_text(
        textwrap.dedent(f"""
        name: slow
        params: {{input: {data}, output: {tmp_path}/out/v.{sink}, log: {tmp_path}/log.txt, delay: 0.0}}
        source: {{read_text: "${{input}}", column: text}}
        steps:
          - {{op: {op}, in: text, out: vec, with: {{log: "${{log}}", delay: "${{delay}}"}}}}
        sink: {{{sink}: "${{output}}", {"column: vec" if sink == "npy" else "columns: [text, vec]"}}}
        on_error: {on_error}
    """)
    )
    return path


def wait_for_segments(store: Path, count: int, proc, timeout: float = 60) -> list[str]:
    """Wait until the result store ``store`` lists ``count`` segments (while ``proc`` runs)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        listed = sorted(p.stem for p in (store / "segments").glob("*.json"))
        if len(listed) >= count:
            return listed
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    raise AssertionError("no segments appeared")


@contextlib.contextmanager
def python_server(code: str, cwd: Path) -> Iterator[str]:
    """Run ``code`` (a chain's ``.serve(port=0)``) in a Python subprocess; yield its URL once it
    listens; Ctrl-C it afterwards and check that it exits 0."""
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=cwd, stderr=subprocess.PIPE, text=True, env={**os.environ, "EMBEDFLOW_PROGRESS": "0"})
    try:
        line = ""
        while "serving" not in line:
            line = proc.stderr.readline()
            assert line or proc.poll() is None, "the server exited before it listened"
        yield re.search(r"(http://\S+)", line).group(1)
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0


class FakeStream:
    """A CUDA stream, faked for tests on the CPU: it logs what it is asked to wait for."""

    def __init__(self, name: str, log: list[str] | None = None):
        self.name, self.log = name, log if log is not None else []

    def wait_event(self, event: object) -> None:
        self.log.append(f"{self.name} waits for {getattr(event, 'name', event)}")

    def wait_stream(self, other: FakeStream) -> None:
        self.log.append(f"{self.name} waits for {other.name}")


class FakeStreams:
    """torch.cuda's current-stream bookkeeping, faked: ``current_stream``, ``set_stream`` and
    the ``stream`` context (install them with monkeypatch)."""

    def __init__(self, log: list[str] | None = None):
        self.log = log if log is not None else []
        self.current = self.default = FakeStream("compute", self.log)

    def current_stream(self, device: object = None) -> FakeStream:
        return self.current

    def set_stream(self, stream: FakeStream) -> None:
        self.current = stream

    @contextlib.contextmanager
    def stream(self, stream: FakeStream) -> Iterator[None]:
        prior, self.current = self.current, stream
        try:
            yield
        finally:
            self.current = prior
