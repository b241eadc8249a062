"""Preprocessing in worker processes: beyond the GIL.

A fast tokenizer releases the GIL while it encodes, but turning its encodings into Python
objects does not, so one process's threads stop near 15,000 texts/s however many cores there
are — while a GPU embeds 60,000/s and more. An operator that says so
(``preprocess_processes``, see :class:`embedflow.Operator`) gets a :class:`PreparePool`:
worker processes that each build the step's operator, call ``setup_preprocess(device)`` (no
weights) and answer lists of inputs with ``preprocess_batch`` — the same routine as the
threads (:func:`.preprocess.preprocess_items`), so the same items, and the same errors,
which travel back to be named or skipped in this process.

Workers are plain ``python -m`` processes over pipes, not ``multiprocessing``: a user's
script without an ``if __name__ == "__main__"`` guard is never imported again, and nothing
is forked from a process that holds CUDA or threads. A worker that is still starting is not
waited for (the caller prepares in its own thread meanwhile); a worker that dies is replaced
and its inputs prepared in this process — no row is lost. A pool lives as long as the
operator it prepares for (a chain's loaded model) and ends with the program.

>>> process_count("auto", "cuda:0", cores=16), process_count("auto", "cpu", cores=16), process_count(2, "cpu")
(14, 0, 2)
"""

from __future__ import annotations

import os
import pickle
import queue
import subprocess
import sys
import threading
import weakref
from collections import Counter
from multiprocessing.connection import Connection
from typing import Any

from .. import registry
from ..errors import warn_user
from ..hooks import PreparesAlone
from ..models import allowed_imports
from ..operator import Operator
from ..plan import Apply
from .devices import cpu_count
from .packing import Cut

MAX_AUTO_PROCESSES = 32
# each worker is one core: the libraries' own thread pools would only fight each other
ONE_THREAD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "RAYON_NUM_THREADS": "1"}


class WorkerLost(RuntimeError):
    """A preprocessing worker exited while it held a request (it has been replaced)."""


def process_count(wanted: int | str | None, device: str, cores: int | None = None) -> int:
    """Worker processes for an operator's ``preprocess_processes``: a number as given;
    ``"auto"``: on a GPU all the cores but two (the main process's threads and the device's),
    at most 32, when there are at least 4 — on an H200's 16 cores 8 processes tokenized 45,812
    texts/s and 16 80,691/s, while the GPU embeds faster still; none on the CPU (the model needs
    the cores); None: none."""
    if wanted is None or wanted == 0:
        return 0
    if wanted != "auto":
        return int(wanted)
    if not device.startswith("cuda"):
        return 0
    cores = cpu_count() if cores is None else cores
    return min(MAX_AUTO_PROCESSES, cores - 2) if cores >= 4 else 0


def rebuilt_by_name(step: Apply) -> bool:
    """Whether a worker process can build ``step``'s operator itself: an operator of an
    installed package, by name (one registered only in this process, or an instance given to
    ``.map``, cannot be rebuilt there)."""
    return step.target is None and registry.operator_source(step.name).startswith("package ")


class _Worker:
    def __init__(self, setup: bytes):
        read_in, write_in = os.pipe()
        read_out, write_out = os.pipe()
        self.process = subprocess.Popen(  # our own module, no shell
            [sys.executable, "-m", "embedflow.engines.prepare_worker", str(read_in), str(write_out)],
            pass_fds=(read_in, write_out),
            stdin=subprocess.DEVNULL,
            env={**os.environ, **ONE_THREAD_ENV},
        )
        os.close(read_in)
        os.close(write_out)
        self.send, self.recv = Connection(write_in, readable=False), Connection(read_out, writable=False)
        self.send.send_bytes(setup)
        self.ready = False

    def started(self) -> bool | str:
        """True once the worker has set its operator up; False while it is still starting; the
        error text when it could not."""
        if self.ready:
            return True
        try:
            if not self.recv.poll():
                return False
            ok, error = pickle.loads(self.recv.recv_bytes())  # our own worker's answer: trusted
        except (EOFError, OSError):
            try:
                code: Any = self.process.wait(5)
            except subprocess.TimeoutExpired:
                code = "unknown: it closed its pipe but still runs"
            return f"the worker process exited while starting (exit code {code})"
        self.ready = bool(ok)
        return True if ok else error

    def call(self, payload: bytes) -> tuple[list[Any] | None, Any]:
        """``(items, run_counts)``, or ``(None, why)`` when the items could not be sent back."""
        self.send.send_bytes(payload)
        return pickle.loads(self.recv.recv_bytes())  # our own worker's answer: trusted

    def close(self, timeout: float = 2.0) -> None:
        for conn in (self.send, self.recv):
            conn.close()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _close_all(workers: list[_Worker]) -> None:
    for worker in workers:
        worker.close()


class PreparePool:
    """``processes`` workers preparing items for ``step``'s operator on ``device``; call
    :meth:`prepare` from any thread."""

    def __init__(self, step: Apply, device: str, processes: int):
        if processes < 1:
            msg = f"PreparePool: processes={processes!r} must be at least 1"
            raise ValueError(msg)
        self.label, self.processes = step.label, processes
        self._setup = pickle.dumps((step, device, allowed_imports(), list(sys.path)), protocol=5)
        self.workers: list[_Worker] = []
        try:
            for _ in range(processes):
                self.workers.append(_Worker(self._setup))
        except OSError:
            _close_all(self.workers)  # none left behind
            raise
        self._idle: queue.SimpleQueue[_Worker] = queue.SimpleQueue()
        for worker in self.workers:
            self._idle.put(worker)
        self._lock = threading.Lock()
        self.counts: Counter[str] = Counter()  # the workers' operators' run_counts, summed
        self.failed: str | None = None  # why the workers cannot serve, once they cannot
        self._finalizer = weakref.finalize(self, _close_all, self.workers)

    def prepare(self, inputs: list[Any] | Cut) -> Any:
        """One item per input tuple (or a :class:`.preprocess.Raised`) — or, for a
        :class:`.packing.Cut`, its :class:`.packing.Packed` batches — from an idle worker; None
        while no worker has started yet, when none could, or when the inputs cannot travel to a
        process (an open file, a function): then prepare here."""
        try:
            payload = pickle.dumps(inputs, protocol=5)
        except Exception:  # noqa: BLE001 - any input pickle refuses: this chunk is prepared here
            return None
        worker = self._take()
        if worker is None:
            return None
        try:
            items, counts = worker.call(payload)
        except (EOFError, OSError) as exc:
            worker = self._replace(worker)
            msg = f"{self.label}: a preprocessing worker process exited ({type(exc).__name__}); it was restarted"
            raise WorkerLost(msg) from exc
        finally:
            self._idle.put(worker)
        if items is None:  # the operator's prepared items cannot be pickled: no process can help
            self._give_up(f"its prepared items cannot be sent between processes: {counts}")
            return None
        if counts:
            with self._lock:
                self.counts.update(counts)
        return items

    def _take(self) -> _Worker | None:
        """An idle worker that has started; None when every idle one is still starting."""
        for _ in range(self.processes):
            if self.failed is not None:
                return None
            worker = self._idle.get()
            state = worker.started()
            if state is True:
                return worker
            self._idle.put(worker)
            if state is not False:
                self._give_up(f"they could not start: {state}")
        return None

    def _give_up(self, error: str) -> None:
        with self._lock:
            if self.failed is not None:
                return
            self.failed = error
        warn_user(f"{self.label}: the preprocessing worker processes cannot serve ({error}); preparing in this process's threads instead")
        self.close()

    def _replace(self, dead: _Worker) -> _Worker:
        dead.close(timeout=0.1)
        with self._lock:
            if self.failed is not None or not self._finalizer.alive:  # closed: nothing to restart
                return dead
            try:
                fresh = _Worker(self._setup)
            except OSError as exc:  # no process can be started now (limits, memory)
                failure: OSError | None = exc
            else:
                failure = None
                self.workers[self.workers.index(dead)] = fresh
        if failure is not None:
            self._give_up(f"a worker could not be restarted: {type(failure).__name__}: {failure}")
            return dead
        return fresh

    def take_counts(self) -> Counter[str]:
        """The workers' ``run_counts`` since the last call."""
        with self._lock:
            counts, self.counts = self.counts, Counter()
        return counts

    def close(self) -> None:
        """Stop the workers (also done when the pool is collected or the program exits)."""
        self._finalizer()


_pools: weakref.WeakKeyDictionary[Operator, PreparePool] = weakref.WeakKeyDictionary()
_pools_lock = threading.Lock()


def pool_for(step: Apply, op: Operator, device: str, processes: int | None = None) -> PreparePool | None:
    """The pool that prepares items for ``op`` (a replica of ``step`` on ``device``), started
    on first use and kept as long as ``op``: ``processes`` workers (the step's ``processes=``),
    else as many as the operator's ``preprocess_processes`` says. None when that is none, or
    when the operator cannot be prepared in a worker (said with a warning when a number was
    asked for)."""
    wanted = processes if processes is not None else getattr(op, "preprocess_processes", None)
    count = process_count(wanted, device)
    if not count:
        return None
    if not (isinstance(op, PreparesAlone) and rebuilt_by_name(step)):
        if wanted != "auto":
            warn_user(
                f"{step.label}: processes={count} needs an operator of an installed package with setup_preprocess(); "
                "preparing in this process's threads instead"
            )
        return None
    with _pools_lock:
        pool = _pools.get(op)
        if pool is None or pool.processes != count:
            if pool is not None:
                pool.close()
            try:
                pool = _pools[op] = PreparePool(step, device, count)
            except OSError as exc:  # no process can be started here (no executable, limits)
                warn_user(
                    f"{step.label}: processes={count}: the worker processes could not be started ({type(exc).__name__}: {exc}); "
                    "preparing in this process's threads instead"
                )
                return None
        return pool


def existing_pool(op: Operator) -> PreparePool | None:
    """The pool already started for ``op``, if any."""
    return _pools.get(op)
