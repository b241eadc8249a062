"""Sources (glob, files) and sinks (numpy, arrow, parquet, pandas)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import embedflow as ef
from embedflow.errors import ColumnError, EmbedflowError, PlanError


def test_glob_is_sorted_recursive_and_skips_directories(tmp_path):
    for rel in ("b.jpg", "a.jpg", "sub/c.jpg", "sub/deeper/d.jpg"):
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    (tmp_path / "dir.jpg").mkdir()
    flat = ef.glob(str(tmp_path / "*.jpg")).to_list()
    assert [p.rsplit("/", 1)[-1] for p in flat] == ["a.jpg", "b.jpg"]
    deep = ef.glob(str(tmp_path / "**" / "*.jpg")).to_list()
    assert len(deep) == 4 and deep == sorted(deep)
    named = ef.glob["path"](str(tmp_path / "a.jpg"), str(tmp_path / "b.jpg")).to_list()
    assert [r["path"].rsplit("/", 1)[-1] for r in named] == ["a.jpg", "b.jpg"]


def test_glob_matching_nothing_warns(tmp_path):
    with pytest.warns(UserWarning, match="matched no file"):
        assert ef.glob(str(tmp_path / "*.png")).to_list() == []


def test_read_text_keeps_blank_lines(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("one\n\nthree\r\n", encoding="utf-8")
    assert ef.read_text(path).to_list() == ["one", "", "three"]
    assert ef.read_text["text"](path).to_list()[0] == {"text": "one"}


def test_read_jsonl_reports_file_and_line(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"a": 1}\n\n{"a": 2, "b": 3}\n{oops\n')
    with pytest.raises(EmbedflowError, match=r"t.jsonl:4: not valid JSON"):
        ef.read_jsonl(path).to_list()
    path.write_text('{"a": 1}\n{"a": 2, "b": 3}\n')
    assert ef.read_jsonl(path).to_list() == [{"a": 1}, {"a": 2, "b": 3}]
    assert ef.read_jsonl["a"](path).to_list() == [{"a": 1}, {"a": 2}]


def test_read_csv(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("id,text\n1,hello\n2,world\n")
    assert ef.read_csv(path).to_list() == [{"id": "1", "text": "hello"}, {"id": "2", "text": "world"}]
    with pytest.raises(ef.EmbedflowError, match="t.csv:2: no column 'body'"):
        ef.read_csv["body"](path).to_list()


def test_to_numpy_stacks_rows_or_the_vector_column():
    vecs = [np.arange(3, dtype=np.float32), np.ones(3, np.float32)]
    assert ef.dc(vecs).to_numpy().shape == (2, 3)
    named = ef.dc["v"](vecs).map["v", "n"](lambda v: float(v.sum()))
    out = named.to_numpy()  # the only array-valued column
    assert out.dtype == np.float32 and out.shape == (2, 3)
    np.testing.assert_array_equal(named.to_numpy(column="n"), [3.0, 3.0])
    with pytest.raises(ColumnError, match="choose one of"):
        ef.dc["a", "b"]([(np.ones(2), np.ones(2))]).to_numpy()
    with pytest.raises(PlanError, match="different shapes"):
        ef.dc([np.ones(2), np.ones(3)]).to_numpy()


def test_to_parquet_writes_vectors_as_fixed_size_float32_lists(tmp_path):
    rows = [(f"p{i}", np.full(4, i, np.float32), i) for i in range(10)]
    out = ef.dc["path", "vec", "n"](rows).to_parquet(tmp_path / "sub" / "v.parquet")
    table = pq.read_table(out)
    assert table.schema.field("vec").type == pa.list_(pa.float32(), 4)
    assert table.schema.field("path").type == pa.string()
    assert table.schema.field("n").type == pa.int64()
    assert table.column("path").to_pylist() == [f"p{i}" for i in range(10)]
    back = ef.read_parquet(out).to_list()
    np.testing.assert_array_equal(back[3]["vec"], np.full(4, 3, np.float32))
    assert back[3]["vec"].dtype == np.float32
    assert [p.name for p in out.parent.iterdir()] == ["v.parquet"]


def test_to_parquet_streams_in_row_groups(tmp_path):
    from embedflow.io.files import ParquetSink
    from embedflow.io.sinks import SinkContext

    sink = ParquetSink(tmp_path / "g.parquet", row_group_rows=10)
    sink.open(SinkContext(named=True))
    for i in range(25):
        sink.write([i], [{"i": i}])
    out = sink.close()
    meta = pq.ParquetFile(out).metadata
    assert meta.num_rows == 25 and meta.num_row_groups == 3


def test_a_failed_run_leaves_no_parquet_file(tmp_path):
    target = tmp_path / "v.parquet"
    with pytest.raises(ef.ItemError):
        ef.dc["x"]([1, 0]).map["x", "y"](lambda x: 1 / x).to_parquet(target)
    assert list(tmp_path.iterdir()) == []


def test_token_matrices_go_to_arrow_as_lists_of_vectors():
    mats = [np.ones((2, 3), np.float32), np.zeros((5, 3), np.float32)]
    table = ef.dc["tokens"](mats).to_arrow()
    assert table.schema.field("tokens").type == pa.list_(pa.list_(pa.float32(), 3))
    assert [len(x) for x in table.column("tokens").to_pylist()] == [2, 5]


def test_to_arrow_unnamed_rows_go_to_a_value_column():
    table = ef.dc([1, 2]).to_arrow()
    assert table.column_names == ["value"] and table.num_rows == 2


def test_to_pandas():
    pd = pytest.importorskip("pandas")
    frame = ef.dc["n"]([1, 2]).to_pandas()
    assert isinstance(frame, pd.DataFrame) and frame["n"].tolist() == [1, 2]
