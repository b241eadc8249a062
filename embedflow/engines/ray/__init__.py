"""The Ray engine (see :mod:`.engine`); Ray itself is imported only when it runs.

>>> from embedflow.engines.ray.engine import INSTALL_HINT
>>> "pip install 'embedflow[ray]'" in INSTALL_HINT
True
"""

from __future__ import annotations

from .engine import RayEngine

__all__ = ["RayEngine"]
