"""Running the HTTP server: models loaded first, then uvicorn listens; SIGTERM and Ctrl-C
drain the requests in flight before it exits.

>>> require_extra() is None  # fastapi, uvicorn and prometheus-client are installed here
True
"""

from __future__ import annotations

import contextlib
import signal
import socket
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import PlanError
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
    or Ctrl-C. ``port=0`` picks a free port; the address is printed on stderr."""
    require_extra()
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
