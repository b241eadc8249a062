"""Text batches as a GPU gets them, checked on the CPU (issue 22): widths padded to a few
buckets, the token budget counted on the padded width, the same vectors in input order as
unbucketed batches, and one CUDA graph per bucket signature, recorded once per replica."""

from __future__ import annotations

import random
import warnings

import numpy as np
import pytest

import embedflow as ef
from embedflow.engines.batching import ModelBatcher, for_device, make_replica
from embedflow.engines.failures import FailureLog
from embedflow.plan import instantiate, lower
from embedflow_operators.text_embedding._tokens import bucket_width
from tests.test_cuda_graphs import FakeRecording

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
BUCKETS = {16, 24, 32, 40, 48, 64, 80, 96, 128, 160, 192, 256}


@pytest.fixture(scope="module")
def texts(sample_texts):
    rng = random.Random(3)
    return [" ".join(rng.sample(sample_texts, rng.randint(1, 4)))[: rng.randint(5, 900)] for _ in range(300)]


def _batcher(batch_size=32, max_tokens=2048):
    chain = ef.dc([]).text_embedding.transformers(model_name=MINILM, backend="torch", batch_size=batch_size, max_batch_tokens=max_tokens)
    stage = for_device(lower(chain.plan).model_stages[0], "cuda:0")
    op = instantiate(stage.step)
    op.setup("cpu")
    op.tokens.bucketed = True  # as on a GPU
    return ModelBatcher(stage, op, FailureLog()), make_replica("cpu", op, None)


def test_bucket_widths_are_few_and_hold_each_length():
    widths = {bucket_width(n) for n in range(1, 257)}
    assert widths == BUCKETS
    assert all(bucket_width(n) >= n and bucket_width(n) % 8 == 0 for n in range(1, 2049))


def test_bucketed_batches_give_the_usual_vectors_in_input_order(texts):
    batcher, replica = _batcher()
    numbers, out = batcher.process(replica, range(len(texts)), texts)
    assert list(numbers) == list(range(len(texts)))  # input order, every row
    expected = ef.dc(texts).text_embedding.transformers(model_name=MINILM, backend="torch").to_numpy()  # padded to each batch's longest
    np.testing.assert_allclose(np.stack(out), expected, atol=2e-5)


def test_widths_are_buckets_and_the_budget_counts_padded_tokens(texts):
    batcher, _replica = _batcher(batch_size=64, max_tokens=2048)
    prepared = batcher.prepare(range(len(texts)), texts)
    widths = set()
    for group in batcher.cut(prepared):
        ids = batcher.collate(group)["input_ids"]
        widths.add(ids.shape[1])
        assert ids.shape[1] in BUCKETS or ids.shape[1] == batcher.op.limit
        assert ids.numel() <= 2048 or len(group) == 1
    assert len(widths) > 3


def test_graphs_for_the_bucket_shapes_are_recorded_once_per_replica(texts):
    batcher, replica = _batcher()
    replica.graphs = runner = FakeRecording(replica.op.forward)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no graph turned off
        first = batcher.process(replica, range(len(texts)), texts)[1]
        recorded = runner.recorded
        second = batcher.process(replica, range(len(texts)), texts)[1]
    assert recorded == len(runner.graphs) and 3 < recorded <= 16
    assert runner.recorded == recorded  # the second run replays them all
    np.testing.assert_allclose(np.stack(first), np.stack(second), atol=1e-6)
