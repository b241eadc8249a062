"""Preparing items in worker processes (an operator's ``preprocess_processes``; for text,
``processes``): the same vectors, rows, order, truncation warnings and error
handling as preparing in threads; no row lost when a worker dies; no process left behind."""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest

import embedflow as ef
from embedflow.engines.prepare_processes import PreparePool, existing_pool, process_count
from embedflow.engines.preprocess import Raised
from embedflow.engines.replicas import cached
from embedflow.errors import ItemError

MINILM = "sentence-transformers/all-MiniLM-L6-v2"


def _texts(sample_texts):
    long = " ".join(sample_texts[:40])  # over 256 tokens: cut
    return [*sample_texts[:60], long, "", "Ünïcödé façade — naïve café ☕", long]


def _started(pool: PreparePool, timeout: float = 60.0) -> PreparePool:
    deadline = time.monotonic() + timeout
    while not all(w.started() is True for w in pool.workers):
        assert time.monotonic() < deadline, "the worker processes did not start"
        time.sleep(0.05)
    return pool


def _pool_of(chain) -> PreparePool:
    (op,) = cached(chain.plan.steps[-1]).values()
    pool = existing_pool(op)
    assert pool is not None
    return pool


def _refuse(*_args):
    raise AssertionError("prepared in the parent process, not in a worker")


def test_processes_give_the_vectors_of_threads_in_order_and_count_cut_texts(sample_texts, monkeypatch):
    texts = _texts(sample_texts)
    with pytest.warns(UserWarning, match="2 text\\(s\\) were longer than 256 tokens"):
        threads = ef.dc(texts).text_embedding.transformers(model_name=MINILM, backend="torch", processes=0, batch_size=8).to_numpy()
    chain = ef.dc(texts).text_embedding.transformers(model_name=MINILM, backend="torch", processes=2, batch_size=8)
    with pytest.warns(UserWarning, match="were longer than"):
        chain.to_numpy()  # the first run may prepare in threads while the workers start
    pool = _started(_pool_of(chain))
    (op,) = cached(chain.plan.steps[-1]).values()
    monkeypatch.setattr(op.tokens, "many", _refuse)  # from now on only the workers tokenize
    monkeypatch.setattr(op.tokens, "one", _refuse)
    with pytest.warns(UserWarning, match="2 text\\(s\\) were longer than 256 tokens") as caught:
        procs = chain.to_numpy()
    assert sum("were longer than" in str(w.message) for w in caught) == 1  # one warning, counts summed over workers
    np.testing.assert_allclose(procs, threads, atol=1e-6)
    with pytest.warns(UserWarning, match="were longer than"):
        report = chain.explain(analyze=True)
    assert pool.processes == 2 and "preprocess (2 processes)" in report
    workers = list(pool.workers)
    pool.close()
    assert all(w.process.poll() is not None for w in workers)


def test_a_bad_row_is_named_or_skipped_with_processes(sample_texts):
    rows = [*sample_texts[:5], 42, *sample_texts[5:9]]
    chain = ef.dc(rows).text_embedding.transformers(model_name=MINILM, backend="torch", processes=1)
    expected = ef.dc(sample_texts[:9]).text_embedding.transformers(model_name=MINILM, backend="torch", processes=0).to_numpy()
    with pytest.raises(ItemError, match="row 5 \\(input 42\\).*expects a str, got int: 42"):
        chain.to_list()
    _started(_pool_of(chain))
    with pytest.raises(ItemError, match="row 5 \\(input 42\\).*expects a str, got int: 42"):
        chain.to_list()  # now the error comes from the worker process
    failed: list = []
    with pytest.warns(UserWarning, match="1 item\\(s\\) failed and were skipped"):
        out = ef.dc(rows).safe(errors=failed).text_embedding.transformers(model_name=MINILM, backend="torch", processes=1).to_list()
    assert len(out) == 9 and len(failed) == 1 and failed[0]["row"] == 5 and failed[0]["error_type"] == "TypeError"
    np.testing.assert_allclose(np.stack(out), expected, atol=1e-6)


def test_a_killed_worker_loses_no_row_and_is_replaced(sample_texts):
    chain = ef.dc(sample_texts[:20]).text_embedding.transformers(model_name=MINILM, backend="torch", processes=1, batch_size=4)
    first = chain.to_numpy()
    pool = _started(_pool_of(chain))
    (worker,) = pool.workers
    os.kill(worker.process.pid, signal.SIGKILL)
    worker.process.wait()
    again = chain.to_numpy()  # the call that meets the dead worker prepares in this process
    np.testing.assert_allclose(again, first, atol=1e-6)
    (fresh,) = pool.workers
    assert fresh is not worker and fresh.process.poll() is None
    pool.close()


def test_a_worker_error_travels_back_as_the_items_error():
    step = ef.dc([]).text_embedding.transformers(model_name=MINILM).plan.steps[-1]
    pool = _started(PreparePool(step, "cpu", processes=1))
    try:
        items = pool.prepare([("a b",), (None,), ("c",)])
        assert items is not None and len(items) == 3
        assert isinstance(items[1], Raised) and "expects a str, got NoneType" in str(items[1].error)
        assert items[0]["input_ids"][0] == 101 and items[2]["input_ids"][-1] == 102  # [CLS] ... [SEP]
    finally:
        pool.close()


def test_workers_that_cannot_start_leave_the_work_to_threads(tmp_path):
    step = ef.dc([]).text_embedding.transformers(model_name=str(tmp_path / "no-model-here")).plan.steps[-1]
    pool = PreparePool(step, "cpu", processes=1)
    try:
        assert pool.prepare([("a",)]) is None  # starting: not waited for
        deadline = time.monotonic() + 60
        with pytest.warns(
            UserWarning,
            match="preprocessing worker processes cannot serve \\(they could not start: (OSError|ModelNotFoundError): .*cannot load model",
        ):
            while pool.failed is None and time.monotonic() < deadline:
                assert pool.prepare([("a",)]) is None
                time.sleep(0.05)
        assert pool.failed is not None and pool.workers[0].process.poll() is not None
    finally:
        pool.close()


def test_an_operator_that_cannot_be_rebuilt_in_a_worker_is_prepared_in_threads():
    class Twice(ef.Operator):
        batchable = True
        preprocess_processes = 2

        def setup_preprocess(self, device):
            pass

        def preprocess(self, x):
            return x * 2

        def forward(self, batch):
            return batch

        def postprocess(self, output):
            return list(output)

    with pytest.warns(UserWarning, match="processes=2 needs an operator of an installed package"):
        assert ef.dc([1, 2, 3]).map(Twice()).to_list() == [2, 4, 6]


def test_how_many_processes_and_bad_values():
    assert process_count("auto", "cpu", 64) == 0 and process_count(None, "cuda:0", 64) == 0
    assert process_count("auto", "cuda:0", 16) == 14 and process_count("auto", "cuda:0", 6) == 4 and process_count("auto", "cuda:0", 3) == 0
    assert process_count("auto", "cuda:0", 96) == 32  # capped
    assert process_count(3, "cpu") == 3
    with pytest.raises(ef.PlanError, match="processes=-1 must be 0 \\(prepare in threads\\) or a number of worker processes"):
        ef.dc(["a"]).text_embedding.transformers(model_name=MINILM, processes=-1)


def test_tokenizer_processes_is_the_old_name_of_processes():
    """One name per concept (issue 23): the operator's old parameter sets the execution option,
    says the new spelling once, and cannot disagree with it."""
    with pytest.warns(FutureWarning, match=r"text_embedding.transformers\(\): tokenizer_processes= is deprecated .* write processes=2") as caught:
        old = ef.dc(["a"]).text_embedding.transformers(model_name=MINILM, tokenizer_processes=2)
    assert len(caught) == 1 and caught[0].filename == __file__  # pointed at the user's line
    assert old.plan.steps[0].options.processes == 2 and "tokenizer_processes" not in old.plan.steps[0].params
    assert old.explain() == ef.dc(["a"]).text_embedding.transformers(model_name=MINILM, processes=2).explain()
    with pytest.raises(ef.ParameterError, match=r"tokenizer_processes=2 and processes=4 set one thing .* give processes= only"):
        ef.dc(["a"]).text_embedding.transformers(model_name=MINILM, tokenizer_processes=2, processes=4)


def test_the_processes_option_prepares_images_as_threads_do(sample_images, monkeypatch):
    paths = [str(p) for p in sample_images[:6]]
    options = {"model_name": "efficientnet_lite0", "backend": "torch", "decode": "cpu", "batch_size": 4}  # packaged weights: the same in both
    threads = ef.dc(paths).image_embedding.timm(**options).to_numpy()
    chain = ef.dc(paths).image_embedding.timm(**options, processes=1)
    chain.to_numpy()
    _started(_pool_of(chain))
    (op,) = cached(chain.plan.steps[-1]).values()
    monkeypatch.setattr(op, "preprocess", _refuse)  # from now on only the workers make pixels
    np.testing.assert_allclose(chain.to_numpy(), threads, atol=1e-5)


def test_the_processes_option_is_checked():
    assert "processes=2" in ef.dc(["a"]).text_embedding.transformers(model_name=MINILM, processes=2).explain()
    with pytest.raises(ef.PlanError, match="processes=-1 must be 0 \\(prepare in threads\\) or a number of worker processes"):
        ef.dc(["a"]).text_embedding.transformers(model_name=MINILM, processes=-1)
    with pytest.raises(ef.ParameterError, match="processes=2 prepares a model step's items.*normalize is not a model step"):
        ef.dc([[1.0]]).normalize(processes=2)


def test_a_worker_that_dies_while_starting_leaves_the_work_to_threads():
    step = ef.dc([]).text_embedding.transformers(model_name=MINILM).plan.steps[-1]
    pool = PreparePool(step, "cpu", processes=1)
    try:
        os.kill(pool.workers[0].process.pid, signal.SIGKILL)
        pool.workers[0].process.wait()
        with pytest.warns(UserWarning, match="cannot serve \\(they could not start: the worker process exited while starting \\(exit code -9\\)\\)"):
            assert pool.prepare([("a",)]) is None
        assert pool.failed is not None
    finally:
        pool.close()


def test_a_worker_killed_mid_run_loses_no_row(sample_texts, monkeypatch):
    from embedflow.engines.packing import Cut
    from embedflow.plan import lowering

    monkeypatch.setattr(lowering, "LOOKAHEAD_ITEMS", 8)  # sort windows of 16 rows: a worker gets several requests
    texts = sample_texts[:40]
    expected = ef.dc(texts).text_embedding.transformers(model_name=MINILM, backend="torch", processes=0, batch_size=4).to_numpy()
    chain = ef.dc(texts).text_embedding.transformers(model_name=MINILM, backend="torch", processes=1, batch_size=4)
    chain.head(1).to_list()  # starts the worker
    pool = _started(_pool_of(chain))
    calls = []
    real = PreparePool.prepare

    def prepare_then_kill(self, inputs):
        calls.append(len(inputs.inputs if isinstance(inputs, Cut) else inputs))
        if len(calls) == 2:  # the second request of the run meets a worker killed under it
            os.kill(self.workers[0].process.pid, signal.SIGKILL)
            self.workers[0].process.wait()
        return real(self, inputs)

    monkeypatch.setattr(PreparePool, "prepare", prepare_then_kill)
    np.testing.assert_allclose(chain.to_numpy(), expected, atol=1e-6)
    assert sum(calls) == 40 and len(calls) == 3 and pool.workers[0].process.poll() is None  # every row asked for once; replaced, alive


def test_an_input_that_cannot_travel_is_prepared_here(sample_texts):
    rows = [*sample_texts[:3], lambda: "not a text", *sample_texts[3:6]]
    failed: list = []
    chain = ef.dc(rows).safe(errors=failed).text_embedding.transformers(model_name=MINILM, backend="torch", processes=1)
    with pytest.warns(UserWarning, match="1 item\\(s\\) failed"):
        chain.to_list()
    pool = _started(_pool_of(chain))
    failed.clear()
    with pytest.warns(UserWarning, match="1 item\\(s\\) failed and were skipped"):
        out = chain.to_list()  # the chunk with the function cannot be pickled: prepared in this process
    assert len(out) == 6 and failed[0]["row"] == 3 and "expects a str, got function" in failed[0]["message"]
    assert pool.failed is None and pool.workers[0].process.poll() is None


def test_items_that_cannot_be_pickled_leave_the_work_to_threads(monkeypatch):
    step = ef.dc([]).text_embedding.transformers(model_name=MINILM).plan.steps[-1]
    pool = _started(PreparePool(step, "cpu", processes=1))
    try:
        monkeypatch.setattr(type(pool.workers[0]), "call", lambda self, payload: (None, "PicklingError: a function"))
        with pytest.warns(UserWarning, match="cannot serve \\(its prepared items cannot be sent between processes: PicklingError: a function\\)"):
            assert pool.prepare([("a",)]) is None
        assert pool.failed is not None and pool.prepare([("a",)]) is None
    finally:
        pool.close()


def test_a_worker_answers_unpicklable_items_with_the_reason(registered):
    import pickle
    import sys
    import threading
    from multiprocessing.connection import Connection

    from embedflow.engines.prepare_worker import serve

    @registered("test.lambdas")
    class Lambdas(ef.Operator):
        batchable = True

        def setup_preprocess(self, device):
            pass

        def preprocess(self, x):
            return lambda: x  # a prepared item pickle refuses

    step = ef.dc([1]).test.lambdas().plan.steps[-1]
    read_in, write_in = os.pipe()
    read_out, write_out = os.pipe()
    worker = threading.Thread(target=serve, args=(read_in, write_out))
    worker.start()
    send, recv = Connection(write_in, readable=False), Connection(read_out, writable=False)
    try:
        send.send_bytes(pickle.dumps((step, "cpu", [], list(sys.path))))
        assert pickle.loads(recv.recv_bytes()) == (True, None)
        send.send_bytes(pickle.dumps([(1,), (2,)]))
        items, why = pickle.loads(recv.recv_bytes())
        assert items is None and "pickle" in why.lower()
    finally:
        send.close()
        worker.join(10)
        recv.close()
    assert not worker.is_alive()


def test_no_process_can_be_started_then_threads_prepare(sample_texts, monkeypatch):
    import subprocess

    def refuse(*_args, **_kwargs):
        raise OSError(11, "Resource temporarily unavailable")

    expected = ef.dc(sample_texts[:5]).text_embedding.transformers(model_name=MINILM, backend="torch", processes=0).to_numpy()
    monkeypatch.setattr(subprocess, "Popen", refuse)
    chain = ef.dc(sample_texts[:5]).text_embedding.transformers(model_name=MINILM, backend="torch", processes=2)
    with pytest.warns(
        UserWarning, match="processes=2: the worker processes could not be started \\(BlockingIOError: .*Resource temporarily unavailable"
    ):
        got = chain.to_numpy()
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_a_worker_that_cannot_be_restarted_stops_the_workers_once(sample_texts, monkeypatch):
    import subprocess

    chain = ef.dc(sample_texts[:12]).text_embedding.transformers(model_name=MINILM, backend="torch", processes=1, batch_size=4)
    first = chain.to_numpy()
    pool = _started(_pool_of(chain))
    os.kill(pool.workers[0].process.pid, signal.SIGKILL)
    pool.workers[0].process.wait()
    monkeypatch.setattr(subprocess, "Popen", lambda *a, **k: (_ for _ in ()).throw(OSError(11, "Resource temporarily unavailable")))
    with pytest.warns(
        UserWarning, match="cannot serve \\(a worker could not be restarted: BlockingIOError: .*Resource temporarily unavailable"
    ) as caught:
        again = chain.to_numpy()
    np.testing.assert_allclose(again, first, atol=1e-6)
    assert {w.filename for w in caught if "cannot serve" in str(w.message)} == {__file__}  # the chain's line, not thread.py
    assert pool.failed is not None


def test_a_worker_ends_soon_after_its_parent_is_killed_even_while_starting(tmp_path):
    """Issue 21: workers outlived a kill -9 of the parent by 10-20 s while starting (importing,
    loading a tokenizer: not reading the pipe, so its closing went unseen)."""
    import signal
    import subprocess
    import sys

    busy = "from embedflow.engines.prepare_worker import die_with_parent; die_with_parent(); import time; time.sleep(120)"  # a slow start
    parent = subprocess.Popen(
        [sys.executable, "-c", f"import subprocess, sys; p = subprocess.Popen([sys.executable, '-c', {busy!r}]); print(p.pid, flush=True); p.wait()"],
        stdout=subprocess.PIPE,
        text=True,
    )
    child = int(parent.stdout.readline())
    time.sleep(1.0)  # the child is up and watching
    assert open(f"/proc/{child}/stat").read().split()[2] != "Z", "the worker did not start"
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        if open(f"/proc/{child}/stat").read().split()[2] == "Z":  # ended; a zombie until reaped
            break
        time.sleep(0.1)
    else:
        os.kill(child, signal.SIGKILL)
        raise AssertionError("the worker outlived its parent by 10 s")


def test_a_failing_batch_from_a_worker_is_retried_row_by_row(sample_texts, monkeypatch):
    """A batch a worker cut and collated fails in the forward: its rows are prepared again here
    and run one by one, so only the bad row is skipped and the others keep their vectors."""
    texts = [*sample_texts[:6], "poison " * 60, *sample_texts[6:10]]
    expected = ef.dc(sample_texts[:10]).text_embedding.transformers(model_name=MINILM, backend="torch", processes=0).to_numpy()
    failed: list = []
    chain = ef.dc(texts).safe(errors=failed).text_embedding.transformers(model_name=MINILM, backend="torch", processes=1, batch_size=4)
    chain.to_list()
    pool = _started(_pool_of(chain))
    (op,) = cached(chain.plan.steps[-1]).values()
    real = type(op).forward

    def refuses_long_rows(self, batch):
        if int(batch["attention_mask"].sum(1).max()) >= 60:
            raise ValueError("this model refuses the poison row")
        return real(self, batch)

    monkeypatch.setattr(type(op), "forward", refuses_long_rows)
    asked = []
    real_prepare = PreparePool.prepare
    monkeypatch.setattr(PreparePool, "prepare", lambda self, inputs: asked.append(type(inputs).__name__) or real_prepare(self, inputs))
    failed.clear()
    with pytest.warns(UserWarning, match="1 item\\(s\\) failed and were skipped"):
        out = chain.to_list()
    assert asked == ["Cut"] and pool.failed is None  # the window was cut and collated in the worker
    assert [f["row"] for f in failed] == [6] and "poison" in failed[0]["message"]
    np.testing.assert_allclose(np.stack(out), expected, atol=1e-6)


def test_the_workers_start_before_the_weights_load(sample_texts, monkeypatch):
    """The worker processes are started before the model's setup, so they import and load the
    tokenizer while the weights load, not after."""
    from embedflow_operators.text_embedding.transformers import TransformersTextEmbedding

    seen = []
    real = TransformersTextEmbedding.setup

    def setup(self, device):
        seen.append(existing_pool(self))
        return real(self, device)

    monkeypatch.setattr(TransformersTextEmbedding, "setup", setup)
    chain = ef.dc(sample_texts[:3]).text_embedding.transformers(model_name=MINILM, backend="torch", processes=1, max_length=77)
    assert len(chain.to_list()) == 3
    assert len(seen) == 1 and seen[0] is not None and seen[0] is _pool_of(chain)


def test_workers_started_for_a_model_that_fails_to_load_end_at_once(monkeypatch):
    from embedflow_operators.text_embedding.transformers import TransformersTextEmbedding

    pools = []

    def failing_setup(self, device):
        pools.append(existing_pool(self))
        raise OSError("the weights are unreadable")

    monkeypatch.setattr(TransformersTextEmbedding, "setup", failing_setup)
    with pytest.raises(OSError, match="the weights are unreadable"):
        ef.dc(["a"]).text_embedding.transformers(model_name=MINILM, backend="torch", processes=1, max_length=78).to_list()
    (pool,) = pools
    assert pool is not None and all(w.process.poll() is not None for w in pool.workers)  # no worker left behind
