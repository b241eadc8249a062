"""The local engine: threads joined by bounded channels in this process (see :mod:`.engine`).

>>> from embedflow.engines.local import LocalEngine
>>> LocalEngine.name
'local'
"""

from __future__ import annotations

from .engine import LocalEngine

__all__ = ["LocalEngine"]
