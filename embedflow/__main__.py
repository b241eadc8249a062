"""``python -m embedflow`` is the ``embedflow`` command."""

import sys

from .cli import main

sys.exit(main())
