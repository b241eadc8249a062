"""Threads, bounded channels and failure handling for the local engine's stages.

A run is a line of stages, each in its own thread, joined by bounded :class:`Channel`\\ s
(backpressure: a fast stage waits for a slow one instead of filling memory). The first
exception in any stage cancels the run: every stage blocked on a channel is woken, the
caller gets the original exception, and :meth:`Run.close` joins every thread it started.

>>> run = Run()
>>> ch = run.channel("numbers", 2)
>>> _ = run.start("produce", lambda: [ch.put(i) for i in range(3)] and ch.finish())
>>> list(run.drain(ch))
[0, 1, 2]
>>> run.close()
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ..stats import RunStats, StageStats

BACKSTOP = 5.0  # seconds a blocked thread waits before it looks again without being woken


class _End:
    def __repr__(self) -> str:
        return "END"


END = _End()


class Cancelled(Exception):
    """Internal: the run was cancelled (an error elsewhere, or the consumer stopped)."""


class Channel:
    """A bounded queue between two stages that never blocks past a cancelled run: a blocked
    thread is woken when the run is cancelled or the consumer closes the channel (no polling —
    waking every 50 ms to look cost the text chain's idle threads ~0.3 µs of CPU per text,
    measured with benchmarks/bench_host.py's chain)."""

    def __init__(self, run: Run, name: str, size: int):
        self.run = run
        self.name = name
        self.size = max(1, size)
        self._items: deque[Any] = deque()
        lock = threading.Lock()
        self._not_empty = threading.Condition(lock)
        self._not_full = threading.Condition(lock)
        self.closed = False  # the consumer stopped reading (e.g. head() is done)
        run.channels.append(self)

    def put(self, item: Any, stats: StageStats | None = None) -> bool:
        """Send ``item``; False when the consumer is gone. Raises Cancelled when the run is."""
        start = time.perf_counter()
        try:
            with self._not_full:
                while True:
                    if self.run.cancelled.is_set():
                        raise Cancelled
                    if self.closed:
                        return False
                    if len(self._items) < self.size:
                        self._items.append(item)
                        self._not_empty.notify()
                        return True
                    self._not_full.wait(BACKSTOP)
        finally:
            if stats is not None:
                stats.wait_out += time.perf_counter() - start

    def finish(self) -> None:
        """Send the end-of-stream marker."""
        self.put(END)

    def get(self, stats: StageStats | None = None) -> Any:
        """The next item, or END. Raises Cancelled when the run is."""
        start = time.perf_counter()
        try:
            with self._not_empty:
                while True:
                    if self.run.cancelled.is_set():
                        raise Cancelled
                    if self._items:
                        item = self._items.popleft()
                        self._not_full.notify()
                        return item
                    self._not_empty.wait(BACKSTOP)
        finally:
            if stats is not None:
                stats.wait_in += time.perf_counter() - start

    def __iter__(self) -> Iterator[Any]:
        while True:
            item = self.get()
            if item is END:
                return
            yield item

    def close(self) -> None:
        """The consumer is done: producers stop sending and may stop working."""
        with self._not_full:
            self.closed = True
            self._not_full.notify_all()

    def wake(self) -> None:
        """Wake every thread blocked on this channel (the run was cancelled)."""
        with self._not_full:
            self._not_full.notify_all()
            self._not_empty.notify_all()


class SourceInbox:
    """The source's chunks read by the first stage's own thread, with a channel's ``get`` and
    ``close``: one thread hand-off less per chunk than a source thread feeding a channel."""

    def __init__(self, run: Run, chunks: Iterator[Any]):
        self.run, self.chunks = run, chunks

    def get(self, stats: StageStats | None = None) -> Any:
        """The next chunk, or END (the time reading it is the stage's wait for input)."""
        if self.run.cancelled.is_set():
            raise Cancelled
        start = time.perf_counter()
        chunk = next(self.chunks, END)
        if stats is not None:
            stats.wait_in += time.perf_counter() - start
        return chunk

    def close(self) -> None:
        """The stage is done with the source: its reader is closed at once."""
        self.chunks.close()  # type: ignore[attr-defined]


class Run:
    """One execution: its threads, channels, first error and statistics."""

    def __init__(self) -> None:
        self.cancelled = threading.Event()
        self.error: BaseException | None = None
        self.threads: list[threading.Thread] = []
        self.stats = RunStats()
        self._lock = threading.Lock()
        self._started = time.perf_counter()
        self.cleanups: list[Callable[[], None]] = []
        self.replicas: list[Any] = []  # the model replicas of the run (asked for their notes at the end)
        self.channels: list[Channel] = []

    def channel(self, name: str, size: int) -> Channel:
        return Channel(self, name, size)

    def thread_pool(self, workers: int, name: str) -> ThreadPoolExecutor:
        """``workers`` threads preparing a step's items (its ``workers=``), shut down when the
        run closes: the pool of a per-item stage and of a model stage's preprocessing."""
        pool = ThreadPoolExecutor(workers, thread_name_prefix=f"embedflow-{name}")
        self.cleanups.append(lambda: pool.shutdown(wait=True, cancel_futures=True))
        return pool

    def stage_stats(self, name: str) -> StageStats:
        stats = StageStats(name)
        self.stats.stages.append(stats)
        return stats

    def mark_started(self) -> None:
        """Start the wall clock now (after models were set up)."""
        self._started = time.perf_counter()

    def fail(self, exc: BaseException) -> None:
        """Record the first error and cancel every stage."""
        with self._lock:
            if self.error is None:
                self.error = exc
        self.cancel()

    def cancel(self) -> None:
        """Stop every stage: the threads blocked on a channel are woken to notice."""
        self.cancelled.set()
        for channel in list(self.channels):
            channel.wake()

    def start(self, name: str, target: Callable[[], Any]) -> threading.Thread:
        """Run ``target`` in a new thread; an exception in it fails the run."""

        def body() -> None:
            try:
                target()
            except Cancelled:
                pass
            except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
                self.fail(exc)

        thread = threading.Thread(target=body, name=f"embedflow-{name}", daemon=True)
        self.threads.append(thread)
        thread.start()
        return thread

    def drain(self, channel: Channel) -> Iterator[Any]:
        """Yield what ``channel`` carries until END; re-raise a stage's error here."""
        while True:
            try:
                item = channel.get()
            except Cancelled:
                break
            if item is END:
                break
            yield item
        if self.error is not None:
            raise self.error

    def close(self) -> None:
        """Cancel whatever still runs and wait for every thread to end."""
        self.cancel()
        for thread in self.threads:
            thread.join()
        for cleanup in self.cleanups:
            cleanup()
        self.cleanups.clear()
        self.stats.wall = time.perf_counter() - self._started
