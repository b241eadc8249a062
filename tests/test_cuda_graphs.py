"""CUDA graphs (:mod:`embedflow.engines.cuda_graphs`), their logic checked on the CPU with the
recording faked (tests/gpu records real ones): one graph per batch signature, replays give
the usual forward's values, a graph that fails to record or disagrees turns graphs off with
one warning and no wrong value, and the cap on signatures."""

from __future__ import annotations

import contextlib
import warnings

import pytest
import torch

import embedflow as ef
from embedflow.engines import cuda_graphs
from embedflow.engines.batching import ModelBatcher, Replica
from embedflow.engines.cuda_graphs import GraphRunner, _Graph, graphs_wanted, runner_for, same_output, signature
from embedflow.engines.failures import FailureLog
from embedflow.plan import lower


def pooled(batch):
    """A stand-in forward: mean of the embedded ids over the mask, and the ids back."""
    table = torch.arange(40, dtype=torch.float32).reshape(20, 2)
    m = batch["attention_mask"].unsqueeze(-1).float()
    return (table[batch["input_ids"]] * m).sum(1) / m.sum(1).clamp(min=1e-9), batch["input_ids"]


def batch_of(rows, width, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"input_ids": torch.randint(0, 20, (rows, width), generator=g), "attention_mask": torch.ones(rows, width, dtype=torch.int64)}


class FakeRecording(GraphRunner):
    """Records by keeping the inputs' buffers and re-running forward on them at replay, as a
    CUDA graph replays its kernels on its buffers; ``broken`` makes replays wrong."""

    def __init__(self, forward, broken=False, fail=None):
        super().__init__(forward, "cuda:0", "text_embedding.transformers")
        self.recorded, self.broken, self.fail = 0, broken, fail

    def _capture(self, inputs):
        if self.fail is not None:
            raise self.fail
        self.recorded += 1
        outputs = self.forward(inputs)
        runner = self

        class Graph:
            def replay(self):
                for buffer, value in zip(cuda_graphs._leaves(outputs), cuda_graphs._leaves(runner.forward(inputs))):
                    buffer.copy_(-value if runner.broken and value.is_floating_point() else value)

        return _Graph(inputs, Graph(), outputs)


def test_one_graph_per_signature_and_replays_equal_the_forward():
    runner = FakeRecording(pooled)
    batches = [batch_of(4, 8, 0), batch_of(4, 8, 1), batch_of(2, 16, 2), batch_of(4, 8, 3), batch_of(2, 16, 4)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        outs = [runner(b) for b in batches]
    assert runner.recorded == 2 and len(runner.graphs) == 2 and runner.off is None
    for b, (vec, ids) in zip(batches, outs):
        want_vec, want_ids = pooled(b)
        assert torch.equal(vec, want_vec) and torch.equal(ids, want_ids)
    first, again = runner(batches[0]), runner(batches[0])
    assert first[0].data_ptr() != again[0].data_ptr()  # each replay's output is its own copy, not the graph's buffer


def test_a_graph_that_disagrees_turns_graphs_off_and_no_wrong_value_leaves():
    runner = FakeRecording(pooled, broken=True)
    b = batch_of(4, 8)
    with pytest.warns(UserWarning, match="CUDA graph's output differed from the usual forward's.*EMBEDFLOW_CUDA_GRAPHS=0"):
        vec, _ids = runner(b)
    assert torch.equal(vec, pooled(b)[0]) and runner.off is not None and not runner.graphs
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once
        assert torch.equal(runner(batch_of(4, 8, 7))[0], pooled(batch_of(4, 8, 7))[0])
    assert runner.recorded == 1


def test_a_recording_that_fails_turns_graphs_off_once():
    runner = FakeRecording(pooled, fail=RuntimeError("operation not permitted when stream is capturing"))
    b = batch_of(3, 8)
    with pytest.warns(UserWarning, match="recording a CUDA graph failed \\(RuntimeError: operation not permitted"):
        assert torch.equal(runner(b)[0], pooled(b)[0])
    assert runner(batch_of(3, 16))[0].shape == (3, 2) and runner.off.startswith("recording")


def test_a_recording_out_of_memory_leaves_that_shape_unrecorded_and_graphs_on():
    runner = FakeRecording(pooled, fail=torch.OutOfMemoryError("CUDA out of memory"))
    b = batch_of(2, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning: graphs stay on
        assert torch.equal(runner(b)[0], pooled(b)[0]) and torch.equal(runner(b)[0], pooled(b)[0])
    assert runner.off is None and len(runner.unrecorded) == 1
    runner.fail = None
    runner(batch_of(4, 8))  # another shape, room again: recorded
    assert runner.recorded == 1 and len(runner.graphs) == 1


def test_signatures_past_the_cap_run_as_usual(monkeypatch):
    monkeypatch.setattr(cuda_graphs, "MAX_GRAPHS", 2)
    runner = FakeRecording(pooled)
    for width in (8, 16, 24, 32):
        b = batch_of(2, width)
        assert torch.equal(runner(b)[0], pooled(b)[0])
    assert runner.recorded == 2 and runner.off is None


def test_signature_and_agreement():
    assert signature({"a": torch.zeros(2, 3), "b": (torch.ones(1, dtype=torch.int8),)}) == (
        "d",
        (("a", ("t", (2, 3), torch.float32)), ("b", ("l", "tuple", (("t", (1,), torch.int8),)))),
    )
    assert signature({"a": torch.zeros(2), "b": [1]}) is None and signature("text") is None
    x = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    assert same_output((x, torch.tensor([1, 2])), (x * 1.0001, torch.tensor([1, 2])))  # a zero row agrees with a zero row
    assert not same_output((x, torch.tensor([1, 2])), (x, torch.tensor([1, 3])))  # integers must be equal
    assert not same_output(x, torch.tensor([[2.0, -1.0], [0.0, 0.0]]))  # orthogonal rows
    assert not same_output(x, torch.tensor([[1.0, float("nan")], [0.0, 0.0]]))
    assert not same_output(x, x[:1])


def test_who_gets_graphs(monkeypatch):
    class Op(ef.Operator):
        cuda_graphs = True

    assert graphs_wanted(Op(), "cuda:0") and not graphs_wanted(Op(), "cpu") and not graphs_wanted(ef.Operator(), "cuda:0")
    op = Op()
    assert runner_for(op, "cuda:0", "x") is runner_for(op, "cuda:0", "x")  # kept with the operator, for later runs
    monkeypatch.setenv("EMBEDFLOW_CUDA_GRAPHS", "0")
    assert not graphs_wanted(Op(), "cuda:0") and runner_for(Op(), "cuda:0", "x") is None


def test_the_batching_routine_launches_through_the_replicas_graphs():
    class Model(ef.Operator):
        batchable = True

        def forward(self, batch):
            raise AssertionError("called directly, not through the graph runner")

        def collate(self, items):
            return torch.tensor(items)

        def postprocess(self, output):
            return output.tolist()

    calls = []

    def graphs(batch):
        calls.append(batch.shape)
        return batch * 10

    stage = lower(ef.dc([1, 2, 3]).map(Model()).plan).model_stages[0]
    replica = Replica("cpu", stage.step.target, contextlib.nullcontext, graphs=graphs)
    batcher = ModelBatcher(stage, replica.op, FailureLog())
    assert batcher.process(replica, [0, 1, 2], [1, 2, 3]) == ([0, 1, 2], [10, 20, 30]) and calls == [(3,)]
