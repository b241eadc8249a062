"""Attribute dispatch: what ``dc.<name>`` and ``dc.<namespace>.<name>`` return.

>>> import embedflow as ef
>>> ef.dc([1]).image_embedding  # doctest: +ELLIPSIS
<operator namespace 'image_embedding': timm>
"""

from __future__ import annotations

from typing import Any

from .. import registry
from ..errors import ParameterError, UnknownOperatorError, did_you_mean


class OperatorRef:
    """What ``dc.<name>`` returns: call it to append the operator, index it to select columns,
    or take an attribute to go down a namespace (``dc.image_embedding.timm``)."""

    __slots__ = ("_dc", "_name", "_key")

    def __init__(self, dc: Any, name: str, key: Any = None):  # dc: the DataCollection it extends
        self._dc, self._name, self._key = dc, name, key

    def __getattr__(self, part: str) -> OperatorRef:
        if part.startswith("_"):
            raise AttributeError(part)
        full = f"{self._name}.{part}"
        if registry.is_operator(full) or registry.is_namespace(full):
            return OperatorRef(self._dc, full)
        members = registry.children(self._name)
        hint = did_you_mean(part, members)
        msg = (
            f"unknown operator {full!r}.{hint} The namespace {self._name!r} has: "
            f"{', '.join(members) or 'nothing'}. See embedflow.list_operators('{self._name}.*')."
        )
        raise UnknownOperatorError(msg)

    def __getitem__(self, key: Any) -> OperatorRef:
        return OperatorRef(self._dc, self._name, key)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if not registry.is_operator(self._name):
            members = ", ".join(registry.children(self._name))
            msg = f"{self._name!r} is a namespace, not an operator: pick one of its operators ({members}), e.g. dc.{self._name}.{registry.children(self._name)[0]}(...)"
            raise UnknownOperatorError(msg)
        if args:
            msg = f"{self._name}(): operator parameters are keyword arguments, got positional {args!r}"
            raise ParameterError(msg)
        return self._dc._apply(self._name, kwargs, self._key)

    def __dir__(self) -> list[str]:
        return registry.children(self._name)

    def __repr__(self) -> str:
        if registry.is_operator(self._name):
            return f"<operator {self._name!r} from {registry.operator_source(self._name)}>"
        return f"<operator namespace {self._name!r}: {', '.join(registry.children(self._name))}>"
