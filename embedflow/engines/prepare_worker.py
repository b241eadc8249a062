"""A preprocessing worker process (started by :mod:`.prepare_processes`, never by hand).

It reads, from its parent over a pipe: the step, the device, the modules the user allowed
model factories from and the parent's ``sys.path``; builds the step's operator and calls
``setup_preprocess(device)``; then answers each list of input tuples with the prepared items
(:func:`.preprocess.preprocess_items`) — or each :class:`.packing.Cut` with its window's
collated batches (:func:`.packing.prepare_batches`) — and the operator's ``run_counts`` since
the last answer (or ``None`` and the reason when the answer cannot be pickled), until the pipe
closes.
"""

from __future__ import annotations

import os
import pickle
import sys
import threading
import time
from multiprocessing.connection import Connection
from typing import Any

from ..hooks import CountsEvents, PreparesAlone
from ..models import allow_import
from ..plan import instantiate
from .packing import Cut, prepare_batches
from .preprocess import Raised, preprocess_items
from .replicas import place


def _picklable_errors(items: list[Any]) -> list[Any]:
    """``items`` with every error made one that pickles (its type and text kept)."""
    out = []
    for item in items:
        if isinstance(item, Raised):
            try:
                pickle.dumps(item.error)
            except Exception:  # noqa: BLE001 - any unpicklable exception
                item = Raised(RuntimeError(f"{type(item.error).__name__}: {item.error}"))
        out.append(item)
    return out


def die_with_parent(every: float = 0.2) -> None:
    """End this process soon after its parent dies, even in the middle of starting (importing
    torch, loading a tokenizer takes seconds) when a ``kill -9`` of the parent leaves no one to
    close the pipe: a thread watches for this process being handed to another parent. (Not
    Linux's parent-death signal: it fires when the parent *thread* ends, and the thread that
    started a pool may end while the process lives on.)"""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(every)
        os._exit(1)

    threading.Thread(target=watch, name="embedflow-parent-watch", daemon=True).start()


def serve(read_fd: int, write_fd: int) -> None:
    """The worker's loop (see the module docstring)."""
    requests, answers = Connection(read_fd, writable=False), Connection(write_fd, readable=False)
    try:
        step, device, allowed, path = pickle.loads(requests.recv_bytes())  # from our parent: trusted
        sys.path[:] = path
        try:
            allow_import(*allowed)
            op = instantiate(step)
            if not isinstance(op, PreparesAlone):
                msg = f"{type(op).__name__} has no setup_preprocess(device)"
                raise TypeError(msg)
            place(op, device)
            op.setup_preprocess(device)
        except Exception as exc:  # noqa: BLE001 - the parent warns and prepares in its threads
            answers.send_bytes(pickle.dumps((False, f"{type(exc).__name__}: {exc}")))
            return
        answers.send_bytes(pickle.dumps((True, None)))
        counts = op.run_counts if isinstance(op, CountsEvents) else None
        while True:
            request = pickle.loads(requests.recv_bytes())
            if isinstance(request, Cut):  # a window: prepared, cut and collated here
                items: Any = prepare_batches(op, request)
                positions = [i for i, _ in items.errors]
                items.errors = list(zip(positions, _picklable_errors([e for _, e in items.errors])))  # errors that pickle
            else:
                items = _picklable_errors(preprocess_items(op, request))
            delta = dict(counts) if counts else {}
            if counts:
                counts.clear()
            try:
                answer = pickle.dumps((items, delta), protocol=5)
            except Exception as exc:  # noqa: BLE001 - items pickle refuses: the parent prepares them itself
                answer = pickle.dumps((None, f"{type(exc).__name__}: {exc}"))
            answers.send_bytes(answer)
    except (EOFError, OSError, KeyboardInterrupt):
        return


if __name__ == "__main__":
    die_with_parent()
    serve(int(sys.argv[1]), int(sys.argv[2]))
