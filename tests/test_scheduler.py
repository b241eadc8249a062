"""The threaded local engine: order under parallelism, batching, bucketing, failures, bounds."""

from __future__ import annotations

import random
import threading
import time

import pytest

import embedflow as ef
from embedflow.engines.batching import cut_window
from embedflow.engines.local.model_stage import Reorder
from embedflow.errors import ItemError, PlanError
from embedflow.plan import CheapStage, PoolStage, lower


def embedflow_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("embedflow")]


@pytest.fixture(autouse=True)
def no_thread_left_behind():
    yield
    deadline = time.time() + 2
    while embedflow_threads() and time.time() < deadline:
        time.sleep(0.01)
    assert embedflow_threads() == []


class Lengths(ef.Operator):
    """Batchable, with sort_key: records what each forward() call saw."""

    batchable = True
    default_batch_size = 4

    def __init__(self, jitter: bool = False):
        self.batches: list[list[str]] = []
        self.jitter = jitter

    def preprocess(self, text):
        if self.jitter:
            time.sleep(random.random() / 500)
        return text

    def sort_key(self, item):
        return len(item)

    def forward(self, batch):
        self.batches.append(list(batch))
        return [len(t) for t in batch]


def test_order_is_restored_after_parallel_preprocess_and_length_sorting():
    rng = random.Random(1)
    texts = ["x" * rng.randint(1, 60) for _ in range(500)]
    op = Lengths(jitter=True)
    out = ef.dc(texts).map(op, batch_size=8, workers=4).to_list()
    assert out == [len(t) for t in texts]
    assert max(len(b) for b in op.batches) == 8


def test_length_bucketing_makes_batches_of_similar_length():
    rng = random.Random(0)
    texts = ["x" * rng.randint(1, 100) for _ in range(256)]
    op = Lengths()
    ef.dc(texts).map(op, batch_size=16).to_list()
    spread_sorted = sum(max(map(len, b)) - min(map(len, b)) for b in op.batches)
    unsorted = [texts[i : i + 16] for i in range(0, 256, 16)]
    spread_unsorted = sum(max(map(len, b)) - min(map(len, b)) for b in unsorted)
    assert spread_sorted < spread_unsorted / 5
    for batch in op.batches:
        assert [len(t) for t in batch] == sorted(len(t) for t in batch)


def test_max_batch_tokens_caps_padded_size():
    texts = ["x" * n for n in (50, 10, 10, 10, 10, 40, 5, 5)]
    op = Lengths()
    out = ef.dc(texts).map(op, batch_size=8, max_batch_tokens=60).to_list()
    assert out == [len(t) for t in texts]
    for batch in op.batches:
        assert len(batch) * max(map(len, batch)) <= 60 or len(batch) == 1


@pytest.mark.parametrize("width", [None, lambda n: -(-n // 16) * 16], ids=["exact", "bucketed"])
def test_cut_window_never_passes_the_token_cap_and_fills_each_batch(width):
    """Over random windows: every batch's padded tokens (rows x its widest item's width) stay
    within max_tokens unless it holds one item, and each batch is as full as the caps allow —
    the next item would have passed one (the widest counted with the item that widens it)."""
    rng = random.Random(7)
    pad = width or (lambda n: n)
    for _ in range(300):
        sizes = [rng.choice([1, 2, 3, 5, 8, 13, 40, 90]) + rng.randrange(4) for _ in range(rng.randrange(1, 60))]
        cap, rows = rng.choice([16, 60, 128, 400]), rng.choice([2, 4, 8, 32])
        batches = cut_window(sizes, rows, key=lambda n: n, max_tokens=cap, width=width)
        assert [n for b in batches for n in b] == sorted(sizes)
        for i, batch in enumerate(batches):
            padded = len(batch) * pad(max(batch))
            assert len(batch) <= rows and (padded <= cap or len(batch) == 1), (batch, cap)
            if i + 1 < len(batches):
                grown = batch + [batches[i + 1][0]]
                assert len(grown) > rows or len(grown) * pad(max(grown)) > cap, (batch, batches[i + 1][0], cap)


def test_cut_window_and_reorder_units():
    assert cut_window([5, 1, 4, 2, 3], 2, key=lambda n: n) == [[1, 2], [3, 4], [5]]
    assert cut_window([1, 2, 3], 5) == [[1, 2, 3]]
    reorder = Reorder()
    assert reorder.add_many([(2, "c"), (1, "b")]) == []
    assert reorder.add_many([(0, "a")]) == ["a", "b", "c"] and len(reorder) == 0


def test_cheap_steps_fuse_into_one_stage():
    dc = ef.dc["x"]([1]).map["x", "y"](abs).filter["y"](bool).normalize["y"]().image_decode["x", "img"]().select["img"]()
    stages = lower(dc.plan).stages
    assert [type(s) for s in stages] == [CheapStage, PoolStage, CheapStage]
    assert [len(s.steps) for s in stages if isinstance(s, CheapStage)] == [3, 1]


def test_an_error_in_a_worker_thread_stops_the_run_and_reaches_the_caller():
    started = []

    def slow_then_fail(x):
        started.append(x)
        if x == 50:
            raise ValueError("boom at 50")
        return x

    t0 = time.perf_counter()
    with pytest.raises(ItemError, match="row 50.*boom at 50") as err:
        ef.dc(range(100000)).map(slow_then_fail, workers=2).to_list()
    assert isinstance(err.value.__cause__, ValueError)
    assert time.perf_counter() - t0 < 10
    assert len(started) < 100000  # stopped early, did not run everything


def test_an_error_in_forward_and_in_the_source_reach_the_caller():
    class Broken(ef.Operator):
        batchable = True

        def forward(self, batch):
            raise MemoryError("device full")

    with pytest.raises(ItemError, match="MemoryError: device full"):
        ef.dc([1]).map(Broken()).to_list()

    def bad_source():
        yield 1
        raise OSError("disk gone")

    with pytest.raises(OSError, match="disk gone"):
        ef.dc(bad_source()).map(lambda x: x).to_list()


def test_keyboard_interrupt_in_a_stage_is_re_raised_and_threads_end():
    def interrupt(x):
        if x == 3:
            raise KeyboardInterrupt
        return x

    with pytest.raises(KeyboardInterrupt):
        ef.dc(range(100)).map(interrupt, workers=2).to_list()


def test_stopping_iteration_early_stops_every_stage():
    pulled = []

    def numbers():
        i = 0
        while True:
            pulled.append(i)
            yield i
            i += 1

    it = iter(ef.dc(numbers()).map(str, workers=2).map(Lengths(), batch_size=2))
    assert next(it) == 1  # len("0")
    it.close()
    seen = len(pulled)
    time.sleep(0.2)
    assert len(pulled) == seen  # nothing reads any more


def test_blocked_stages_are_woken_at_once_when_the_run_stops(monkeypatch):
    """No stage waits out a poll: a failing stage and an early stop wake every thread blocked
    on a full or empty channel (the backstop made an hour here would hang the test)."""
    from embedflow.engines.local import scheduler

    monkeypatch.setattr(scheduler, "BACKSTOP", 3600.0)

    def fail_late(x):
        if x == "5000":
            raise ValueError("late")
        return x

    def stop_twice():
        with pytest.raises(ItemError, match="late"):
            ef.dc(range(10**6)).map(str).map(fail_late, workers=2).map(Lengths(), batch_size=2).to_list()
        it = iter(ef.dc(range(10**6)).map(str).map(Lengths(), batch_size=2))
        next(it)
        it.close()  # the source and the model stage are blocked on full channels now
        done.append(True)

    done: list[bool] = []
    runner = threading.Thread(target=stop_twice)
    runner.start()
    runner.join(60)
    assert not runner.is_alive(), "a stage blocked on a channel was never woken"
    assert done == [True]


def test_queues_are_bounded_when_the_consumer_is_slow():
    pulled = []

    def numbers():
        for i in range(100000):
            pulled.append(i)
            yield i

    it = iter(ef.dc(numbers()).map(lambda x: x, workers=2))
    for _ in range(10):
        next(it)
    # let the producers run ahead as far as they can: until the source stops being read
    seen, deadline = -1, time.time() + 10
    while len(pulled) != seen and time.time() < deadline:
        seen = len(pulled)
        time.sleep(0.1)
    assert len(pulled) == seen, "the source never stopped: the queues are not bounded"
    assert len(pulled) < 3000
    it.close()


def test_explain_analyze_reports_every_stage():
    text = ef.dc(["a", "bb"] * 50).map(Lengths(), batch_size=8).map(str).explain(analyze=True)
    assert "analyzed run" in text
    assert "preprocess" in text and "forward [cpu]" in text and "reorder" in text
    assert "run: 100 rows" in text and "busiest stage" in text


def test_dtype_option_is_validated_and_fp32_on_the_cpu_means_no_autocast():
    from embedflow.engines.devices import autocast

    with pytest.raises(PlanError, match="dtype='half' is not one of"):
        ef.dc([1]).map(Lengths(), dtype="half")
    assert autocast("cpu", "auto")().__class__.__name__ == "nullcontext"

    class MatMul(ef.Operator):
        """A real torch op: under autocast its output dtype tells the precision it ran in."""

        batchable = True

        def preprocess(self, x):
            import torch

            return torch.full((4,), float(x))

        def forward(self, batch):
            import torch

            return batch @ torch.eye(4)

        def postprocess(self, output):
            return [str(output.dtype)] * len(output)

    assert ef.dc([1, 2]).map(MatMul(), dtype="bf16").to_list() == ["torch.bfloat16"] * 2
    assert ef.dc([1, 2]).map(MatMul(), dtype="fp32").to_list() == ["torch.float32"] * 2


class Decode(ef.Operator):
    """Per-item work that releases the GIL (threaded): it gets a pool of its own."""

    def preprocess(self, x):
        return x


def test_cpu_models_leave_the_cores_to_torch(monkeypatch):
    import torch

    from embedflow.engines import devices

    monkeypatch.setattr(devices, "cpu_count", lambda: 8)
    threads = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        # a model on the CPU: the pools get the 5 cores torch does not use
        with_model = ef.dc(["a"] * 3).map(Decode()).map(Lengths()).explain(analyze=True)
        assert "map (5 threads)" in with_model and "map preprocess (5 threads)" in with_model
        # no model on the CPU: a decode pool gets every core
        assert "map (8 threads)" in ef.dc(["a"] * 3).map(Decode()).explain(analyze=True)
    finally:
        torch.set_num_threads(threads)


def test_progress_bar_can_be_forced_or_silenced(capsys):
    from embedflow.engines.progress import progress_bar

    dc = ef.dc(range(3))
    assert type(progress_bar(dc.set_progress(False).plan, None)).__name__ == "_NoBar"
    bar = progress_bar(dc.plan, True)
    assert bar.total == 3
    bar.close()


def test_a_text_file_bar_counts_the_rows_this_run_reads(tmp_path):
    from embedflow.engines.progress import progress_bar
    from embedflow.io.ranges import RowFilter, as_ranges

    path = tmp_path / "in.txt"
    path.write_text("".join(f"{i}\n" for i in range(100)))
    source = ef.read_text(path).plan.source
    assert source.rows_to_read() == 100
    assert source.with_filter(RowFilter(as_ranges(set(range(30))), limit=90)).rows_to_read() == 60  # resumed at 30, --limit 90
    bar = progress_bar(ef.read_text(path).plan, True)
    assert bar.total == 100
    bar.close()
    bar = progress_bar(ef.read_text(path).filter(lambda r: True).plan, True)
    assert bar.total is None  # a filter: how many rows come out is unknown
    bar.close()


def test_progress_follows_the_terminal_and_embedflow_progress(monkeypatch):
    import sys

    from embedflow.engines.progress import progress_bar

    plan = ef.dc(range(3)).plan
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    monkeypatch.delenv("EMBEDFLOW_PROGRESS", raising=False)
    bar = progress_bar(plan, None)
    assert type(bar).__name__ != "_NoBar"  # a terminal gets a bar
    bar.close()
    monkeypatch.setenv("EMBEDFLOW_PROGRESS", "0")
    assert type(progress_bar(plan, None)).__name__ == "_NoBar"
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)
    monkeypatch.delenv("EMBEDFLOW_PROGRESS")
    assert type(progress_bar(plan, None)).__name__ == "_NoBar"


class Doubler(ef.Operator):
    """Batchable with preprocess_batch; 'bad' fails in both paths."""

    batchable = True

    def __init__(self):
        self.batch_calls = 0

    def preprocess(self, x):
        if x == "bad":
            raise ValueError("bad item")
        return x * 2

    def preprocess_batch(self, inputs):
        self.batch_calls += 1
        return [self.preprocess(*args) for args in inputs]


def test_preprocess_batch_is_used_and_falls_back_item_by_item():
    op = Doubler()
    assert ef.dc(["a", "b", "c"]).map(op, batch_size=2).to_list() == ["aa", "bb", "cc"]
    assert op.batch_calls >= 1
    failed = []
    with pytest.warns(UserWarning, match="1 item"):
        out = ef.dc(["a", "bad", "c"]).safe(errors=failed).map(Doubler(), batch_size=4).to_list()
    assert out == ["aa", "cc"] and failed[0]["row"] == 1
    with pytest.raises(ItemError, match="row 1 .*bad item"):
        ef.dc(["a", "bad", "c"]).map(Doubler(), batch_size=4).to_list()
