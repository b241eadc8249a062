"""How many pixels the image decoders of one process may hold at once.

A decode holds an image's pixels in full for a moment (Pillow's decoded image, then the RGB
array), whatever it keeps afterwards: two threads decoding 12000×12000 PNGs held 2.7 GB even
when each kept a 1024-pixel copy. Each decode asks for its pixel count first and waits while
others hold the budget; one image larger than the whole budget decodes alone rather than
never. ``EMBEDFLOW_DECODE_PIXELS`` sets the budget (default 150 million: about 450 MB as RGB).

>>> budget = PixelBudget(100)
>>> with budget.hold(60), budget.hold(40):
...     budget.held
100
>>> budget.held
0
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator

DEFAULT_PIXELS = 150_000_000


class PixelBudget:
    """A counting limit on pixels held at once (see the module docstring)."""

    def __init__(self, limit: int):
        self.limit, self.held = limit, 0
        self._free = threading.Condition()

    @contextlib.contextmanager
    def hold(self, pixels: int) -> Iterator[None]:
        """Hold ``pixels`` of the budget for the block, waiting until they fit (or nothing else
        is held)."""
        with self._free:
            self._free.wait_for(lambda: self.held == 0 or self.held + pixels <= self.limit)
            self.held += pixels
        try:
            yield
        finally:
            with self._free:
                self.held -= pixels
                self._free.notify_all()


DECODING = PixelBudget(int(os.environ.get("EMBEDFLOW_DECODE_PIXELS", DEFAULT_PIXELS)))
"""The budget every decoder of this process shares."""
