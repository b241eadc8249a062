"""What goes over the wire: request bodies checked and turned into rows, results turned into
JSON. Every mistake is a :class:`BadRequest` with a status and the message a user needs.

>>> import embedflow as ef
>>> shape = Shape.of(ef.dc["text"]([]).map["text", "vec"](len), name="demo")
>>> embedding_rows({"input": ["a", "b"]}, shape, max_items=10)
[{'text': 'a'}, {'text': 'b'}]
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import EmbedflowError
from ..operator import is_operator_class
from ..plan import Apply, operator_class


class BadRequest(EmbedflowError):
    """A request the server refuses: ``status`` (4xx), for one item its ``index``, and an
    OpenAI-style ``code`` where one applies (``model_not_found``)."""

    def __init__(self, message: str, status: int = 400, index: int | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.index, self.code = status, index, code


@dataclass(frozen=True)
class Shape:
    """What the server knows of its pipeline: the columns a request row has, which of them an
    operator opens as files, the columns it answers with, and its embedding / search form."""

    name: str
    named: bool
    inputs: tuple[str, ...] | None  # request row columns (None: whatever the rows have)
    files: frozenset[str]  # input columns an operator opens as a path
    outputs: tuple[str, ...] | None  # response row columns (None: all)
    text_input: str | None  # /v1/embeddings: the text column ...
    vector_output: str | None  # ... and the vector column
    search: str | None  # "text" or "image" when the last step searches (the page)
    models: tuple[str, ...] = ()  # the model_name of each operator step (GET /v1/models)

    @classmethod
    def of(cls, dc: Any, name: str, outputs: tuple[str, ...] | None = None) -> Shape:
        """The shape of a DataCollection whose source the requests replace."""
        plan = dc.plan
        inputs = plan.source.columns if dc.named else None
        files: set[str] = set()
        produced: set[str] = set()
        applies = [s for s in plan.steps if isinstance(s, Apply)]
        for step in applies:
            cls_ = operator_class(step)
            if is_operator_class(cls_) and cls_.opens_files(step.params):
                files.update(c for c in step.inputs or () if c not in produced)
            produced.update(step.outputs or step.inputs or ())
        last = applies[-1] if applies else None
        one_text = inputs is not None and len(inputs) == 1 and not files
        vector = last.outputs[0] if last is not None and last.outputs and len(last.outputs) == 1 else None
        searches = last is not None and last.name in ("milvus_search", "nearest")
        search = ("image" if files else "text") if searches else None
        return cls(
            name,
            dc.named,
            inputs,
            frozenset(files),
            outputs,
            inputs[0] if inputs and one_text and not searches else None,
            vector if one_text and not searches else None,
            search,
            tuple(dict.fromkeys(str(s.params["model_name"]) for s in applies if isinstance(s.params.get("model_name"), (str, Path)))),
        )


# --------------------------------------------------------------------------- requests
def parse_json(body: bytes) -> Any:
    if not body:
        raise BadRequest("the request has no body; send JSON")
    try:
        return json.loads(body)
    except RecursionError:
        raise BadRequest("the JSON is nested too deeply; send rows of plain values") from None
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError, or a number of thousands of digits
        msg = f"malformed JSON: {exc}" if isinstance(exc, (json.JSONDecodeError, UnicodeDecodeError)) else f"a value in the JSON is not usable: {exc}"
        raise BadRequest(msg) from None


def _count(items: list[Any], max_items: int, what: str) -> None:
    if not items:
        msg = f"{what} is empty; send at least one item"
        raise BadRequest(msg)
    if len(items) > max_items:
        msg = f"{what} has {len(items)} items; at most {max_items} per request (the server's --max-items)"
        raise BadRequest(msg, status=413)


def embedding_rows(payload: Any, shape: Shape, max_items: int) -> list[dict[str, Any]]:
    """Rows for ``POST /v1/embeddings``: ``input`` is a string or a list of strings."""
    if shape.text_input is None or shape.vector_output is None:
        msg = f"the pipeline {shape.name!r} does not map one text to one vector; use POST /run"
        raise BadRequest(msg)
    if not isinstance(payload, dict) or "input" not in payload:
        raise BadRequest('the body must be an object with "input": a string or a list of strings')
    texts = payload["input"]
    texts = [texts] if isinstance(texts, str) else texts
    if not isinstance(texts, list):
        msg = f'"input" must be a string or a list of strings, got {type(texts).__name__}'
        raise BadRequest(msg)
    _count(texts, max_items, '"input"')
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            msg = f'"input"[{i}] must be a string, got {type(text).__name__} (token arrays are not accepted)'
            raise BadRequest(msg, index=i)
    if payload.get("encoding_format", "float") not in ("float", "base64"):
        msg = f'"encoding_format" must be "float" or "base64", got {payload.get("encoding_format")!r}'
        raise BadRequest(msg)
    return [{shape.text_input: t} for t in texts]


def under_root(root: Path, relative: str) -> Path | None:
    """``root / relative`` with every symlink resolved, when that lies inside ``root`` (itself
    resolved); None when it lies elsewhere — ``..``, an absolute path, a symlink out, or a
    sibling folder whose name starts with the root's (``files-secret`` beside ``files``) — or
    names no path at all (a NUL byte). The one check of ``--files-root``: ``/run``'s paths and
    the ``/files/`` pages both ask here.

    >>> import tempfile
    >>> root = Path(tempfile.mkdtemp())
    >>> under_root(root, "a/b.jpg") == root.resolve() / "a" / "b.jpg", under_root(root, "../x"), under_root(root, "/etc/passwd")
    (True, None, None)
    """
    if "\0" in relative:
        return None
    root = Path(os.path.realpath(root))
    path = Path(os.path.realpath(root / relative))
    return path if root in path.parents else None


def file_value(value: Any, index: int, column: str, files_root: Path | None) -> Any:
    """A value of a column an operator opens: ``{"base64": ...}`` becomes bytes; a string is a
    path, accepted only under the server's files root."""
    if isinstance(value, dict) and set(value) == {"base64"} and isinstance(value["base64"], str):
        try:
            return base64.b64decode(value["base64"], validate=True)
        except (binascii.Error, ValueError) as exc:
            msg = f"rows[{index}].{column}: not valid base64 ({exc})"
            raise BadRequest(msg, index=index) from None
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if not isinstance(value, str):
        msg = f'rows[{index}].{column}: send a file as {{"base64": "..."}} or as a multipart upload'
        raise BadRequest(msg, index=index)
    if "\0" in value:
        msg = f"rows[{index}].{column}: {value[:60]!r} holds a NUL byte, which no path has"
        raise BadRequest(msg, index=index)
    if files_root is None:
        msg = f"rows[{index}].{column}: the server reads no paths (start it with --files-root DIR); upload the file instead"
        raise BadRequest(msg, status=403, index=index)
    path = under_root(files_root, value)
    if path is None:
        msg = f"rows[{index}].{column}: {value!r} is outside the server's files root"
        raise BadRequest(msg, status=403, index=index)
    return str(path)


def run_rows(payload: Any, shape: Shape, max_items: int, files_root: Path | None) -> list[Any]:
    """Rows for ``POST /run``: ``{"rows": [...]}``, each row an object of the pipeline's input
    columns (a plain value for an unnamed pipeline)."""
    if not isinstance(payload, dict) or not isinstance(payload.get("rows"), list):
        cols = ", ".join(shape.inputs or ()) or "your columns"
        msg = f'the body must be an object with "rows": a list of rows, each an object with {cols}'
        raise BadRequest(msg)
    rows = payload["rows"]
    _count(rows, max_items, '"rows"')
    if not shape.named:
        return rows
    out = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            msg = f"rows[{i}] must be an object with {', '.join(shape.inputs or ())}, got {type(row).__name__}"
            raise BadRequest(msg, index=i)
        missing = [c for c in shape.inputs or () if c not in row]
        if missing:
            msg = f"rows[{i}] has no {missing[0]!r}; each row needs {', '.join(shape.inputs or ())}"
            raise BadRequest(msg, index=i)
        if shape.inputs is not None:
            row = {c: row[c] for c in shape.inputs}
        out.append({k: file_value(v, i, k, files_root) if k in shape.files else v for k, v in row.items()})
    return out


# --------------------------------------------------------------------------- responses
def plain(value: Any) -> Any:
    """A result value as JSON: arrays become lists; file contents and images are not sent back."""
    import numpy as np

    if isinstance(value, (bytes, bytearray)):
        return None  # an upload is not echoed
    if type(value).__name__ == "Tensor":
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        if value.dtype == np.uint8 and value.ndim == 3:
            return None  # a decoded image: megabytes of no use to the client
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def response_row(row: Any, shape: Shape) -> Any:
    if not shape.named or not isinstance(row, dict):
        return plain(row)
    keep = shape.outputs or tuple(row)
    return {k: plain(row[k]) for k in keep if k in row}


def item_failure(failures: dict[int, dict[str, Any]]) -> BadRequest:
    """The error for a request whose items failed: the first one, by its index."""
    index = min(failures)
    record = failures[index]
    message = record["message"] if record["step"] in ("read_text", "read_jsonl") else f"{record['step']}: {record['error_type']}: {record['message']}"
    return BadRequest(f"item {index}: {message}", status=422, index=index)


def encode_vector(vector: Any, encoding: str) -> Any:
    import numpy as np

    arr = np.asarray(plain(vector), dtype=np.float32).ravel()
    if encoding == "base64":
        return base64.b64encode(arr.astype("<f4").tobytes()).decode()
    return arr.tolist()
