"""The sample data the package ships (README.md here says what each file is): what the bundled
pipelines read by default (``${samples}`` in a pipeline file), and what examples can use from
any folder.

>>> import embedflow as ef
>>> (ef.samples / "images" / "cat.jpg").is_file()
True
"""

from __future__ import annotations

from pathlib import Path

SAMPLES = Path(__file__).resolve().parent
