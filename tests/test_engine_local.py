"""The local engine: batching of batchable operators, failures, .safe(), devices."""

from __future__ import annotations

import threading
import warnings

import numpy as np
import pytest

import embedflow as ef
from embedflow.errors import ItemError, PlanError


class Recorder(ef.Operator):
    """A batchable operator that records the batch sizes forward() sees."""

    batchable = True
    default_batch_size = 4

    def __init__(self, fail_on=None):
        self.sizes = []
        self.fail_on = fail_on
        self.setups = []

    def setup(self, device):
        self.setups.append(device)

    def preprocess(self, x):
        if x == "bad-pre":
            raise ValueError("cannot prepare")
        return x

    def forward(self, batch):
        self.sizes.append(len(batch))
        if self.fail_on is not None and self.fail_on in batch:
            raise RuntimeError("forward broke")
        return [x * 10 for x in batch]


def test_forward_sees_batches_of_batch_size():
    op = Recorder()
    out = ef.dc(range(10)).map(op, batch_size=3).to_list()
    assert out == [x * 10 for x in range(10)]
    assert op.sizes == [3, 3, 3, 1]


def test_batch_size_default_comes_from_the_operator():
    op = Recorder()
    ef.dc(range(9)).map(op).to_list()
    assert op.sizes == [4, 4, 1]


def test_setup_runs_once_per_device_and_is_reused_by_later_runs():
    op = Recorder()
    dc = ef.dc(range(3)).map(op).set_device("cpu")
    dc.to_list()
    dc.to_list()
    assert op.setups == ["cpu"]


def test_tensors_are_stacked_and_results_come_back_as_numpy():
    import torch

    class Double(ef.Operator):
        batchable = True

        def preprocess(self, x):
            return torch.tensor(x, dtype=torch.float32)

        def forward(self, batch):
            assert batch.shape == (2, 3)
            assert not torch.is_grad_enabled()  # the engine runs forward under inference_mode
            return batch * 2

        def postprocess(self, output):
            return list(output.numpy())

    out = ef.dc([[1, 2, 3], [4, 5, 6]]).map(Double(), batch_size=2).to_numpy()
    np.testing.assert_array_equal(out, [[2, 4, 6], [8, 10, 12]])


def test_a_failing_item_names_the_step_and_row():
    with pytest.raises(ItemError, match=r"map failed on row 2 \(input 0\): ZeroDivisionError") as err:
        ef.dc([1, 2, 0, 4]).map(lambda x: 1 / x).to_list()
    assert isinstance(err.value.__cause__, ZeroDivisionError)
    assert err.value.row == 2


def test_a_failing_item_in_a_batch_is_found_and_named():
    with pytest.raises(ItemError, match=r"row 5 .*RuntimeError: forward broke"):
        ef.dc(range(8)).map(Recorder(fail_on=5), batch_size=4).to_list()


def test_safe_keeps_every_good_row_and_records_the_bad_ones():
    failed = []
    data = [1, "bad-pre", 3, 4, 5, 6, 7]
    with pytest.warns(UserWarning, match=r"2 item\(s\) failed and were skipped"):
        out = ef.dc(data).safe(errors=failed).map(Recorder(fail_on=5), batch_size=3).to_list()
    assert out == [10, 30, 40, 60, 70]
    assert sorted((f["row"], f["error_type"]) for f in failed) == [(1, "ValueError"), (4, "RuntimeError")]
    first = min(failed, key=lambda f: f["row"])
    assert first["step"] == "map" and "cannot prepare" in first["message"]


def test_safe_records_to_a_jsonl_file(tmp_path):
    import json

    path = tmp_path / "errors.jsonl"
    with pytest.warns(UserWarning, match=str(path).replace("\\", "\\\\")):
        out = ef.dc(["1", "x", "3", "y"]).safe(errors=path).map(int).to_list()
    assert out == [1, 3]
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["row"] for r in records] == [1, 3]
    assert records[0]["item"] == "'x'"


def test_safe_applies_to_filter_and_flat_map_too():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert ef.dc([1, 0, 2]).safe().filter(lambda x: 1 / x).to_list() == [1, 2]
        assert ef.dc([[1], None, [2]]).safe().flat_map(iter).to_list() == [1, 2]


def test_steps_before_safe_still_raise():
    with pytest.raises(ItemError):
        ef.dc([0]).map(lambda x: 1 / x).safe().to_list()


def test_safe_rejects_an_unusable_target():
    with pytest.raises(TypeError, match="a list, a callable, or a file path"):
        ef.dc([1]).safe(errors=42)


def test_postprocess_must_return_one_result_per_item():
    class Wrong(ef.Operator):
        batchable = True

        def postprocess(self, output):
            return [1]

    with pytest.raises(ef.EmbedflowError, match="postprocess returned 1 results for a batch of 3"):
        ef.dc([1, 2, 3]).map(Wrong(), batch_size=3).to_list()


def test_cuda_without_a_gpu_fails_with_the_fix():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(PlanError, match="no CUDA GPU.*device='cpu'"):
        ef.dc([1]).map(Recorder(), device="cuda").to_list()


def test_no_threads_are_left_behind():
    before = set(threading.enumerate())
    ef.dc(range(100)).map(lambda x: x, workers=3).to_list()
    it = iter(ef.dc(range(1000)).map(lambda x: x, workers=3))
    next(it)
    it.close()
    leftover = [t for t in threading.enumerate() if t not in before and t.name.startswith("embedflow")]
    assert leftover == []


def test_a_one_row_batch_whose_postprocess_fails_is_skipped_not_passed_on():
    """Under .safe() a row whose own batch fails after the forward (in postprocess) is recorded
    and dropped: the output holds the good rows only, never a placeholder for the bad one."""
    import torch

    class FailsOnThree(ef.Operator):
        batchable = True

        def preprocess(self, x):
            return torch.tensor(x)

        def forward(self, batch):
            return batch

        def postprocess(self, output):
            if 3 in output.tolist():
                raise ValueError("three is refused")
            return [int(v) for v in output]

    failed: list = []
    with pytest.warns(UserWarning, match="1 item\\(s\\) failed and were skipped"):
        out = ef.dc([1, 2, 3, 4]).safe(errors=failed).map(FailsOnThree(), batch_size=1).to_list()
    assert out == [1, 2, 4] and [f["row"] for f in failed] == [2]
