"""Looking at rows: a plain-text table for terminals and an HTML table (image thumbnails,
short vector previews) for notebooks.

>>> print(text_table([{"text": "hi", "vec": [0.1, 0.2]}]))
text  vec
----  ------------------
hi    [0.100 0.200] (2,)
"""

from __future__ import annotations

import base64
import html
import io
import os
from collections.abc import Sequence
from typing import Any

from ..io.sinks import Sink, SinkContext, select_columns

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")


def _is_image_array(value: Any) -> bool:
    import numpy as np

    return isinstance(value, np.ndarray) and value.dtype == np.uint8 and value.ndim == 3 and value.shape[2] in (3, 4)


def _vector_preview(value: Any, n: int = 4) -> str:
    import numpy as np

    arr = np.asarray(value)
    flat = arr.ravel()
    head = " ".join(f"{x:.3f}" for x in flat[:n].astype(float))
    more = " …" if flat.size > n else ""
    return f"[{head}{more}] {tuple(arr.shape)}"


def _hits(value: Any) -> str | None:
    if isinstance(value, list) and value and all(isinstance(h, dict) and "distance" in h for h in value):
        parts = []
        for rank, hit in enumerate(value, 1):
            extra = ", ".join(f"{k}={str(v)[:40]}" for k, v in hit.items() if k not in ("id", "distance"))
            parts.append(f"{rank}. {hit['distance']:.3f} {hit['id']}" + (f" ({extra})" if extra else ""))
        return " | ".join(parts)
    return None


def cell_text(value: Any, width: int = 60) -> str:
    """A short one-line rendering of a value."""
    import numpy as np

    if type(value).__name__ == "Tensor":
        value = value.detach().cpu().numpy()
    hits = _hits(value)
    if hits is not None:
        text = hits
    elif _is_image_array(value):
        text = f"<image {value.shape[1]}x{value.shape[0]}>"
    elif isinstance(value, np.ndarray) or (isinstance(value, list) and value and all(isinstance(v, (int, float)) for v in value)):
        text = _vector_preview(value)
    else:
        text = str(value)
    text = text.replace("\n", " ")
    return text if len(text) <= width else text[: width - 1] + "…"


def text_table(rows: list[Any], width: int = 60) -> str:
    """Rows as an aligned plain-text table (dict rows: one column per key)."""
    if not rows:
        return "(no rows)"
    dict_rows = [r if isinstance(r, dict) else {"value": r} for r in rows]
    columns = list(dict.fromkeys(k for r in dict_rows for k in r))
    cells = [[cell_text(r.get(c, ""), width) for c in columns] for r in dict_rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in cells]
    return "\n".join(lines)


def _thumbnail(value: Any, size: int = 96) -> str | None:
    """A base64 PNG ``<img>`` for an image array or an image file path, else None."""
    try:
        from PIL import Image

        if _is_image_array(value):
            img = Image.fromarray(value)
        elif isinstance(value, (str, os.PathLike)) and str(value).lower().endswith(IMAGE_SUFFIXES) and os.path.isfile(value):
            img = Image.open(value)
            img.draft("RGB", (size * 2, size * 2))
            img = img.convert("RGB")
        else:
            return None
        img.thumbnail((size, size))
        buf = io.BytesIO()
        img.save(buf, "PNG")
        data = base64.b64encode(buf.getvalue()).decode()
        return f'<img src="data:image/png;base64,{data}" style="max-width:{size}px;max-height:{size}px"/>'
    except Exception:  # noqa: BLE001 - a preview never breaks the table
        return None


def html_table(rows: list[Any], width: int = 80) -> str:
    """Rows as an HTML table: images as thumbnails (beside their path), vectors previewed."""
    if not rows:
        return "<p>(no rows)</p>"
    dict_rows = [r if isinstance(r, dict) else {"value": r} for r in rows]
    columns = list(dict.fromkeys(k for r in dict_rows for k in r))
    out = ['<table class="embedflow">', "<thead><tr>" + "".join(f"<th>{html.escape(str(c))}</th>" for c in columns) + "</tr></thead>", "<tbody>"]
    for row in dict_rows:
        cells = []
        for c in columns:
            value = row.get(c, "")
            thumb = _thumbnail(value)
            text = html.escape(cell_text(value, width))
            cells.append(f"<td>{thumb}<br/><small>{text}</small></td>" if thumb else f"<td>{text}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</tbody></table>")
    return "\n".join(out)


def report(rows: list[Any]) -> str:
    """Rows for a terminal: a table, except that a column of search hits is listed one hit per
    line under its row (rank, similarity, id and stored fields)."""
    dict_rows = [r if isinstance(r, dict) else {"value": r} for r in rows]
    hit_columns = [c for c in dict.fromkeys(k for r in dict_rows for k in r) if any(_hits(r.get(c)) for r in dict_rows)]
    if not hit_columns:
        return text_table(rows)
    lines = []
    for row in dict_rows:
        head = "  ".join(f"{k}: {cell_text(v, 80)}" for k, v in row.items() if k not in hit_columns)
        lines.append(head)
        for column in hit_columns:
            for rank, hit in enumerate(row.get(column) or [], 1):
                extra = "  ".join(f"{k}={cell_text(v, 80)}" for k, v in hit.items() if k not in ("id", "distance") and str(v) != str(hit["id"]))
                lines.append(f"  {rank:>2}. {hit['distance']:.3f}  {hit['id']}" + (f"  {extra}" if extra else ""))
    return "\n".join(lines)


class PrintSink(Sink):
    """Prints the rows as a table at the end (search hits one per line): the ``print`` sink."""

    def __init__(self, columns: Sequence[str] | None = None):
        self.columns = tuple(columns) if columns else None

    def open(self, context: SinkContext) -> None:
        super().open(context)
        self.rows: list[Any] = []

    def write(self, numbers: Sequence[int], rows: list[Any]) -> None:
        self.rows.extend(select_columns(rows, self.columns) if self.context.named else rows)

    def close(self) -> int:
        print(report(self.rows))
        return len(self.rows)
