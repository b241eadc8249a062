"""Threads, bounded channels and failure handling for the local engine's stages.

A run is a line of stages, each in its own thread, joined by bounded :class:`Channel`\\ s
(backpressure: a fast stage waits for a slow one instead of filling memory). The first
exception in any stage cancels the run: every stage notices within ``POLL`` seconds, the
caller gets the original exception, and :meth:`Run.close` joins every thread it started.

>>> run = Run()
>>> ch = run.channel("numbers", 2)
>>> _ = run.start("produce", lambda: [ch.put(i) for i in range(3)] and ch.finish())
>>> list(run.drain(ch))
[0, 1, 2]
>>> run.close()
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from ..stats import RunStats, StageStats

POLL = 0.05  # seconds between checks of the cancel flag while blocked


class _End:
    def __repr__(self) -> str:
        return "END"


END = _End()


class Cancelled(Exception):
    """Internal: the run was cancelled (an error elsewhere, or the consumer stopped)."""


class Channel:
    """A bounded queue between two stages that never blocks past a cancelled run."""

    def __init__(self, run: Run, name: str, size: int):
        self.run = run
        self.name = name
        self._q: queue.Queue[Any] = queue.Queue(maxsize=max(1, size))
        self.closed = threading.Event()  # the consumer stopped reading (e.g. head() is done)

    def put(self, item: Any, stats: StageStats | None = None) -> bool:
        """Send ``item``; False when the consumer is gone. Raises Cancelled when the run is."""
        start = time.perf_counter()
        try:
            while True:
                if self.run.cancelled.is_set():
                    raise Cancelled
                if self.closed.is_set():
                    return False
                try:
                    self._q.put(item, timeout=POLL)
                    return True
                except queue.Full:
                    continue
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
            while True:
                if self.run.cancelled.is_set():
                    raise Cancelled
                try:
                    return self._q.get(timeout=POLL)
                except queue.Empty:
                    continue
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
        self.closed.set()


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

    def channel(self, name: str, size: int) -> Channel:
        return Channel(self, name, size)

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
        self.cancelled.set()

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
        self.cancelled.set()
        for thread in self.threads:
            thread.join()
        for cleanup in self.cleanups:
            cleanup()
        self.cleanups.clear()
        self.stats.wall = time.perf_counter() - self._started
