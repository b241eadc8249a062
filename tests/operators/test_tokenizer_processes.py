"""Tokenization in worker processes (``tokenizer_processes``): the same vectors, rows, order,
truncation warnings and error handling as tokenizing in threads, and no process left behind."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest

import embedflow as ef
from embedflow.engines.replicas import cached
from embedflow.errors import ItemError
from embedflow_operators._tokenizer_pool import TokenizerPool, TokenizerWorkerError
from embedflow_operators.text_embedding._tokens import auto_processes

MINILM = "sentence-transformers/all-MiniLM-L6-v2"


def _texts(sample_texts):
    long = " ".join(sample_texts[:40])  # over 256 tokens: cut
    return [*sample_texts[:60], long, "", "Ünïcödé façade — naïve café ☕", long]


def test_processes_give_the_vectors_of_threads_in_order(sample_texts):
    texts = _texts(sample_texts)
    with pytest.warns(UserWarning, match="2 text\\(s\\) were longer than 256 tokens"):
        threads = ef.dc(texts).text_embedding.transformers(model_name=MINILM, backend="torch", tokenizer_processes=0, batch_size=8).to_numpy()
    chain = ef.dc(texts).text_embedding.transformers(model_name=MINILM, backend="torch", tokenizer_processes=2, batch_size=8)
    with pytest.warns(UserWarning, match="2 text\\(s\\) were longer than 256 tokens"):
        procs = chain.to_numpy()
    np.testing.assert_allclose(procs, threads, atol=1e-6)
    (op,) = cached(chain.plan.steps[-1]).values()
    assert op.tokens.pool is not None and op.tokens.pool.processes == 2
    pids = [w.process.pid for w in op.tokens.pool._workers]
    op.tokens.close()
    assert all(w.process.poll() is not None for w in op.tokens.pool._workers), pids


def test_a_bad_row_is_named_or_skipped_with_processes(sample_texts):
    rows = [*sample_texts[:5], 42, *sample_texts[5:9]]
    with pytest.raises(ItemError, match="row 5 \\(input 42\\).*expects a str, got int: 42"):
        ef.dc(rows).text_embedding.transformers(model_name=MINILM, backend="torch", tokenizer_processes=1).to_list()
    failed: list = []
    with pytest.warns(UserWarning, match="1 item\\(s\\) failed and were skipped"):
        out = ef.dc(rows).safe(errors=failed).text_embedding.transformers(model_name=MINILM, backend="torch", tokenizer_processes=1).to_list()
    assert len(out) == 9 and len(failed) == 1
    expected = ef.dc(sample_texts[:9]).text_embedding.transformers(model_name=MINILM, backend="torch", tokenizer_processes=0).to_numpy()
    np.testing.assert_allclose(np.stack(out), expected, atol=1e-6)


def test_a_killed_worker_loses_no_row_and_is_replaced(sample_texts):
    chain = ef.dc(sample_texts[:20]).text_embedding.transformers(model_name=MINILM, backend="torch", tokenizer_processes=1, batch_size=4)
    first = chain.to_numpy()
    (op,) = cached(chain.plan.steps[-1]).values()
    (worker,) = op.tokens.pool._workers
    os.kill(worker.process.pid, signal.SIGKILL)
    worker.process.wait()
    again = chain.to_numpy()  # the call that meets the dead worker tokenizes in-process
    np.testing.assert_allclose(again, first, atol=1e-6)
    (fresh,) = op.tokens.pool._workers
    assert fresh is not worker and fresh.process.poll() is None
    op.tokens.close()


def test_pool_reports_a_tokenizer_error_and_keeps_serving():
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({"[UNK]": 0, "a": 1}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    with TokenizerPool(tok.to_str(), processes=1) as pool:
        with pytest.raises(TokenizerWorkerError, match="TypeError|Error"):
            pool.encode([None])  # type: ignore[list-item]
        assert [ids.tolist() for ids, _ in pool.encode(["a a", "b"]).items()] == [[1, 1], [0]]


def test_auto_processes_and_bad_values():
    assert auto_processes("cpu", 64) == 0
    assert auto_processes("cuda:0", 16) == 8 and auto_processes("cuda:0", 6) == 3 and auto_processes("cuda:0", 3) == 0
    with pytest.raises(ef.ParameterError, match="tokenizer_processes=-1 must be 0 \\(threads\\) or a number of processes"):
        ef.dc(["a"]).text_embedding.transformers(model_name=MINILM, tokenizer_processes=-1)
