"""What ``embedflow ops`` lists: the registered operators and the steps every chain has,
found by name, by part of a name, or by a near spelling.

>>> from embedflow.catalog import find
>>> find("transformers")
['text_embedding.transformers', 'word_embedding.transformers']
>>> find("chunk")
['chunk']
>>> find("transfomers")  # a typo still finds them
['text_embedding.transformers', 'word_embedding.transformers']
"""

from __future__ import annotations

import difflib
import fnmatch
import inspect
import re

from . import registry
from .dsl import DataCollection
from .pipelines.schema import GENERIC_STEPS

STEPS = ("map", "filter", "flat_map", "batch", "select", "exclude", "head", "chunk", "group", "project", "safe")
"""The steps of every chain (methods of :class:`~embedflow.DataCollection`), in the order a
reader meets them; those in ``GENERIC_STEPS`` are YAML steps too."""

SUMMARY_WIDTH = 90  # characters of a step's one-line summary
CLOSE_ENOUGH = 0.75  # difflib ratio of a pattern to a name or to one part of a name


def find(pattern: str | None = None) -> list[str]:
    """Operators, then steps, whose name matches ``pattern``: a glob when it has ``*?[``, else
    any name containing it (case-insensitive), else names one of whose parts is spelled
    close to it. No pattern: all of them.

    >>> find("embed")[:2]
    ['embedding.torch', 'image_embedding.timm']
    """
    names = [*registry.list_operators(), *STEPS]
    if not pattern:
        return names
    if any(c in pattern for c in "*?["):
        return [n for n in names if fnmatch.fnmatchcase(n, pattern)]
    wanted = pattern.lower()
    hits = [n for n in names if wanted in n.lower()]
    return hits or [n for n in names if _closeness(wanted, n) >= CLOSE_ENOUGH]


def _closeness(wanted: str, name: str) -> float:
    parts = [name, *re.split(r"[._]", name)]
    return max(difflib.SequenceMatcher(None, wanted, part.lower()).ratio() for part in parts)


def is_step(name: str) -> bool:
    """True for a step of every chain (``chunk``, ``map``, …) rather than an operator.

    >>> is_step("chunk"), is_step("normalize")
    (True, False)
    """
    return name in STEPS


def step_doc(name: str) -> str:
    """The documentation of the chain step ``name``.

    >>> step_doc("head").splitlines()[0]
    'Only the first ``n`` rows; upstream steps stop reading once they are out.'
    """
    return inspect.getdoc(getattr(DataCollection, name)) or "(no documentation)"


def step_summary(name: str) -> str:
    """One line on the step ``name``, saying whether a pipeline file may use it.

    >>> step_summary("select")
    'Keep only the named columns, in that order: ``dc.select["path", "vec"]()``.  [step of every chain: Python and YAML]'
    """
    doc = step_doc(name).split("\n\n")[0].replace("\n", " ")
    first = re.split(r"(?<=\.)\s", doc, maxsplit=1)[0]
    if len(first) > SUMMARY_WIDTH:
        first = first[: SUMMARY_WIDTH + 1].rsplit(" ", 1)[0].rstrip(",;:") + " …"
    where = "Python and YAML" if name in GENERIC_STEPS else "Python"
    return f"{first}  [step of every chain: {where}]"
