"""The serving core: rows from concurrent requests gathered into shared batches.

Requests put their rows in one bounded queue. A worker thread takes up to ``max_batch_size``
rows at a time — waiting at most ``max_wait_ms`` after the first for company — and runs them
through the pipeline's stages with :class:`~embedflow.engines.chunk.ChunkRunner` (so model
batches are sorted by length and cut by rows or tokens, as offline). Each request gets exactly
its own rows back, in order; a row that fails is reported to its own request only. A full
queue refuses at once (the caller answers 503 with ``Retry-After``).

>>> import asyncio, embedflow as ef
>>> service = Service(ef.dc["text"]([]).map["text", "n"](len).plan, named=True)
>>> asyncio.run(service.submit([{"text": "abc"}])).rows
[{'text': 'abc', 'n': 3}]
>>> service.close()
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Any

from ..engines import FailureLog
from ..engines.chunk import ChunkRunner
from ..engines.devices import bind_device
from ..errors import EmbedflowError
from ..plan import ModelStage, PhysicalPlan, Plan, lower
from .metrics import Metrics


class QueueFull(EmbedflowError):
    """The queue holds too many rows; ``retry_after`` estimates when there is room."""

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after


@dataclass
class Result:
    """A request's answer: one entry per input row (its output row, or None when a filter
    dropped it), the failures by input index, and each row's size (tokens, for text)."""

    rows: list[Any]
    failures: dict[int, dict[str, Any]] = field(default_factory=dict)
    sizes: list[int] = field(default_factory=list)


class _Request:
    def __init__(self, rows: list[Any], first: int, loop: asyncio.AbstractEventLoop):
        self.rows, self.first, self.loop = rows, first, loop
        self.future: asyncio.Future[Result] = loop.create_future()
        self.outputs: list[Any] = [None] * len(rows)
        self.failures: dict[int, dict[str, Any]] = {}
        self.sizes: list[int] = [0] * len(rows)
        self.left = len(rows)
        self.cancelled = False

    def finish(self, error: BaseException | None = None) -> None:
        def settle() -> None:
            if self.future.done():
                return
            if error is not None:
                self.future.set_exception(error)
            else:
                self.future.set_result(Result(self.outputs, self.failures, self.sizes))

        self.loop.call_soon_threadsafe(settle)


class _Log(FailureLog):
    """Failures of one batch, kept by row number for their requests (not logged as warnings)."""

    def __init__(self, key_column: str | None):
        super().__init__(None, key_column)
        self.by_row: dict[int, dict[str, Any]] = {}

    def _record(self, failure: Any) -> None:
        self.count += 1
        self.by_row[failure.row] = failure.__dict__.copy()


def _token_budget(physical: PhysicalPlan, tokens: int | None) -> PhysicalPlan:
    """A shared batch is the only sort window a server has: requests' texts of every length
    arrive together. Cut it by padded tokens too (unless a step sets its own cap), so that a
    long text does not make every short one beside it pay for its padding. Measured with
    MiniLM on 2 cores, 64 clients sending single docstring sentences (wrk): 71 requests/s
    without a cap, 90-115 with a cap of 512 or 1,024 tokens, 64-66 with 2,048 or 4,096."""
    if tokens is None:
        return physical
    stages = tuple(
        replace(s, max_batch_tokens=tokens) if isinstance(s, ModelStage) and s.sorts and s.max_batch_tokens is None else s for s in physical.stages
    )
    return replace(physical, stages=stages)


class Service:
    """Dynamic batching over a plan whose source is the requests (see the module docstring)."""

    def __init__(
        self,
        plan: Plan,
        named: bool,
        *,
        max_batch_size: int = 64,
        max_wait_ms: float = 5.0,
        max_queue: int = 4096,
        max_batch_tokens: int | None = 512,
        device: str | None = None,
    ):
        if device is not None:
            plan = replace(plan, device=device)
        plan = replace(plan, steps=tuple(replace(s, on_error="skip") for s in plan.steps))  # a bad row fails its request only
        self.physical = _token_budget(lower(plan, ordered=True), max_batch_tokens)
        self.runner = ChunkRunner(self.physical)  # models load here, before any request
        self.named = named
        self.max_batch_size, self.max_wait, self.max_queue = max_batch_size, max_wait_ms / 1000, max_queue
        self.metrics = Metrics()
        self._pending: deque[tuple[_Request, int]] = deque()
        self._cond = threading.Condition()
        self._next = 0
        self._rate = 100.0  # rows/s, for Retry-After
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="embedflow-serve", daemon=True)
        self._thread.start()

    # ---- the caller's side ------------------------------------------------------------------
    async def submit(self, rows: list[Any], timeout: float | None = None) -> Result:
        """Queue ``rows`` and wait for their results (raises QueueFull, or TimeoutError)."""
        loop = asyncio.get_running_loop()
        with self._cond:
            if len(self._pending) + len(rows) > self.max_queue:
                retry = max(1, round((len(self._pending) + len(rows)) / max(self._rate, 1.0)))
                msg = f"the queue holds {len(self._pending)} rows (at most {self.max_queue}); try again in {retry}s"
                raise QueueFull(msg, retry)
            request = _Request(rows, self._next, loop)
            self._next += len(rows)  # each row its own number: results find their request
            self._pending.extend((request, i) for i in range(len(rows)))
            self.metrics.queue_rows.set(len(self._pending))
            self._cond.notify()
        try:
            return await asyncio.wait_for(asyncio.shield(request.future), timeout)
        except (asyncio.TimeoutError, asyncio.CancelledError):
            self._cancel(request)
            raise

    def _cancel(self, request: _Request) -> None:
        with self._cond:
            request.cancelled = True
            self._pending = deque(entry for entry in self._pending if entry[0] is not request)
            self.metrics.queue_rows.set(len(self._pending))

    def queued(self) -> int:
        return len(self._pending)

    def close(self) -> None:
        """Stop the worker once the queue is empty, and release the operators' threads."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join()
        self.runner.close()

    # ---- the worker's side ------------------------------------------------------------------
    def _take(self) -> list[tuple[_Request, int]]:
        with self._cond:
            while not self._pending and not self._stopping:
                self._cond.wait()
            deadline = time.monotonic() + self.max_wait
            while len(self._pending) < self.max_batch_size and not self._stopping:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            batch = [self._pending.popleft() for _ in range(min(self.max_batch_size, len(self._pending)))]
            self.metrics.queue_rows.set(len(self._pending))
            return batch

    def _loop(self) -> None:
        for replica in list(self.runner.replicas.values())[:1]:
            bind_device(replica.device)  # this thread's current CUDA device: the first model's
        while True:
            batch = self._take()
            if not batch:
                if self._stopping:
                    return
                continue
            self._run(batch)

    def _run(self, batch: list[tuple[_Request, int]]) -> None:
        numbers = [request.first + i for request, i in batch]
        rows = [request.rows[i] for request, i in batch]
        log, sizes = _Log(self.physical.key_column), dict[int, int]()
        start = time.perf_counter()
        try:
            out_numbers, out_rows = self.runner.run(numbers, rows, log, sizes)
        except BaseException as exc:  # noqa: BLE001 - a fatal error fails this batch's requests, not the server
            for request in {id(r): r for r, _ in batch}.values():
                request.finish(exc)
            return
        seconds = time.perf_counter() - start
        self._rate = 0.8 * self._rate + 0.2 * (len(batch) / max(seconds, 1e-6))
        self.metrics.batch(len(batch), seconds)
        outputs: dict[int, list[Any]] = {}
        for number, row in zip(out_numbers, out_rows):
            outputs.setdefault(number, []).append(row)
        for (request, i), number in zip(batch, numbers):
            found = outputs.get(number)
            request.outputs[i] = None if not found else found[0] if len(found) == 1 else found
            request.sizes[i] = sizes.get(number, 0)
            if number in log.by_row:
                request.failures[i] = log.by_row[number]
            request.left -= 1
            if request.left == 0 and not request.cancelled:
                request.finish()
