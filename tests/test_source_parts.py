"""Sources as parts: a file cut into parts (read by Ray tasks) gives exactly the rows, row
numbers and errors of the whole file read at once, and a resumed run skips the rows already done."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import embedflow as ef
from embedflow.errors import ColumnError, EmbedflowError
from embedflow.io.ranges import RowFilter, as_ranges
from embedflow.io.readers import BadRow, line_parts, parquet_parts

AWKWARD_TEXT = "héllo wörld\r\nsecond\n\n   \nold mac\rline\n" + "".join(f"row {i}\n" for i in range(40)) + "no newline at the end"


def rows_of(parts):
    return [pair for part in parts for pair in part]


@pytest.mark.parametrize("target_bytes", [1, 2, 7, 64, 1 << 20])
def test_text_parts_give_the_rows_and_numbers_of_one_stream(tmp_path, target_bytes):
    path = tmp_path / "t.txt"
    path.write_bytes(AWKWARD_TEXT.encode("utf-8"))
    stream = ef.read_text(path).to_list()
    parts = line_parts(path, "text", target_bytes=target_bytes)
    assert rows_of(parts) == list(enumerate(stream))
    assert sum(p.rows for p in parts) == len(stream) == 47
    assert (len(parts) > 10) == (target_bytes < 64)
    named = ef.read_text["text"](path).plan.source.parts(split=True)
    assert [row for _, row in rows_of(named)] == [{"text": line} for line in stream]


def test_jsonl_parts_skip_blank_lines_and_name_the_line_of_a_bad_one(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"a": 1}\n\n{"a": 2, "b": 0}\n  \n{"a": 3}\n')
    stream = ef.read_jsonl["a"](path).to_list()
    for target in (1, 5, 100):
        assert rows_of(line_parts(path, "jsonl", ("a",), target_bytes=target)) == list(enumerate(stream))
    path.write_text('{"a": 1}\n\n{"a": 2}\n[1]\n')
    bad = rows_of(line_parts(path, "jsonl", target_bytes=3))[-1]
    assert bad[0] == 2 and isinstance(bad[1], BadRow)  # the engine records or raises it
    with pytest.raises(EmbedflowError, match=r"t\.jsonl:4: a JSON list, not an object"):
        ef.read_jsonl(path).to_list()


def test_parquet_parts_are_whole_row_groups_with_their_first_row_number(tmp_path):
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"n": list(range(100)), "s": [str(i) for i in range(100)]}), path, row_group_size=7)
    parts = parquet_parts(path, ("n",), target_rows=20)
    assert [p.first_row for p in parts] == [0, 21, 42, 63, 84]  # 3 groups of 7 each
    assert rows_of(parts) == [(i, {"n": i}) for i in range(100)]
    with pytest.raises(ColumnError, match="no column 'x'; the file has \\['n', 's'\\]"):
        parquet_parts(path, ("x",))


def test_resumed_parts_skip_done_rows_and_stop_at_the_limit(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("".join(f"{i}\n" for i in range(100)))
    parts = line_parts(path, "text", target_bytes=30)
    done = set(range(30)) | {50, 51, 95}
    remaining = RowFilter(as_ranges(done), limit=90).apply(parts)
    assert [n for n, _ in rows_of(remaining)] == [n for n in range(30, 90) if n not in done]
    assert all(p.part.first_row < 90 for p in remaining)
    assert remaining[0].part.first_row > 0  # parts whose every row is done are not read at all
    # each part carries only the finished ranges that touch it
    assert all(a <= p.part.first_row + p.rows and b >= p.part.first_row for p in remaining for a, b in p.done)
    whole = ef.read_text(path).plan.source.with_filter(RowFilter(as_ranges(done), limit=90)).parts()
    assert rows_of(whole) == rows_of(remaining)  # the whole file, filtered the same way


def test_sources_that_cannot_be_cut_are_one_part(tmp_path):
    (tmp_path / "a.csv").write_text("x\n1\n")
    items, listing = ef.dc([1, 2]).plan.source.parts(split=True), ef.glob(str(tmp_path / "*.csv")).plan.source.parts(split=True)
    csv_parts = ef.read_csv(tmp_path / "a.csv").plan.source.parts(split=True)  # quoted fields may span lines
    assert len(items) == len(listing) == len(csv_parts) == 1
    assert not items[0].portable and not listing[0].portable  # read where the driver is
    assert csv_parts[0].portable and rows_of(csv_parts) == [(0, {"x": "1"})]
