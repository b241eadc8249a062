"""Reading YAML safely while remembering where every key was written (for error messages).

Only plain data is built (``yaml.SafeLoader``): no tags that construct objects, no code.
Mappings come back as :class:`LineDict`, which knows its own line and the line of each key.

>>> doc = load_yaml_text("a: 1\\nb:\\n  c: 2\\n", "x.yaml")
>>> doc["b"]["c"], doc.key_lines["b"], doc["b"].line
(2, 2, 3)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from ..errors import PipelineError


class LineDict(dict[Any, Any]):
    """A dict from YAML that remembers its line (``line``) and each key's (``key_lines``)."""

    line: int = 0
    file: str = "<yaml>"

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.key_lines: dict[Any, int] = {}

    def where(self, key: Any = None) -> str:
        """``file:line`` of ``key`` (or of the mapping itself)."""
        return f"{self.file}:{self.key_lines.get(key, self.line)}"


class _Loader(yaml.SafeLoader):  # type: ignore[misc]  # yaml ships no types
    file = "<yaml>"


def _mapping(loader: _Loader, node: yaml.MappingNode) -> LineDict:
    loader.flatten_mapping(node)
    out = LineDict()
    out.line = node.start_mark.line + 1
    out.file = loader.file
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in out:
            msg = f"{loader.file}:{key_node.start_mark.line + 1}: key {key!r} appears twice (first on line {out.key_lines[key]})"
            raise PipelineError(msg)
        out[key] = loader.construct_object(value_node, deep=True)
        out.key_lines[key] = key_node.start_mark.line + 1
    return out


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def _int(loader: _Loader, node: yaml.ScalarNode) -> int:
    """YAML's int, or the file and line of one too long to be a number (Python refuses more
    than 4,300 digits)."""
    try:
        return yaml.SafeLoader.construct_yaml_int(loader, node)
    except ValueError:
        msg = f"{loader.file}:{node.start_mark.line + 1}: a number of {len(node.value)} characters is longer than Python reads (4,300 digits); quote it to make it a string, or shorten it"
        raise PipelineError(msg) from None


_Loader.add_constructor("tag:yaml.org,2002:int", _int)


MAX_VALUES = 10_000  # values a file may expand to through aliases: pipeline files have dozens


def _expanded_size(node: yaml.Node, file: str) -> int:
    """How many values the document becomes once every alias (``*name``) is expanded, counted
    without expanding anything; a file past ``MAX_VALUES`` is refused (an "alias bomb" of a
    few hundred bytes would otherwise take gigabytes)."""
    sizes: dict[int, int] = {}

    def size(n: yaml.Node) -> int:
        known = sizes.get(id(n))
        if known is not None:
            return known
        sizes[id(n)] = 1  # a recursive alias counts once
        children: list[yaml.Node] = []
        if isinstance(n, yaml.MappingNode):
            children = [x for pair in n.value for x in pair]
        elif isinstance(n, yaml.SequenceNode):
            children = list(n.value)
        total = 1 + sum(size(c) for c in children)
        if total > MAX_VALUES:
            msg = f"{file}:{n.start_mark.line + 1}: the YAML aliases (&name / *name) here expand to more than {MAX_VALUES} values; a pipeline file needs far fewer — write the values out or remove the aliases"
            raise PipelineError(msg)
        sizes[id(n)] = total
        return total

    return size(node)


def load_yaml_text(text: str, file: str = "<yaml>") -> Any:
    """Parse YAML text with line-aware mappings; syntax errors name the file and line."""
    loader = type("_FileLoader", (_Loader,), {"file": file})(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _expanded_size(node, file)
        return loader.construct_document(node)
    except RecursionError:
        msg = f"{file}:{loader.line + 1}: the YAML is nested too deeply to read; a pipeline file needs a few levels — flatten it"
        raise PipelineError(msg) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        line = mark.line + 1 if mark is not None else 0
        msg = f"{file}:{line}: not valid YAML: {exc.problem or exc}"
        raise PipelineError(msg) from exc
    finally:
        loader.dispose()


def load_yaml_file(path: str | Path) -> Any:
    """Read and parse a YAML file (see :func:`load_yaml_text`)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        msg = f"pipeline file {str(p)!r} does not exist"
        raise PipelineError(msg) from exc
    return load_yaml_text(text, str(p))
