"""The ``embedflow`` command line.

* ``embedflow run FILE [--param k=v ...] [--device D] [--engine local|ray] [--ray-address A]
  [--limit N] [--recompute] [--cache DIR] [--quiet] [--allow-import MODULE]`` runs a pipeline
  file to its sink, computing only the rows its result store does not hold (an interrupted
  run's, or an earlier run's on rows that did not change);
* ``embedflow cache info|prune STORE`` shows a result store, or removes what no output uses;
* ``embedflow serve FILE [--param k=v ...] [--host H] [--port P] [--max-batch-size N] [--max-wait-ms M]``
  serves the pipeline over HTTP (``POST /v1/embeddings``, ``POST /run``; see :mod:`embedflow.serve`);
* ``embedflow explain FILE`` prints its plan; ``embedflow validate FILE`` checks it (operators,
  parameters, inputs, the output folder) without loading a model;
* ``embedflow pipelines`` lists the pipelines known by name (any FILE above may be a name);
* ``embedflow ops [PATTERN]`` lists operators (with the package providing each) and the steps
  of every chain (``chunk``, ``group``, ``map``, …), each with a one-line summary; PATTERN is a
  name, part of one, a near spelling or a glob; ``embedflow ops NAME`` shows one operator's
  parameters and documentation, or one step's.

Exit codes: 0 ok, 1 the run failed, 2 bad usage or an invalid file, 130 interrupted. Errors are
one line (what, where, the fix); ``--traceback`` or ``EMBEDFLOW_DEBUG=1`` adds the traceback.

>>> from embedflow.cli import main
>>> main(["ops", "normalize"])  # doctest: +ELLIPSIS
normalize  (from package embedflow ...
0
"""

from __future__ import annotations

import argparse
import inspect
import os
import sys
import traceback
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import __version__, catalog, registry
from .engines import ENGINES
from .errors import EmbedflowError, PipelineError, UsageError
from .io.results import ResultStore
from .models import allow_import
from .operator import is_operator_class
from .pipelines import pipelines, preflight, read_pipeline, run_pipeline, serve_pipeline
from .pipelines.schema import GENERIC_STEPS
from .plan import signature_text
from .serve import Limits
from .views.layers import layer_table, model_and_sample


def _summary(obj: object) -> str:
    doc = inspect.getdoc(obj) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def _cmd_ops(args: argparse.Namespace) -> int:
    pattern = args.pattern or ""
    if registry.is_operator(pattern):
        obj = registry.get_operator(pattern)
        skip = 0 if is_operator_class(obj) or inspect.isclass(obj) else 1
        print(f"{pattern}  (from {registry.operator_source(pattern)})")
        print(f"parameters: {signature_text(obj, skip_inputs=skip)}")
        print("execution options: batch_size, device, workers")
        print()
        print(inspect.getdoc(obj) or "(no documentation)")
        return 0
    if catalog.is_step(pattern):
        print(f"{pattern}  (a step of every chain: dc.{pattern}(...){'; in YAML too' if pattern in GENERIC_STEPS else ''})")
        print()
        print(catalog.step_doc(pattern))
        return 0
    names = catalog.find(pattern)
    if not names:
        everything = ", ".join(catalog.find())
        print(
            f"no operator or step matches {pattern!r}; there are: {everything}. Fix: try part of a name, or a glob such as 'image_*'", file=sys.stderr
        )
        return 2
    width = max(len(n) for n in names)
    for name in names:
        if catalog.is_step(name):
            print(f"{name:<{width}}  {catalog.step_summary(name)}")
            continue
        try:
            summary = _summary(registry.get_operator(name))
        except EmbedflowError as exc:
            summary = f"(cannot load: {exc})"
        source = registry.operator_source(name).split(" (")[0]
        print(f"{name:<{width}}  {summary}  [{source}]")
    return 0


def _params(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            msg = f"--param {pair!r}: write it as name=value"
            raise UsageError(msg)
        out[key.strip()] = value
    return out


def _read(args: argparse.Namespace) -> Any:
    allow_import(*args.allow_import)
    return read_pipeline(args.file, **_params(args.param))


def _cmd_validate(args: argparse.Namespace) -> int:
    pipeline = _read(args)
    preflight(pipeline)
    steps = len(pipeline.collection.plan.steps)
    sink = f"{pipeline.sink.kind} {pipeline.sink.target}" if pipeline.sink else "no sink"
    print(f"{args.file}: ok — {pipeline.name}: {steps} step(s), sink {sink}")
    return 0


def _cmd_explain(args: argparse.Namespace) -> int:
    pipeline = _read(args)
    print(pipeline.collection.explain())
    if pipeline.sink is not None:
        cols = f" columns {', '.join(pipeline.sink.columns)}" if pipeline.sink.columns else ""
        print(f"  sink    {pipeline.sink.kind} {pipeline.sink.target}{cols}  (on_error: {pipeline.on_error})")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    pipeline = _read(args)
    if args.ray_address:
        if args.engine != "ray":
            msg = "--ray-address is for --engine ray"
            raise UsageError(msg)
        os.environ["RAY_ADDRESS"] = args.ray_address
    if not args.quiet:
        print(f"embedflow: running {pipeline.name} ({args.file})", file=sys.stderr)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*failed and were skipped")  # the summary says it
        summary = run_pipeline(
            pipeline,
            device=args.device,
            engine=args.engine,
            limit=args.limit,
            resume=not args.recompute,
            cache=args.cache,
            progress=False if args.quiet else None,
        )
    print(summary.line())
    return 0


def _cmd_cache(args: argparse.Namespace) -> int:
    path = Path(args.store)
    folder = path if (path / "store.json").exists() else path.parent / f".{path.name}.cache"
    if not (folder / "store.json").exists():
        msg = f"{args.store}: no result store there (nor {folder}); name a store folder or the output of a pipeline run"
        raise UsageError(msg)
    store = ResultStore(folder).open(exclusive=args.action == "prune")
    try:
        if args.action == "prune":
            removed, freed = store.prune()
            print(f"{folder}: removed {removed} entries no output uses, freed {freed / 1e6:.1f} MB")
        found = store.info()
        print(
            f"{folder}: {found['entries']} entries in {found['segments']} segments, {found['bytes'] / 1e6:.1f} MB; used by {', '.join(found['outputs']) or 'no output yet'}"
        )
    finally:
        store.close()
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    pipeline = _read(args)
    limits = Limits(max_items=args.max_items, max_bytes=args.max_bytes, timeout=args.timeout)
    serve_pipeline(
        pipeline,
        host=args.host,
        port=args.port,
        device=args.device,
        max_batch_size=args.max_batch_size,
        max_wait_ms=args.max_wait_ms,
        max_batch_tokens=args.max_batch_tokens or None,
        max_queue=args.max_queue,
        limits=limits,
        files_root=args.files_root,
        log_level="info" if args.verbose else "warning",
    )
    return 0


def _cmd_layers(args: argparse.Namespace) -> int:
    if ":" in args.model:  # typed on the command line: the user trusts that module
        allow_import(args.model.partition(":")[0])
    size = tuple(int(v) for v in args.input_size.split(",")) if args.input_size else None
    try:
        model, sample = model_and_sample(args.model, size)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    rows = layer_table(model, sample)
    width = max(len(name) for name, _, _ in rows)
    print(f"{'layer':<{width}}  {'type':<20} output shape (input {tuple(sample.shape)})")
    for name, kind, shape in rows:
        print(f"{name:<{width}}  {kind:<20} {shape}")
    top = [n for n, _ in model.named_children()]
    print(f"top-level layers (layer=-1 is the last): {', '.join(top)}")
    return 0


def _cmd_pipelines(args: argparse.Namespace) -> int:
    known = pipelines()
    width = max(map(len, known))
    for name in sorted(known):
        entry = known[name]
        print(f"{name:<{width}}  {entry.description}" + (f"  (from {entry.origin})" if entry.origin != "embedflow" else ""))
    print("\nrun one by name: embedflow run NAME --param k=v; in Python: ef.pipeline(NAME)(item)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``embedflow`` command."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--traceback", action="store_true", help="print the full traceback of an error (also: EMBEDFLOW_DEBUG=1)")
    files = argparse.ArgumentParser(add_help=False, parents=[common])
    files.add_argument("file", help="the pipeline YAML file, or a pipeline name (embedflow pipelines lists them)")
    files.add_argument("--param", action="append", default=[], metavar="K=V", help="override a parameter (repeatable)")
    files.add_argument(
        "--allow-import",
        action="append",
        default=[],
        metavar="MODULE",
        help="let model specs ('MODULE.sub:factory') import and call code from this module (repeatable; off by default)",
    )
    parser = argparse.ArgumentParser(prog="embedflow", description="Turn data into embedding vectors.", parents=[common])
    parser.add_argument("--version", action="version", version=f"embedflow {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    ops = sub.add_parser("ops", help="list operators and steps, or show one's parameters and documentation", parents=[common])
    ops.add_argument("pattern", nargs="?", help="a name, part of one (a near spelling does), or a glob such as 'image_*'")
    ops.set_defaults(func=_cmd_ops)

    named = sub.add_parser("pipelines", help="list the pipelines known by name (bundled and published by packages)", parents=[common])
    named.set_defaults(func=_cmd_pipelines)

    run = sub.add_parser("run", help="run a pipeline file to its sink, computing only the rows no earlier run did", parents=[files])
    run.add_argument("--device", help="auto, cpu, cuda, cuda:N or mps (default: the file's, else auto)")
    run.add_argument("--engine", choices=list(ENGINES), help="the engine (default local)")
    run.add_argument("--ray-address", help="join this Ray cluster (default: $RAY_ADDRESS, else start a local Ray)")
    run.add_argument("--limit", type=int, help="only the first N source rows")
    run.add_argument(
        "--recompute", "--no-resume", dest="recompute", action="store_true", help="compute every row again, reusing nothing (the results are stored)"
    )
    run.add_argument("--cache", metavar="DIR", help="the result store (default: .<output>.cache beside the output)")
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    run.set_defaults(func=_cmd_run)

    srv = sub.add_parser("serve", help="serve a pipeline over HTTP: requests from many clients batched together", parents=[files])
    srv.add_argument("--host", default="127.0.0.1", help="the address to listen on (default 127.0.0.1: this machine only)")
    srv.add_argument("--port", type=int, default=8000, help="the port (default 8000; 0 picks a free one)")
    srv.add_argument("--device", help="auto, cpu, cuda, cuda:N or mps (default: the file's, else auto)")
    srv.add_argument("--max-batch-size", type=int, default=64, help="rows per shared batch (default 64)")
    srv.add_argument("--max-wait-ms", type=float, default=5.0, help="how long a row waits for company (default 5 ms)")
    srv.add_argument("--max-batch-tokens", type=int, default=512, help="padded tokens per model batch, for text (default 512; 0: no cap)")
    srv.add_argument("--max-queue", type=int, default=4096, help="rows waiting at most; more get 503 (default 4096)")
    srv.add_argument("--max-items", type=int, default=2048, help="items per request at most (default 2048)")
    srv.add_argument("--max-bytes", type=int, default=32 << 20, help="bytes per request at most (default 32 MiB)")
    srv.add_argument("--timeout", type=float, default=60.0, help="seconds a request may take (default 60)")
    srv.add_argument("--files-root", help="a folder whose files requests may name by path (and the page shows); default none")
    srv.add_argument("--verbose", action="store_true", help="log every request")
    srv.set_defaults(func=_cmd_serve)

    cache = sub.add_parser("cache", help="a result store: what it holds (info), or drop what no output uses (prune)", parents=[common])
    cache.add_argument("action", choices=["info", "prune"])
    cache.add_argument("store", help="the store's folder, or an output file (its store is .<output>.cache beside it)")
    cache.set_defaults(func=_cmd_cache)

    layers = sub.add_parser("layers", help="list a model's layers and output shapes (names for layer=)", parents=[common])
    layers.add_argument("model", help="a timm architecture (resnet18) or an importable 'package.module:factory'")
    layers.add_argument("--input-size", help="C,H,W of one sample (default: the timm model's own)")
    layers.set_defaults(func=_cmd_layers)

    explain = sub.add_parser("explain", help="print a pipeline's plan; nothing runs", parents=[files])
    explain.set_defaults(func=_cmd_explain)
    validate = sub.add_parser("validate", help="check a pipeline file, its operators, parameters, inputs and output", parents=[files])
    validate.set_defaults(func=_cmd_validate)
    return parser


def _one_line(exc: BaseException) -> str:
    """An error as one line: embedflow's own messages as they are, others with their type."""
    if isinstance(exc, EmbedflowError):
        return str(exc)
    if isinstance(exc, OSError) and exc.strerror:
        where = f": {exc.filename}" if exc.filename else ""
        return f"{exc.strerror}{where} ({type(exc).__name__})"
    return f"{type(exc).__name__}: {exc}"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``embedflow`` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = args.traceback or os.environ.get("EMBEDFLOW_DEBUG", "") not in ("", "0")
    try:
        code = int(args.func(args))
        sys.stdout.flush()  # a closed pipe shows here, inside the handlers, not at interpreter exit
        return code
    except KeyboardInterrupt:
        print("embedflow: interrupted; finished rows are saved — run the same command to resume", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (embedflow ops | head): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as exc:  # noqa: BLE001 - every error becomes one line and an exit code
        if debug:
            traceback.print_exc()
        hint = "" if debug else " (--traceback for the details)"
        print(f"embedflow: {_one_line(exc)}{hint if not isinstance(exc, EmbedflowError) else ''}", file=sys.stderr)
        return 2 if isinstance(exc, (PipelineError, UsageError)) else 1


if __name__ == "__main__":
    sys.exit(main())
