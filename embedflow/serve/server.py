"""Running the HTTP server: models loaded first, then uvicorn listens; SIGTERM and Ctrl-C
drain the requests in flight before it exits.

>>> require_extra() is None  # fastapi, uvicorn and prometheus-client are installed here
True
"""

from __future__ import annotations

import contextlib
import math
import signal
import socket
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import PlanError, UsageError
from .app import Limits, create_app
from .protocol import Shape
from .service import Service

INSTALL_HINT = "serving needs the serve extra, which is not installed: pip install 'embedflow[serve]'"


def require_extra() -> None:
    """Fail with the install command when the serve extra is missing."""
    try:
        import fastapi  # noqa: F401
        import prometheus_client  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise PlanError(INSTALL_HINT) from exc


def serve(
    dc: Any,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    name: str | None = None,
    outputs: tuple[str, ...] | None = None,
    device: str | None = None,
    max_batch_size: int = 64,
    max_wait_ms: float = 5.0,
    max_batch_tokens: int | None = 512,
    max_queue: int = 4096,
    limits: Limits | None = None,
    files_root: str | Path | None = None,
    model: str | None = None,
    log_level: str = "warning",
) -> None:
    """Serve the collection ``dc`` (its source is replaced by the requests' rows) until SIGTERM
    or Ctrl-C. ``port=0`` picks a free port; the address is printed on stderr. The options and
    the address are checked before any model loads."""
    require_extra()
    limits = limits or Limits()
    check_options(
        max_batch_size=max_batch_size,
        max_wait_ms=max_wait_ms,
        max_batch_tokens=max_batch_tokens,
        max_queue=max_queue,
        max_items=limits.max_items,
        max_bytes=limits.max_bytes,
        timeout=limits.timeout,
    )
    check_address(host, port)
    import uvicorn

    shape = Shape.of(dc, name or "pipeline", outputs)
    root = Path(files_root).resolve() if files_root is not None else None
    service = Service(
        dc.plan,
        dc.named,
        max_batch_size=max_batch_size,
        max_wait_ms=max_wait_ms,
        max_queue=max_queue,
        max_batch_tokens=max_batch_tokens,
        device=device,
    )
    try:
        app = create_app(service, shape, limits, root, model)
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)  # connections wait in the backlog from now on, not refused while uvicorn starts
        bound = sock.getsockname()[1]
        print(f"embedflow: serving {shape.name} on http://{host}:{bound} (docs at /docs)", file=sys.stderr, flush=True)
        config = uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=30, access_log=False)
        with _drained_signals():
            uvicorn.Server(config).run(sockets=[sock])
    finally:
        service.close()


# option: (the least it may be, what it means); timeout and max_wait_ms are seconds/ms, the rest counts
_LEAST = {
    "max_batch_size": (1, "rows per shared batch"),
    "max_wait_ms": (0, "milliseconds a row waits for company"),
    "max_batch_tokens": (1, "padded tokens per model batch (None or 0 on the command line: no cap)"),
    "max_queue": (1, "rows that may wait"),
    "max_items": (1, "items per request"),
    "max_bytes": (1, "bytes per request"),
}


def check_options(**options: Any) -> None:
    """Fail, naming the option, its value and what it may be, before anything loads: a server
    with ``max_batch_size=0`` would never answer, one with ``timeout=-1`` answer every request 504.

    >>> check_options(max_batch_size=0)
    Traceback (most recent call last):
    ...
    embedflow.errors.UsageError: max_batch_size=0 (--max-batch-size): rows per shared batch must be at least 1. Fix: pass a number >= 1
    """
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        if name == "timeout":
            if not (value > 0 and math.isfinite(value)):
                raise UsageError(f"timeout={value!r} (--timeout): the seconds a request may take must be a positive number. Fix: pass e.g. 60")
            continue
        if value is None and name == "max_batch_tokens":
            continue
        least, meaning = _LEAST[name]
        if not (value >= least and math.isfinite(value)):
            raise UsageError(f"{name}={value!r} ({flag}): {meaning} must be at least {least}. Fix: pass a number >= {least}")


def check_address(host: str, port: int) -> None:
    """Fail before any model loads when the server could not listen at ``host:port`` (a port
    out of range, an address in use or not on this machine)."""
    if not 0 <= port <= 65535:
        raise UsageError(f"port={port} (--port): a port is 0 to 65535 (0 picks a free one). Fix: pass e.g. --port 8000")
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as exc:
        msg = f"cannot listen on {host}:{port}: {exc.strerror or exc}. Fix: choose another --port (0 picks a free one) or --host"
        raise UsageError(msg) from exc


@contextlib.contextmanager
def _drained_signals() -> Iterator[None]:
    """uvicorn catches SIGTERM and Ctrl-C, drains the requests in flight, then raises the signal
    again; handled here as the end of a clean shutdown, so the process exits 0."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    wanted = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.getsignal(sig) for sig in wanted}
    for sig in wanted:
        signal.signal(sig, lambda *_: None)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
