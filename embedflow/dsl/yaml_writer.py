"""A chain written out as a YAML pipeline file (the inverse of ``ef.load_pipeline``).

>>> import embedflow as ef
>>> print(collection_to_yaml(ef.read_text["text"]("t.txt").plan))  # doctest: +NORMALIZE_WHITESPACE
name: pipeline
source:
  read_text: t.txt
  column: text
steps: []
"""

from __future__ import annotations

from typing import Any

import yaml

from ..errors import EmbedflowError
from ..plan import Apply, Head, Plan, Project


def collection_to_yaml(plan: Plan, name: str = "pipeline", sink: dict[str, Any] | None = None) -> str:
    """The YAML text of a pipeline file that builds ``plan`` again.

    Fails with the reason for steps that have no YAML form (``.map(fn)``, ``filter``,
    ``flat_map``, ``batch``): register the function as an operator to use it from YAML.
    """
    if plan.source.spec is None or not plan.source.named:
        msg = (
            f"to_yaml(): the source {plan.source.label} has no YAML form; pipelines read named "
            "columns from files: ef.read_text['text'](path), ef.glob['path'](pattern), ef.read_jsonl(path) ..."
        )
        raise EmbedflowError(msg)
    doc: dict[str, Any] = {"name": name, "source": dict(plan.source.spec)}
    if plan.device != "auto":
        doc["device"] = plan.device
    skips = {step.on_error for step in plan.steps}
    if len(skips) > 1:
        msg = "to_yaml(): .safe() in the middle of a chain has no YAML form (on_error applies to every step); call .safe() before the first step"
        raise EmbedflowError(msg)
    doc["steps"] = [_step(step) for step in plan.steps]
    if sink is not None:
        doc["sink"] = sink
    if skips == {"skip"}:
        doc["on_error"] = "skip"
    return yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)


def _step(step: Any) -> dict[str, Any]:
    if isinstance(step, Apply) and step.name != "map":
        entry: dict[str, Any] = {"op": step.name}
        entry["in"] = step.inputs[0] if step.inputs and len(step.inputs) == 1 else list(step.inputs or ())
        if step.outputs:
            entry["out"] = step.outputs[0] if len(step.outputs) == 1 else list(step.outputs)
        if step.params:
            entry["with"] = dict(step.params)
        entry.update(step.options.given())
        return entry
    if isinstance(step, Project):
        return {step.kind: list(step.columns)}
    if isinstance(step, Head):
        return {"head": step.n}
    what = "a .map(fn) step" if isinstance(step, Apply) else f"a {step.kind} step"
    msg = f"to_yaml(): {what} has no YAML form (a file never carries code); register the function with @ef.register('ns.name') and use it as an operator"
    raise EmbedflowError(msg)
