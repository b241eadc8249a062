"""Pipelines by name: the ones bundled in the package (``embedflow/pipelines/bundled``, the
repository's ``pipelines/``) and those other packages publish in the ``embedflow.pipelines``
entry-point group (``name = "package.module:ATTR"``, ATTR a path to a YAML file or a function
returning one). A name is the file's ``name:``; a path to a YAML file works wherever a name does.

>>> sorted(pipelines())[:2]
['image-embedding', 'image-search']
>>> resolve("text-embedding").name
'text_embedding.yaml'
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path

from ..errors import PipelineError, did_you_mean
from .yaml_loader import load_yaml_file

BUNDLED = Path(__file__).resolve().parent / "bundled"
GROUP = "embedflow.pipelines"


@dataclass(frozen=True)
class NamedPipeline:
    """A pipeline known by name: where its file is, what it does, who provides it."""

    name: str
    description: str
    origin: str  # "embedflow" or the distribution that publishes it
    _path: Path | None = None
    _entry: object | None = None

    @property
    def path(self) -> Path:
        """The YAML file (an entry point is loaded only now)."""
        if self._path is not None:
            return self._path
        target = self._entry.load()  # type: ignore[attr-defined]
        target = target() if callable(target) else target
        if not isinstance(target, (str, os.PathLike)) or not Path(target).is_file():
            msg = f"pipeline {self.name!r} (from {self.origin}): its entry point gave {target!r}, not a YAML file"
            raise PipelineError(msg)
        return Path(target)


def _bundled() -> dict[str, NamedPipeline]:
    found = {}
    for path in sorted(BUNDLED.glob("*.yaml")):
        doc = load_yaml_file(path)
        name = doc.get("name") or path.stem.replace("_", "-")
        found[name] = NamedPipeline(name, str(doc.get("description", "")), "embedflow", _path=path)
    return found


def pipelines() -> dict[str, NamedPipeline]:
    """Every pipeline known by name; a bundled name wins over a published one."""
    found = {}
    for entry in entry_points(group=GROUP):
        origin = entry.dist.name if entry.dist is not None else entry.value
        found[entry.name] = NamedPipeline(entry.name, f"(from {origin})", origin, _entry=entry)
    found.update(_bundled())
    return found


def resolve(name_or_path: str | os.PathLike[str]) -> Path:
    """The YAML file of a pipeline name, or the path itself when it names a file."""
    text = os.fspath(name_or_path)
    if Path(text).is_file():
        return Path(text)
    known = pipelines()
    if text in known:
        return known[text].path
    if text.endswith((".yaml", ".yml")) or os.sep in text:
        msg = f"pipeline file {text!r} does not exist. Named pipelines: {', '.join(sorted(known))} (embedflow pipelines lists them)"
        raise PipelineError(msg)
    msg = f"unknown pipeline {text!r}.{did_you_mean(text, known)} Named pipelines: {', '.join(sorted(known))}; or give the path of a YAML file"
    raise PipelineError(msg)
