"""The HTTP API of a served pipeline (FastAPI, from the ``serve`` extra).

* ``POST /v1/embeddings`` — OpenAI-compatible, for pipelines that map one text to one vector;
  ``GET /v1/models`` lists what it serves: the pipeline's name and its steps' model names. A
  request's ``model`` may be any of them or left out; another name is a 404 ``model_not_found``
  (as OpenAI answers), never silently the wrong vectors;
* ``POST /run`` — any pipeline: JSON rows in, JSON rows out (files as ``{"base64": ...}``, a
  multipart upload, or a path under ``--files-root``);
* ``GET /health``, ``GET /metrics`` (Prometheus), ``GET /docs`` (the API's own page), and for a
  search pipeline ``GET /`` — a page to try it (``GET /files/...`` serves thumbnails from the
  files root).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .page import page
from .protocol import BadRequest, Shape, embedding_rows, encode_vector, item_failure, parse_json, response_row, run_rows, under_root
from .service import QueueFull, Service

logger = logging.getLogger(__name__)

try:  # the serve extra; FastAPI finds the Request parameter by this annotation
    from fastapi import Request
except ImportError:  # pragma: no cover - serve() says how to install it
    Request = Any  # type: ignore[misc,assignment]


@dataclass(frozen=True)
class Limits:
    """What one request may ask for."""

    max_items: int = 2048
    max_bytes: int = 32 << 20
    timeout: float = 60.0


def _error(message: str, status: int, index: int | None = None, headers: dict[str, str] | None = None, code: str | None = None) -> Any:
    from fastapi.responses import JSONResponse

    kind = {
        400: "invalid_request_error",
        403: "permission_error",
        404: "invalid_request_error",
        413: "request_too_large",
        422: "invalid_item",
        503: "overloaded",
        504: "timeout",
    }.get(status, "server_error")
    body: dict[str, Any] = {"message": message, "type": kind}
    if code is not None:
        body["code"] = code
    if index is not None:
        body["index"] = index
    return JSONResponse({"error": body}, status_code=status, headers=headers)


async def _body(request: Any, limits: Limits) -> bytes:
    """The request's body, counted as it arrives whatever its encoding (a declared length, or
    ``Transfer-Encoding: chunked``): past ``--max-bytes`` it is a 413 without reading on."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limits.max_bytes:
        msg = f"the request has {declared} bytes; at most {limits.max_bytes} (the server's --max-bytes)"
        raise BadRequest(msg, status=413)
    parts, size = [], 0
    async for part in request.stream():
        size += len(part)
        if size > limits.max_bytes:
            msg = f"the request is larger than {limits.max_bytes} bytes (the server's --max-bytes)"
            raise BadRequest(msg, status=413)
        parts.append(part)
    return b"".join(parts)


def _answering(service: Service, limits: Limits) -> Any:
    """``answer(endpoint, work)``: the response of ``work()``, or the error response of what
    it raised, counted in ``/metrics`` under the status really sent. A client that went away
    gets nothing (499 in the metrics); an unexpected error is a 500 with one logged line."""
    from starlette.requests import ClientDisconnect

    async def answer(endpoint: str, work: Any) -> Any:
        start, code = time.perf_counter(), 200
        try:
            return await work()
        except BadRequest as exc:
            code = exc.status
            return _error(str(exc), exc.status, exc.index, code=exc.code)
        except QueueFull as exc:
            code = 503
            return _error(str(exc), 503, headers={"Retry-After": str(exc.retry_after)})
        except (asyncio.TimeoutError, TimeoutError):
            code = 504
            return _error(f"the request took longer than {limits.timeout:g}s (the server's --timeout)", 504)
        except ClientDisconnect:
            code = 499  # nginx's "client closed request": nobody is left to answer
            return _error("the client closed the connection", 499)
        except Exception as exc:
            code = 500
            logger.exception("%s: %s: %s", endpoint, type(exc).__name__, exc)
            return _error(f"the server failed on this request ({type(exc).__name__}: {exc})", 500)
        finally:
            service.metrics.request(endpoint, code, time.perf_counter() - start)

    return answer


def served_models(shape: Shape, model: str | None = None) -> list[str]:
    """The names ``/v1/models`` lists: the pipeline's name, ``model`` (the name the server was
    told to report) and the model name of each of its steps.

    >>> from embedflow.serve.protocol import Shape
    >>> served_models(Shape("text-embedding", True, ("text",), frozenset(), None, "text", "vec", None, ("all-MiniLM-L6-v2",)))
    ['text-embedding', 'all-MiniLM-L6-v2']
    """
    return list(dict.fromkeys((shape.name, *((model,) if model else ()), *shape.models)))


def create_app(service: Service, shape: Shape, limits: Limits | None = None, files_root: Path | None = None, model: str | None = None) -> Any:
    """The ASGI application serving ``service``."""
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse

    limits = limits or Limits()
    served = served_models(shape, model)
    app = FastAPI(title=f"embedflow: {shape.name}", summary="A pipeline served over HTTP: rows in, rows out.")
    answer = _answering(service, limits)

    async def run(rows: list[Any]) -> Any:
        result = await service.submit(rows, limits.timeout)
        if result.failures:
            raise item_failure(result.failures)
        return result

    @app.post("/v1/embeddings", openapi_extra={"requestBody": {"content": {"application/json": {"schema": EMBEDDINGS_SCHEMA}}}})
    async def embeddings(request: Request) -> Any:
        """OpenAI-compatible embeddings of one text or a list of texts."""

        async def work() -> Any:
            payload = parse_json(await _body(request, limits))
            asked = payload.get("model") if isinstance(payload, dict) else None
            if asked is not None and asked not in served:
                msg = f"model {asked!r} is not served here; this server serves: {', '.join(served)} (GET /v1/models). Fix: send one of those as model, or leave model out"
                raise BadRequest(msg, status=404, code="model_not_found")
            result = await run(embedding_rows(payload, shape, limits.max_items))
            encoding = payload.get("encoding_format", "float")
            data = [
                {"object": "embedding", "index": i, "embedding": encode_vector(row[shape.vector_output], encoding)}
                for i, row in enumerate(result.rows)
            ]
            tokens = sum(result.sizes)
            return JSONResponse(
                {
                    "object": "list",
                    "data": data,
                    "model": asked or model or shape.name,
                    "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
                }
            )

        return await answer("/v1/embeddings", work)

    @app.post("/run", openapi_extra={"requestBody": {"content": {"application/json": {"schema": RUN_SCHEMA}}}})
    async def run_rows_endpoint(request: Request) -> Any:
        """Run the pipeline on rows: ``{"rows": [...]}``, or one row as a multipart form."""

        async def work() -> Any:
            if request.headers.get("content-type", "").startswith("multipart/form-data"):
                payload = await _form_rows(request, limits)
            else:
                payload = parse_json(await _body(request, limits))
            result = await run(run_rows(payload, shape, limits.max_items, files_root))
            return JSONResponse({"rows": [response_row(row, shape) for row in result.rows]})

        return await answer("/run", work)

    _add_models(app, served)
    _add_pages(app, service, shape, files_root)
    return app


def _add_models(app: Any, served: list[str]) -> None:
    """``GET /v1/models`` and ``GET /v1/models/{name}``, as OpenAI answers them."""
    created = int(time.time())

    def card(name: str) -> dict[str, Any]:
        return {"id": name, "object": "model", "created": created, "owned_by": "embedflow"}

    @app.get("/v1/models")
    async def models() -> Any:
        """The OpenAI-style list of the names a request's ``model`` may give."""
        return {"object": "list", "data": [card(name) for name in served]}

    @app.get("/v1/models/{name:path}")
    async def one_model(name: str) -> Any:
        if name not in served:
            return _error(f"model {name!r} is not served here; this server serves: {', '.join(served)}", 404, code="model_not_found")
        return card(name)


def _add_pages(app: Any, service: Service, shape: Shape, files_root: Path | None) -> None:
    """The GET routes: health, metrics, the page, and files for its thumbnails."""
    from fastapi.responses import FileResponse, HTMLResponse, Response

    @app.get("/health")
    async def health() -> Any:
        """Ready: the pipeline's models are loaded (the server listens only then)."""
        return {"status": "ok", "pipeline": shape.name, "queued_rows": service.queued()}

    @app.get("/metrics")
    async def prometheus() -> Any:
        return Response(service.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/", response_class=HTMLResponse)
    async def index() -> Any:
        return HTMLResponse(page(shape, files_root is not None))

    @app.get("/files/{path:path}")
    async def files(path: str) -> Any:
        if files_root is None:
            return _error("the server serves no files (start it with --files-root DIR)", 404)
        target = under_root(files_root, path)
        if target is None or not target.is_file():
            return _error(f"no file {path!r} under the files root", 404)
        return FileResponse(target)


async def _form_rows(request: Any, limits: Limits) -> dict[str, Any]:
    """One row from a multipart form: uploaded files become bytes, other fields strings. The
    body is read (and counted, chunked or not) first; the form is parsed from it."""
    request._body = await _body(request, limits)  # Starlette's cache: form() parses these bytes
    form = await request.form()
    row: dict[str, Any] = {}
    for key, value in form.multi_items():
        row[key] = await value.read() if hasattr(value, "read") else value
    return {"rows": [row]}


EMBEDDINGS_SCHEMA = {
    "type": "object",
    "required": ["input"],
    "properties": {
        "input": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]},
        "model": {"type": "string"},
        "encoding_format": {"type": "string", "enum": ["float", "base64"], "default": "float"},
    },
}
RUN_SCHEMA = {
    "type": "object",
    "required": ["rows"],
    "properties": {
        "rows": {
            "type": "array",
            "items": {"description": 'an object of the input columns; a file as {"base64": "..."} or a path under --files-root'},
        }
    },
}
