"""Serving a pipeline over HTTP: requests from many clients batched together through the same
model-batching routine as batch jobs (``embedflow serve FILE``, ``dc.serve()``).

>>> from embedflow.serve import Service, serve
>>> callable(serve) and Service.__name__
'Service'
"""

from __future__ import annotations

from .app import Limits, create_app
from .protocol import Shape
from .server import serve
from .service import QueueFull, Service

__all__ = ["Limits", "QueueFull", "Service", "Shape", "create_app", "serve"]
