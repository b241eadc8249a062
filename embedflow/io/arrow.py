"""Conversions between rows and Apache Arrow: vectors become fixed-size lists of their dtype.

>>> import numpy as np
>>> from embedflow.io.arrow import column_to_arrow
>>> column_to_arrow([np.ones(3, np.float32), np.zeros(3, np.float32)]).type
FixedSizeListType(fixed_size_list<item: float>[3])
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np


def as_numpy(value: Any) -> Any:
    """A torch tensor becomes a numpy array; anything else is returned unchanged."""
    if type(value).__name__ == "Tensor" and hasattr(value, "detach"):
        return value.detach().cpu().numpy()
    return value


def _numeric(dtype: np.dtype) -> bool:
    return dtype.kind in "fiub"


def _vectors(values: list[np.ndarray]) -> Any:
    """1-D arrays (None allowed) as fixed-size lists when lengths agree, else variable lists."""
    import numpy as np
    import pyarrow as pa

    present = [v for v in values if v is not None]
    dtype = np.result_type(*[v.dtype for v in present])
    lengths = {len(v) for v in present}
    mask = np.array([v is None for v in values])
    arrow_type = pa.from_numpy_dtype(dtype)
    if len(lengths) == 1:
        (size,) = lengths
        filled = [v if v is not None else np.zeros(size, dtype) for v in values]
        flat = pa.array(np.concatenate(filled).astype(dtype, copy=False), type=arrow_type)
        arr = pa.FixedSizeListArray.from_arrays(flat, size)
        if mask.any():
            arr = pa.array([None if m else row for m, row in zip(mask, arr.to_pylist())], type=pa.list_(arrow_type, size))
        return arr
    return pa.array([None if v is None else v.astype(dtype, copy=False) for v in values], type=pa.list_(arrow_type))


def _matrices(values: list[np.ndarray]) -> Any:
    """2-D arrays (e.g. one row per token) as lists of fixed-size lists."""
    import numpy as np
    import pyarrow as pa

    present = [v for v in values if v is not None]
    dtype = np.result_type(*[v.dtype for v in present])
    widths = {v.shape[1] for v in present}
    inner = pa.list_(pa.from_numpy_dtype(dtype), widths.pop()) if len(widths) == 1 else pa.list_(pa.from_numpy_dtype(dtype))
    return pa.array([None if v is None else list(v.astype(dtype, copy=False)) for v in values], type=pa.list_(inner))


def column_to_arrow(values: list[Any]) -> Any:
    """Convert one column of Python values to an Arrow array with the most faithful type."""
    import numpy as np
    import pyarrow as pa

    values = [as_numpy(v) for v in values]
    present = [v for v in values if v is not None]
    if present and all(isinstance(v, np.ndarray) and _numeric(v.dtype) for v in present):
        ndims = {v.ndim for v in present}
        if ndims == {1}:
            return _vectors(values)
        if ndims == {2}:
            return _matrices(values)
        return pa.array([None if v is None else v.tolist() for v in values])
    if present and all(isinstance(v, np.generic) for v in present):
        return pa.array([None if v is None else v.item() for v in values])
    return pa.array(values)


def rows_to_table(rows: list[Any], named: bool, value_column: str = "value") -> Any:
    """Rows (dicts in named mode, plain values otherwise) as an Arrow table."""
    import pyarrow as pa

    if not named:
        return pa.table({value_column: column_to_arrow(rows)})
    columns: dict[str, list[Any]] = {}
    for row in rows:
        for key in row:
            columns.setdefault(key, [])
    for key, col in columns.items():
        col.extend(row.get(key) for row in rows)
    return pa.table({k: column_to_arrow(v) for k, v in columns.items()})


def _column_to_python(col: Any) -> list[Any]:

    import numpy as np
    import pyarrow as pa

    typ = col.type
    if pa.types.is_fixed_size_list(typ) and pa.types.is_primitive(typ.value_type) and col.null_count == 0:
        flat = col.flatten().to_numpy(zero_copy_only=False)
        return list(flat.reshape(len(col), typ.list_size))
    if pa.types.is_list(typ) and pa.types.is_primitive(typ.value_type):
        return [None if v is None else np.asarray(v, dtype=typ.value_type.to_pandas_dtype()) for v in col.to_pylist()]
    return col.to_pylist()


def batch_to_rows(batch: Any) -> list[dict[str, Any]]:
    """An Arrow record batch as row dicts, vectors as numpy arrays."""
    columns = {name: _column_to_python(batch.column(i)) for i, name in enumerate(batch.schema.names)}
    return [dict(zip(columns, values)) for values in zip(*columns.values())] if columns else []
