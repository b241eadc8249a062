"""The ``embedflow`` command line.

``embedflow ops [PATTERN]`` lists operators with a one-line summary and the package providing
each; ``embedflow ops NAME`` shows one operator's parameters and documentation.

>>> from embedflow.cli import main
>>> main(["ops", "normalize"])  # doctest: +ELLIPSIS
normalize  (from package embedflow ...
0
"""

from __future__ import annotations

import argparse
import inspect
import sys
from collections.abc import Sequence

from . import __version__, registry
from .binding import signature_text
from .errors import EmbedflowError
from .operator import is_operator_class


def _summary(obj: object) -> str:
    doc = inspect.getdoc(obj) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def _cmd_ops(args: argparse.Namespace) -> int:
    pattern = args.pattern or "*"
    if registry.is_operator(pattern):
        obj = registry.get_operator(pattern)
        skip = 0 if is_operator_class(obj) or inspect.isclass(obj) else 1
        print(f"{pattern}  (from {registry.operator_source(pattern)})")
        print(f"parameters: {signature_text(obj, skip_inputs=skip)}")
        print("execution options: batch_size, device, workers")
        print()
        print(inspect.getdoc(obj) or "(no documentation)")
        return 0
    names = registry.list_operators(pattern if any(c in pattern for c in "*?[") else f"{pattern}*")
    if not names:
        print(f"no operator matches {pattern!r}; installed: {', '.join(registry.list_operators())}", file=sys.stderr)
        return 2
    width = max(len(n) for n in names)
    for name in names:
        try:
            summary = _summary(registry.get_operator(name))
        except EmbedflowError as exc:
            summary = f"(cannot load: {exc})"
        source = registry.operator_source(name).split(" (")[0]
        print(f"{name:<{width}}  {summary}  [{source}]")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``embedflow`` command."""
    parser = argparse.ArgumentParser(prog="embedflow", description="Turn data into embedding vectors.")
    parser.add_argument("--version", action="version", version=f"embedflow {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    ops = sub.add_parser("ops", help="list operators, or show one operator's parameters")
    ops.add_argument("pattern", nargs="?", help="an operator name, a prefix, or a glob such as 'image_*'")
    ops.set_defaults(func=_cmd_ops)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``embedflow`` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except EmbedflowError as exc:
        print(f"embedflow: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
