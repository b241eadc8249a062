"""YAML pipelines: the same lazy plan as a Python chain, written as a file.

A pipeline file has ``name``, ``description``, ``params`` (defaults, overridable),
``source``, ``steps``, ``sink`` and ``on_error`` (see README). Strings may use ``${param}``.
Only registered operators can appear: a file never brings code. Every mistake is reported
with the file, the line, what is valid and close matches — before any model loads.

>>> import embedflow as ef, tempfile, pathlib
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> _ = (d / "t.txt").write_text("a\\nbb\\n")
>>> _ = (d / "p.yaml").write_text('''
... params: {input: t.txt}
... source: {read_text: "${input}", column: text}
... steps: [{op: normalize, in: text, out: text}]
... ''')
>>> ef.load_pipeline(d / "p.yaml", input=str(d / "t.txt")).explain().splitlines()[1]  # doctest: +ELLIPSIS
"  source  read_text('.../t.txt') -> text"
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from .. import registry
from ..dsl import DataCollection, readers
from ..errors import EmbedflowError, PipelineError, did_you_mean
from ..plan import EXECUTION_OPTIONS, check_device
from ..samples import SAMPLES
from .catalog import resolve
from .sink_spec import SinkSpec
from .yaml_loader import LineDict, load_yaml_file

TOP_KEYS = ("name", "description", "params", "source", "steps", "sink", "on_error", "device")
SOURCE_KINDS = ("read_text", "glob", "read_jsonl", "read_csv", "read_parquet", "items")
SOURCE_OPTIONS = ("column", "columns", "key", "allow_empty")
STEP_KEYS = ("op", "in", "out", "with", *EXECUTION_OPTIONS)
GENERIC_STEPS = ("select", "exclude", "head", "chunk", "group")
SINK_KINDS = ("parquet", "jsonl", "npy", "milvus", "print")
SINK_OPTIONS = ("columns", "column", "collection", "vector", "fields", "metric")
ON_ERROR = ("raise", "skip")
_PARAM = re.compile(r"\$\{([^}]*)\}")


def builtin_params() -> dict[str, str]:
    """Parameters every pipeline file may use without declaring them: ``${samples}``, the
    folder of sample data inside the installed package (what the bundled pipelines read by
    default, so they run from any folder). A file's own ``params`` of the same name win.

    >>> (Path(builtin_params()["samples"]) / "texts" / "sentences.txt").is_file()
    True
    """
    return {"samples": str(SAMPLES)}


_BUILTIN_NAMES = ("samples",)


@dataclass
class Pipeline:
    """A parsed pipeline file: its lazy collection plus what the runner needs."""

    file: str
    name: str
    description: str
    params: dict[str, Any]
    collection: DataCollection
    sink: SinkSpec | None
    on_error: str
    key: str | None  # the column that identifies a row (None: the source row number)
    spec: dict[str, Any] = field(repr=False, default_factory=dict)

    def fingerprint(self) -> str:
        """A hash of everything that shapes the output (not the description)."""
        data = {k: v for k, v in self.spec.items() if k not in ("name", "description")}
        return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- helpers
def _fail(where: str, msg: str) -> PipelineError:
    return PipelineError(f"{where}: {msg}")


def _check_keys(mapping: LineDict, valid: tuple[str, ...], what: str) -> None:
    for key in mapping:
        if key not in valid:
            hint = did_you_mean(str(key), valid)
            raise _fail(mapping.where(key), f"{what}: unknown key {key!r}.{hint} Valid keys: {', '.join(valid)}")


def _names(value: Any, where: str, what: str) -> tuple[str, ...]:
    if isinstance(value, str) and value:
        return (value,)
    if isinstance(value, list) and value and all(isinstance(v, str) and v for v in value):
        return tuple(value)
    raise _fail(where, f"{what} must be a column name or a list of column names, got {value!r}")


def _parse_param_value(text: str) -> Any:
    """``--param k=v`` values are YAML scalars: ``32`` is an int, ``true`` a bool."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    return value if isinstance(value, (str, int, float, bool)) or value is None else text


def _substitute(value: Any, params: dict[str, Any], where: str) -> Any:
    if isinstance(value, LineDict):
        out = LineDict()
        out.line, out.file, out.key_lines = value.line, value.file, dict(value.key_lines)
        for k, v in value.items():
            out[k] = _substitute(v, params, value.where(k))
        return out
    if isinstance(value, list):
        return [_substitute(v, params, where) for v in value]
    if not isinstance(value, str) or "${" not in value:
        return value

    def lookup(name: str) -> Any:
        if name not in params:
            hint = did_you_mean(name, params)
            declared = ", ".join(k for k in params if k not in _BUILTIN_NAMES) or "none"
            builtin = ", ".join(_BUILTIN_NAMES)
            raise _fail(
                where,
                f"unknown parameter ${{{name}}}.{hint} Declared params: {declared} (built in: {builtin}); declare it under params: or pass --param {name}=...",
            )
        if params[name] is None:
            raise _fail(where, f"parameter ${{{name}}} has no value: pass --param {name}=...")
        return params[name]

    whole = _PARAM.fullmatch(value)
    if whole:
        return lookup(whole.group(1).strip())
    return _PARAM.sub(lambda m: str(lookup(m.group(1).strip())), value)


# --------------------------------------------------------------------------- reading
def read_pipeline(path: str | os.PathLike[str], **overrides: Any) -> Pipeline:
    """Parse and validate a pipeline file (or a named one: ``embedflow pipelines`` lists them);
    ``overrides`` replace its params' defaults.

    String overrides are read as YAML scalars (``"32"`` becomes 32). Operators and their
    parameters are checked here, before anything runs.
    """
    path = resolve(path)  # a name ("text-embedding") or a file
    doc = load_yaml_file(path)
    file = str(path)
    if not isinstance(doc, LineDict):
        raise _fail(f"{file}:1", "a pipeline file must be a mapping with source, steps and sink")
    _check_keys(doc, TOP_KEYS, "pipeline")
    for required in ("source",):
        if required not in doc:
            raise _fail(f"{file}:{doc.line}", f"missing required key {required!r} (valid keys: {', '.join(TOP_KEYS)})")
    declared = doc.get("params") or LineDict()
    if not isinstance(declared, dict):
        raise _fail(doc.where("params"), f"params must be a mapping of name: default, got {declared!r}")
    builtins = {k: v for k, v in builtin_params().items() if k not in declared}
    where = declared.where if isinstance(declared, LineDict) else doc.where
    params = {k: _substitute(v, builtins, where(k)) for k, v in declared.items()}  # a default may name ${samples}
    for name, value in overrides.items():
        if name not in params:
            hint = did_you_mean(name, params)
            raise PipelineError(f"{file}: --param {name}: the pipeline declares no parameter {name!r}.{hint} Declared: {', '.join(params) or 'none'}")
        params[name] = _parse_param_value(value) if isinstance(value, str) else value
    body = _substitute(LineDict({k: v for k, v in doc.items() if k != "params"}), {**builtins, **params}, f"{file}:{doc.line}")
    body.key_lines = doc.key_lines
    body.file = file

    on_error = body.get("on_error", "raise")
    if on_error not in ON_ERROR:
        raise _fail(body.where("on_error"), f"on_error: {on_error!r} is not one of {', '.join(ON_ERROR)}")
    collection, key = _build_source(body)
    if key is not None:
        try:
            collection = collection.set_key(key)
        except EmbedflowError as exc:
            raise _fail(body["source"].where("key"), f"source: {exc}") from exc
    if on_error == "skip":
        collection = collection.safe()
    device = body.get("device")
    if device is not None:
        try:
            collection = collection.set_device(check_device(device))
        except EmbedflowError as exc:
            raise _fail(body.where("device"), str(exc)) from exc
    steps = body.get("steps") or []
    if not isinstance(steps, list):
        raise _fail(body.where("steps"), f"steps must be a list, got {type(steps).__name__}")
    for i, step in enumerate(steps):
        collection = _build_step(collection, step, i, body.where("steps"))
    sink = _build_sink(body)
    wanted_columns = ((sink.columns or ()) + ((sink.column,) if sink.column else ()) + (sink.fields or ())) if sink else ()
    if sink is not None and sink.kind == "milvus":
        wanted_columns += (sink.vector,)
    for wanted in wanted_columns:
        if collection.columns is not None and wanted not in collection.columns:
            hint = did_you_mean(wanted, collection.columns)
            raise _fail(body["sink"].where(), f"sink: no column {wanted!r}.{hint} Columns: {list(collection.columns)}")
    key_column = collection.plan.key_column
    if sink is not None and key_column is not None and collection.columns is not None and key_column not in collection.columns:
        raise _fail(
            body.where("steps"),
            f"the row key column {key_column!r} is dropped before the sink; keep it (the output, the errors file and resume need it) or name another with source: key:",
        )
    spec = json.loads(json.dumps(dict(body.items()), default=str))
    spec["params"] = params
    return Pipeline(
        file=file,
        name=str(body.get("name") or Path(file).stem),
        description=str(body.get("description") or ""),
        params=params,
        collection=collection,
        sink=sink,
        on_error=on_error,
        key=key,
        spec=spec,
    )


def load_pipeline(path: str | Path, **params: Any) -> DataCollection:
    """The lazy DataCollection a pipeline file describes (its sink is not run).

    >>> import embedflow as ef
    >>> ef.load_pipeline("pipelines/image_embedding.yaml").columns
    ('path', 'img', 'vec')
    """
    return read_pipeline(path, **params).collection


def _build_source(body: LineDict) -> tuple[DataCollection, str | None]:
    source = body["source"]
    if not isinstance(source, LineDict):
        raise _fail(body.where("source"), f"source must be a mapping such as {{read_text: file.txt, column: text}}, got {source!r}")
    kinds = [k for k in source if k in SOURCE_KINDS]
    _check_keys(source, SOURCE_KINDS + SOURCE_OPTIONS, "source")
    if len(kinds) != 1:
        raise _fail(source.where(), f"source needs exactly one of {', '.join(SOURCE_KINDS)}, got {kinds or 'none'}")
    kind = kinds[0]
    target = source[kind]
    try:
        if kind == "items":  # a literal list, e.g. one query: items: ["${query}"]
            column = source.get("column", "value")
            values = target if isinstance(target, list) else [target]
            dc = readers.dc[column](values)
            key = source.get("key")
        elif kind in ("read_text", "glob"):
            column = source.get("column", "text" if kind == "read_text" else "path")
            if not isinstance(column, str):
                raise _fail(source.where("column"), f"column must be one column name, got {column!r}")
            if kind == "glob":
                patterns = target if isinstance(target, list) else [target]
                dc = readers.glob[column](*patterns)
                key = source.get("key", column)
            else:
                dc = readers.read_text[column](target)
                key = source.get("key")
        else:
            columns = source.get("columns")
            reader = getattr(readers, kind)
            dc = reader[_names(columns, source.where("columns"), "columns")](target) if columns else reader(target)
            key = source.get("key")
    except PipelineError:
        raise
    except EmbedflowError as exc:
        raise _fail(source.where(kind), str(exc)) from exc
    if key is not None and not isinstance(key, str):
        raise _fail(source.where("key"), f"key must be one column name, got {key!r}")
    allow_empty = source.get("allow_empty", False)
    if not isinstance(allow_empty, bool):
        raise _fail(source.where("allow_empty"), f"allow_empty must be true or false (without quotes), got {allow_empty!r}")
    if allow_empty:
        plan = dc.plan
        dc = DataCollection(replace(plan, source=replace(plan.source, allow_empty=True)), dc.named, dc.columns, settings=dc.settings)
    return dc, key


def _build_step(dc: DataCollection, step: Any, index: int, where: str) -> DataCollection:
    if not isinstance(step, LineDict):
        raise _fail(where, f"steps[{index}] must be a mapping such as {{op: normalize, in: vec}}, got {step!r}")
    label = f"steps[{index}]"
    if "chunk" in step or "group" in step:
        return _build_parts_step(dc, step, label)
    generic = [k for k in step if k in GENERIC_STEPS]
    if generic:
        kind = generic[0]
        if len(step) != 1:
            raise _fail(step.where(), f"{label}: a {kind} step has only the key {kind!r}")
        try:
            if kind == "head":
                return dc.head(step[kind])
            cols = _names(step[kind], step.where(kind), kind)
            return getattr(dc, kind)[cols]()
        except EmbedflowError as exc:
            raise _fail(step.where(kind), f"{label}: {exc}") from exc
    _check_keys(step, STEP_KEYS, label)
    if "op" not in step:
        raise _fail(step.where(), f"{label}: missing 'op' (an operator name; see `embedflow ops`) or one of {', '.join(GENERIC_STEPS)}")
    name = step["op"]
    if not isinstance(name, str):
        raise _fail(step.where("op"), f"{label}: op must be an operator name, got {name!r}")
    if "in" not in step:
        raise _fail(step.where(), f"{label} ({name}): missing 'in' (the column it reads)")
    inputs = _names(step["in"], step.where("in"), "in")
    outputs = _names(step["out"], step.where("out"), "out") if "out" in step else None
    params = step.get("with") or {}
    if not isinstance(params, dict):
        raise _fail(step.where("with"), f"{label} ({name}): with must be a mapping of operator parameters, got {params!r}")
    kwargs = dict(params)
    for option in EXECUTION_OPTIONS:
        if option in step:
            kwargs[option] = step[option]
    overlap = set(params) & set(EXECUTION_OPTIONS)
    if overlap:
        opt = sorted(overlap)[0]
        raise _fail(step.where("with"), f"{label} ({name}): {opt} is an execution option: write it beside op, not under with")
    key = (inputs, outputs) if outputs else (inputs,)
    try:
        if not registry.is_operator(name):
            raise registry.unknown_operator_error(name)
        return dc._apply(name, kwargs, key)
    except EmbedflowError as exc:
        bad = next((k for k in params if f"'{k}'" in str(exc) or f"{k}=" in str(exc)), None)
        at = params.where(bad) if bad is not None and isinstance(params, LineDict) else step.where("op")
        raise _fail(at, f"{label} ({name}): {exc}") from exc


def _build_parts_step(dc: DataCollection, step: LineDict, label: str) -> DataCollection:
    """``{chunk: {model_name: M, max_tokens: N, overlap: K}, in: text, out: [part, index]}`` or
    ``{group: {column: vec, by: doc, reduce: mean}}``."""
    kind = "chunk" if "chunk" in step else "group"
    _check_keys(step, (kind, "in", "out") if kind == "chunk" else (kind,), label)
    options = step[kind]
    if not isinstance(options, dict):
        raise _fail(step.where(kind), f"{label}: {kind} takes a mapping of options, got {options!r}")
    try:
        if kind == "group":
            return dc.group(**options)
        if "in" not in step:
            raise _fail(step.where(), f"{label} (chunk): missing 'in' (the text column)")
        outputs = _names(step["out"], step.where("out"), "out") if "out" in step else _names(step["in"], step.where("in"), "in")
        return dc.chunk[(_names(step["in"], step.where("in"), "in"), outputs)](**options)
    except (EmbedflowError, TypeError) as exc:
        raise _fail(step.where(kind), f"{label} ({kind}): {exc}") from exc


def _build_sink(body: LineDict) -> SinkSpec | None:
    sink = body.get("sink")
    if sink is None:
        return None
    if not isinstance(sink, LineDict):
        raise _fail(body.where("sink"), f"sink must be a mapping such as {{parquet: out.parquet}}, got {sink!r}")
    _check_keys(sink, SINK_KINDS + SINK_OPTIONS, "sink")
    kinds = [k for k in sink if k in SINK_KINDS]
    if len(kinds) != 1:
        raise _fail(sink.where(), f"sink needs exactly one of {', '.join(SINK_KINDS)}, got {kinds or 'none'}")
    kind = kinds[0]
    target = sink[kind]
    if kind == "print":
        target = target if isinstance(target, str) and target else "-"
    if not isinstance(target, str) or not target:
        raise _fail(sink.where(kind), f"sink {kind}: needs an output path, got {target!r}")
    columns = _names(sink["columns"], sink.where("columns"), "columns") if "columns" in sink else None
    column = sink.get("column")
    if kind == "npy" and not isinstance(column, str):
        raise _fail(sink.where(), "sink npy: needs column: <the vector column>")
    if kind != "npy" and column is not None:
        raise _fail(sink.where("column"), f"sink {kind}: column is for npy; use columns: [...] to choose columns")
    milvus_only = [k for k in ("collection", "vector", "fields", "metric") if k in sink]
    if kind != "milvus" and milvus_only:
        raise _fail(sink.where(milvus_only[0]), f"sink {kind}: {milvus_only[0]} is for the milvus sink")
    if kind == "milvus":
        if not isinstance(sink.get("collection"), str):
            raise _fail(sink.where(), "sink milvus: needs collection: <name>")
        metric = str(sink.get("metric", "COSINE")).upper()
        if metric not in ("COSINE", "IP", "L2"):
            raise _fail(sink.where("metric"), f"sink milvus: metric {metric!r} is not one of COSINE, IP, L2")
        fields = _names(sink["fields"], sink.where("fields"), "fields") if "fields" in sink else None
        return SinkSpec(kind, target, None, None, sink["collection"], str(sink.get("vector", "vec")), fields, metric)
    return SinkSpec(kind, target, columns, column)
