"""Tokenization in worker processes: beyond the GIL.

A fast (Rust) tokenizer releases the GIL while it encodes, but turning its encodings into Python
lists does not, so threads of one process stop near 15,000 texts/s however many cores there
are. A :class:`TokenizerPool` runs the tokenizer in plain worker processes (``python -m``, not
``multiprocessing``: a user's script without an ``if __name__ == "__main__"`` guard is never
imported again) that answer with packed numpy arrays — the parent only slices them.

Any thread may call :meth:`TokenizerPool.encode`; each call takes an idle worker. A worker that
dies is replaced and the call raises :class:`TokenizerWorkerError` (the caller falls back to
tokenizing in-process). Workers exit when the pool is closed, collected, or the parent exits
(their input pipe closes).

>>> from tokenizers import Tokenizer, models, pre_tokenizers
>>> tok = Tokenizer(models.WordLevel({"[UNK]": 0, "a": 1, "b": 2}, unk_token="[UNK]"))
>>> tok.pre_tokenizer = pre_tokenizers.Whitespace()
>>> with TokenizerPool(tok.to_str(), processes=1) as pool:
...     packed = pool.encode(["a b", "b"])
>>> [ids.tolist() for ids, _types in packed.items()], packed.truncated
([[1, 2], [2]], 0)
"""

from __future__ import annotations

import itertools
import os
import pickle
import queue
import subprocess
import sys
import threading
import weakref
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import numpy as np


class TokenizerWorkerError(RuntimeError):
    """A tokenizer worker process failed or exited."""


@dataclass
class Packed:
    """The encodings of several texts in three flat arrays."""

    ids: np.ndarray  # every text's token ids, one after the other (int32)
    types: np.ndarray | None  # their token type ids, when the model takes them (int8)
    lengths: np.ndarray  # tokens per text (int64)
    truncated: int  # texts cut to the length limit

    def items(self) -> list[tuple[np.ndarray, np.ndarray | None]]:
        """``(ids, types)`` per text: views into the flat arrays, no copies."""
        ends = np.cumsum(self.lengths).tolist()
        starts = [0, *ends[:-1]]
        ids, types = self.ids, self.types
        if types is None:
            return [(ids[s:e], None) for s, e in zip(starts, ends)]
        return [(ids[s:e], types[s:e]) for s, e in zip(starts, ends)]


def pack(tokenizer: Any, texts: list[str], with_types: bool) -> Packed:
    """Encode ``texts`` with a ``tokenizers.Tokenizer`` (truncation set, no padding) into a :class:`Packed`."""
    encodings = tokenizer.encode_batch(texts)
    lengths = np.fromiter((len(e.ids) for e in encodings), np.int64, len(encodings))
    total = int(lengths.sum())
    ids = np.fromiter(itertools.chain.from_iterable(e.ids for e in encodings), np.int32, total)
    types = np.fromiter(itertools.chain.from_iterable(e.type_ids for e in encodings), np.int8, total) if with_types else None
    return Packed(ids, types, lengths, sum(1 for e in encodings if e.overflowing))


class _Worker:
    def __init__(self, setup: bytes):
        env = dict(os.environ, TOKENIZERS_PARALLELISM="false")  # one core per worker: the pool is the parallelism
        read_in, write_in = os.pipe()
        read_out, write_out = os.pipe()
        self.process = subprocess.Popen(  # our own module, no shell
            [sys.executable, "-m", __name__, str(read_in), str(write_out)],
            pass_fds=(read_in, write_out),
            stdin=subprocess.DEVNULL,
            env=env,
        )
        os.close(read_in)
        os.close(write_out)
        self.send, self.recv = Connection(write_in, readable=False), Connection(read_out, writable=False)
        self.send.send_bytes(setup)

    def encode(self, texts: list[str]) -> Packed:
        self.send.send_bytes(pickle.dumps(texts, protocol=5))
        ok, value = pickle.loads(self.recv.recv_bytes())  # our own worker's answer: trusted
        if not ok:
            raise TokenizerWorkerError(value)
        return Packed(*value)

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


class TokenizerPool:
    """``processes`` worker processes holding the tokenizer ``tokenizer_json`` (its
    ``to_str()``, with truncation already set); :meth:`encode` from any thread."""

    def __init__(self, tokenizer_json: str, processes: int, with_types: bool = False):
        if processes < 1:
            msg = f"TokenizerPool: processes={processes!r} must be at least 1"
            raise ValueError(msg)
        self._setup = pickle.dumps((tokenizer_json, with_types), protocol=5)
        self._workers = [_Worker(self._setup) for _ in range(processes)]
        self._idle: queue.SimpleQueue[_Worker] = queue.SimpleQueue()
        for worker in self._workers:
            self._idle.put(worker)
        self._lock = threading.Lock()
        self.processes = processes
        self._finalizer = weakref.finalize(self, _close_all, self._workers)

    def encode(self, texts: list[str]) -> Packed:
        """The packed encodings of ``texts``, computed by an idle worker."""
        worker = self._idle.get()
        try:
            return worker.encode(texts)
        except (EOFError, OSError) as exc:
            worker = self._replace(worker)
            msg = f"a tokenizer worker process exited ({type(exc).__name__}); it was restarted"
            raise TokenizerWorkerError(msg) from exc
        finally:
            self._idle.put(worker)

    def _replace(self, dead: _Worker) -> _Worker:
        dead.close(timeout=0.1)
        with self._lock:
            fresh = _Worker(self._setup)
            self._workers[self._workers.index(dead)] = fresh
            return fresh

    def close(self) -> None:
        """Stop the workers (also done when the pool is collected or the program exits)."""
        self._finalizer()

    def __enter__(self) -> TokenizerPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _serve(read_fd: int, write_fd: int) -> None:
    """A worker's loop: the tokenizer first, then lists of texts until the pipe closes."""
    from tokenizers import Tokenizer

    requests, answers = Connection(read_fd, writable=False), Connection(write_fd, readable=False)
    try:
        tokenizer_json, with_types = pickle.loads(requests.recv_bytes())  # from our parent: trusted
        tokenizer = Tokenizer.from_str(tokenizer_json)
        while True:
            texts = pickle.loads(requests.recv_bytes())
            try:
                packed = pack(tokenizer, texts, with_types)
                answer: tuple[bool, Any] = (True, (packed.ids, packed.types, packed.lengths, packed.truncated))
            except Exception as exc:  # noqa: BLE001 - the parent names the bad text, item by item
                answer = (False, f"{type(exc).__name__}: {exc}")
            answers.send_bytes(pickle.dumps(answer, protocol=5))
    except (EOFError, OSError, KeyboardInterrupt):
        return


if __name__ == "__main__":
    _serve(int(sys.argv[1]), int(sys.argv[2]))
