"""The model-batching routine: the one piece of code that turns rows into a model's outputs,
shared by the local engine, the Ray actors and the server.

::

    prepare   preprocess each row (``preprocess_batch`` when the operator has it, item by
              item to name a bad row), with its size (``sort_key``)
    cut       sort a window of prepared items by size, cut batches by rows or padded tokens
    collate   one batch, on the CPU
    forward   launch: the batch to the device (a side stream on CUDA), ``forward`` under
              inference_mode and autocast, the copy back started; finish: wait for the copy,
              postprocess, one result per row written back into the row. An engine may
              launch the next batch before it finishes this one, so the GPU never waits for
              the CPU's postprocess
    retry     a batch that fails is run again item by item, so one bad input is named (or
              skipped under ``.safe()``) and the good ones are kept

The routine owns no thread and no process: an engine calls the phases from its own threads
(the local engine overlaps them) or all at once (:meth:`ModelBatcher.process`).

>>> items = [(i, n) for i, n in enumerate([5, 1, 4, 2])]  # (position, size)
>>> [[p for p, _ in b] for b in cut_window(items, batch_size=2, key=lambda it: it[1])]
[[1, 3], [2, 0]]
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from ..errors import DeviceError, EmbedflowError, user_stacklevel
from ..hooks import CastsWeights, PadsToWidths, PreparesOnDevice, SortsBySize
from ..operator import Operator
from ..plan import ModelStage
from ..rows import write_outputs
from .cuda_graphs import GraphRunner, runner_for
from .cutting import cut_window
from .devices import autocast, check_finite, free_device_cache, is_device_error, is_out_of_memory, map_tensors, move, precision
from .failures import FailureLog
from .groups import Prepared, rows_of
from .preprocess import Raised, input_tuples, preprocess_items
from .steps import SKIPPED, Chunk, Guard
from .transfer import Staged
from .transfer import back_to_cpu as _back_to_cpu
from .transfer import copy_stream as _copy_stream
from .transfer import owned as _owned
from .transfer import staged_batch as _staged_batch
from .transfer import to_device as _to_device

T = TypeVar("T")
GPU_BATCH_ROWS = (256, 128)  # default batch on a GPU: texts (sorted), other inputs (images)
GPU_BATCH_TOKENS = 32768  # default padded tokens per batch on a GPU: long texts fill it without running out of memory
# items sorted together on a GPU: with bucketed widths 12 batch shapes (CUDA graphs) and 1.20 padded
# tokens per real one over 50,000 sentences (benchmarks/bench_shapes.py; 67 and 1.54 for 1,024 and × 8)
GPU_SORT_WINDOW = 8192


def for_device(stage: ModelStage, device: str) -> ModelStage:
    """``stage`` sized for ``device``: the CPU-tuned defaults (32 texts, 16 images) leave a GPU
    idle between launches, so on CUDA a step whose batch size the user did not set takes
    256 texts (at most 32,768 padded tokens) or 128 other items; an out-of-memory batch is
    split in halves anyway. What the user set stays.

    >>> import embedflow as ef
    >>> from embedflow.plan import lower
    >>> stage = lower(ef.dc(["a"]).text_embedding.transformers(model_name="m").plan).model_stages[0]
    >>> gpu = for_device(stage, "cuda:0")
    >>> (stage.batch_size, stage.max_batch_tokens), (gpu.batch_size, gpu.max_batch_tokens)
    ((32, None), (256, 32768))
    """
    if not device.startswith("cuda"):
        return stage
    options = stage.step.options
    changes: dict[str, Any] = {}
    if options.batch_size is None:
        rows = GPU_BATCH_ROWS[0] if stage.sorts else GPU_BATCH_ROWS[1]
        changes.update(
            batch_size=max(rows, stage.batch_size), window=max(stage.window, GPU_SORT_WINDOW) if stage.sorts else max(rows, stage.batch_size)
        )
    if stage.sorts and stage.max_batch_tokens is None:  # unset by the user and by the runtime (a server's latency cap)
        changes["max_batch_tokens"] = GPU_BATCH_TOKENS
    return replace(stage, **changes) if changes else stage


@dataclass
class Replica:
    """One copy of a model operator, set up on its device."""

    device: str
    op: Operator
    autocast: Callable[[], Any]  # a factory of the autocast context
    non_blocking: bool = False  # copies to the device may overlap compute (pinned memory)
    copy_stream: Any = None  # CUDA: the stream batches are copied on, beside the compute
    graphs: GraphRunner | None = None  # CUDA: forward replayed from CUDA graphs (:mod:`.cuda_graphs`)
    stage_stream: Any = None  # CUDA, an operator with prepare_on_device: the stream it runs on (its own thread)


@dataclass
class InFlight:
    """A batch launched on a device: its output still on the way back (``event`` marks the copy
    done), or the outcome of a launch that failed (``done``, or a ``retry`` to run)."""

    group: Sequence[Prepared]
    collated: Any = None  # kept alive until the copy to the device is done (pinned memory)
    output: Any = None
    event: Any = None
    done: list[Any] | None = None  # a one-row batch that failed (at launch or after): its row's outcome
    retry: str | None = None  # "halves" (out of memory) or "items" (another error)


def make_replica(device: str, op: Operator, dtype: str | None, non_blocking: bool = False, label: str = "") -> Replica:
    """A replica of ``op`` on ``device`` at ``dtype``: an operator that can cast its weights
    (``cast_weights(torch_dtype) -> True``) is cast once and runs without autocast — autocast
    re-casts the weights in every batch (its cache is off under ``inference_mode``); others run
    under autocast. On CUDA an operator with ``cuda_graphs = True`` is replayed from graphs."""
    import contextlib

    wanted = precision(device, dtype)
    stream = _copy_stream(device) if non_blocking else None
    graphs = runner_for(op, device, label or type(op).__name__)
    staging = _copy_stream(device) if isinstance(op, PreparesOnDevice) else None
    cast = op.cast_weights if isinstance(op, CastsWeights) else None
    if wanted != "fp32" and cast is not None:
        import torch

        if cast(torch.float16 if wanted == "fp16" else torch.bfloat16):
            return Replica(device, op, contextlib.nullcontext, non_blocking, stream, graphs, staging)
    return Replica(device, op, autocast(device, dtype), non_blocking, stream, graphs, staging)


class ModelBatcher:
    """The batching routine of one model stage (see the module docstring).

    ``op`` is any replica of the operator: ``preprocess``, ``sort_key`` and ``collate`` do not
    depend on the device.
    """

    def __init__(self, stage: ModelStage, op: Operator, failures: FailureLog):
        self.step = stage.step
        self.guard = Guard.of(stage.step, failures)
        self.op = op
        self.batch_size = stage.batch_size
        self.window = stage.window
        self.sort_key: Callable[[Any], int] | None = op.sort_key if stage.sorts and isinstance(op, SortsBySize) else None
        self.max_tokens = stage.max_batch_tokens if stage.sorts else None
        self.width: Callable[[int], int] | None = op.padded_size if stage.sorts and isinstance(op, PadsToWidths) else None
        self.warned_memory = False

    # ---- prepare ---------------------------------------------------------------------------
    def _size(self, item: Any) -> int:
        return self.sort_key(item) if self.sort_key is not None else 0

    def inputs(self, rows: list[Any]) -> list[tuple[Any, ...] | Raised]:
        """Each row's input tuple for ``preprocess`` (a :class:`Raised` when a row lacks one)."""
        return input_tuples(rows, self.step.inputs)

    def prepare(self, numbers: Sequence[int], rows: list[Any]) -> list[Prepared | Any]:
        """Prepared items (or SKIPPED) for some rows: ``preprocess_batch`` first, item by item
        when it is missing or fails (to name or skip the bad row)."""
        return self.sized(numbers, rows, preprocess_items(self.op, self.inputs(rows)))

    def sized(self, numbers: Sequence[int], rows: list[Any], items: list[Any]) -> list[Prepared | Any]:
        """The rows with their prepared items (from :func:`preprocess_items`, here or in a
        worker process) and sizes; a row whose item is a :class:`Raised` is named or skipped."""
        out: list[Prepared | Any] = []
        for number, row, item in zip(numbers, rows, items):
            try:
                if isinstance(item, Raised):
                    raise item.error
                out.append((number, row, item, self._size(item)))
            except Exception as exc:  # noqa: BLE001 - the step's policy decides
                out.append(self.guard.handle(number, row, exc))
        return out

    # ---- cut and collate -------------------------------------------------------------------
    def cut(self, items: list[T], size_of: Callable[[T], int] = lambda p: p[3]) -> list[list[T]]:  # type: ignore[index]
        """One window of items as batches (sorted by size when the operator sorts);
        ``size_of`` finds an item's size (default: a Prepared tuple's)."""
        return cut_window(items, self.batch_size, key=size_of if self.sort_key is not None else None, max_tokens=self.max_tokens, width=self.width)

    def collate(self, group: Sequence[Prepared]) -> Any:
        return self.op.collate([it[2] for it in group])

    # ---- forward ---------------------------------------------------------------------------
    def run(self, replica: Replica, collated: Any, n: int) -> list[Any]:
        """One batch on the replica's device, start to end: ``n`` postprocessed results."""
        return self.finish(replica, *self.launch(replica, collated), n)

    def stage(self, replica: Replica, collated: Any) -> Staged:
        """A batch moved to the device and through the operator's ``prepare_on_device`` (decode
        and resize images there), for an engine that runs this in a thread of its own: on CUDA
        on the replica's staging stream, with an event the forward waits for on the GPU — the
        forward thread never waits for the decode."""
        import torch

        op = replica.op
        if not isinstance(op, PreparesOnDevice):
            msg = f"{self.step.label}: its operator has no prepare_on_device(batch) to stage"
            raise TypeError(msg)
        prepare = op.prepare_on_device
        if replica.stage_stream is None:
            with torch.inference_mode():
                return Staged(prepare(move(collated, replica.device, non_blocking=replica.non_blocking)), None)
        with torch.inference_mode(), torch.cuda.stream(replica.stage_stream):
            batch = prepare(move(collated, replica.device, non_blocking=True))
            event = torch.cuda.Event()
            event.record(replica.stage_stream)
        return Staged(batch, event)

    def launch(self, replica: Replica, collated: Any, staged: Staged | None = None) -> tuple[Any, Any]:
        """Move a batch to the device (and through ``prepare_on_device``; or take it
        :meth:`stage`d), ``forward`` it under ``inference_mode`` and autocast and start the copy
        back: ``(output, event)`` — on CUDA the output lands in pinned memory when ``event`` is
        done, elsewhere it is there already (``event`` None)."""
        import torch

        with torch.inference_mode(), replica.autocast():
            if staged is not None:
                batch = _staged_batch(replica, staged)
            else:  # a CPU replica takes the collated batch as it is (no .to per tensor)
                batch = collated if replica.device == "cpu" else _to_device(replica, collated)
            if staged is None and isinstance(replica.op, PreparesOnDevice):
                batch = replica.op.prepare_on_device(batch)
            output = (replica.graphs or replica.op.forward)(batch)
            if replica.device == "cpu":
                return output, None
            if not replica.device.startswith("cuda"):
                return move(output, "cpu"), None
            output = map_tensors(output, _back_to_cpu)
            event = torch.cuda.Event()
            event.record()
            return output, event

    def finish(self, replica: Replica, output: Any, event: Any, n: int) -> list[Any]:
        """Wait for a launched batch's output, check it, ``postprocess`` it to ``n`` results."""
        if event is not None:
            event.synchronize()
            output = _owned(output)  # results must not be views of the pinned buffers of the copy back
        check_finite(output, self.step.label)
        results = replica.op.postprocess(output)
        if len(results) != n:
            msg = f"{self.step.label}.postprocess returned {len(results)} results for a batch of {n}"
            raise EmbedflowError(msg)
        return results

    def begin(self, replica: Replica, group: Sequence[Prepared], collated: Any, staged: Staged | Raised | None = None) -> InFlight:
        """Launch a batch (``staged``: already through :meth:`stage`, or the error that raised);
        a launch that fails is noted for :meth:`complete` to retry."""
        try:
            if isinstance(staged, Raised):
                raise staged.error
            output, event = self.launch(replica, collated, staged)
        except EmbedflowError:
            raise
        except Exception as exc:  # noqa: BLE001 - isolate the bad item, keep the good ones
            self._check_device_error(replica, exc, len(group))
            if len(group) == 1:
                return InFlight(group, done=[self.guard.handle(group[0][0], group[0][1], exc)])
            return InFlight(group, retry=_retry_kind(exc))
        return InFlight(group, collated, output, event)

    def complete(self, replica: Replica, flight: InFlight) -> list[Any]:
        """The output rows of a launched batch, in the group's order (SKIPPED for a failed
        row). A failed batch is retried outside the handler (so its tensors can be freed):
        after an out-of-memory error in halves, after another error item by item to name the
        bad row; an error of the device itself is fatal."""
        group = flight.group
        if flight.done is not None:
            return flight.done
        if flight.retry is None:
            try:
                results = self.finish(replica, flight.output, flight.event, len(group))
            except EmbedflowError:
                raise
            except Exception as exc:  # noqa: BLE001
                self._check_device_error(replica, exc, len(group))
                if len(group) == 1:
                    flight.done = [self.guard.handle(group[0][0], group[0][1], exc)]  # done: the caller looks for SKIPPED
                    return flight.done
                flight.retry = _retry_kind(exc)
            else:
                if self.step.inputs is None:  # the result is the row
                    return list(results)
                return [write_outputs(row, self.step.inputs, self.step.outputs, r) for row, r in zip(rows_of(group), results)]
        flight.output = flight.collated = flight.event = None  # the handler is left: the failed batch's tensors can go
        if flight.retry == "halves":
            return self._halves(replica, group)
        return self._one_by_one(replica, group)

    def forward(self, replica: Replica, group: Sequence[Prepared], collated: Any) -> list[Any]:
        """:meth:`begin` then :meth:`complete`: one batch's output rows."""
        return self.complete(replica, self.begin(replica, group, collated))

    def _check_device_error(self, replica: Replica, exc: Exception, rows: int) -> None:
        if is_device_error(exc):
            msg = (
                f"{self.step.label} failed on {replica.device} for a whole batch of {rows} rows: {type(exc).__name__}: {exc}. "
                "This is an error of the device or of where the model's tensors are, not of one input, so no row is skipped"
            )
            raise DeviceError(msg) from exc

    def _halves(self, replica: Replica, group: Sequence[Prepared]) -> list[Any]:
        """An out-of-memory batch run again as two halves (each halved again if needed)."""
        free_device_cache(replica.device)
        if not self.warned_memory:
            self.warned_memory = True
            warnings.warn(
                f"{self.step.label}: out of memory on {replica.device} with a batch of {len(group)} rows; running it in halves "
                "(a smaller batch_size or max_batch_tokens avoids the retries)",
                UserWarning,
                stacklevel=user_stacklevel(),
            )
        middle, group = len(group) // 2, self._filled(group)
        if any(isinstance(p[2], Raised) for p in group):  # cannot collate: name (or skip) the row
            return self._one_by_one(replica, group)
        return [out for half in (group[:middle], group[middle:]) for out in self.forward(replica, half, self.collate(half))]

    def _filled(self, group: Sequence[Prepared]) -> list[Prepared]:
        """``group`` with the items a worker process prepared and kept (its batch came back
        collated: item None) prepared again here, for a retry; a failure stays as its Raised."""
        missing = [i for i, p in enumerate(group) if p[2] is None]
        if not missing:
            return list(group)
        again = preprocess_items(self.op, self.inputs([group[i][1] for i in missing]))
        filled = list(group)
        for i, item in zip(missing, again):
            filled[i] = (group[i][0], group[i][1], item, group[i][3])
        return filled

    def _one_by_one(self, replica: Replica, group: Sequence[Prepared]) -> list[Any]:
        out = []
        for number, row, item, _size in self._filled(group):
            try:
                if isinstance(item, Raised):
                    raise item.error
                result = self.run(replica, self.op.collate([item]), 1)[0]
            except EmbedflowError:
                raise
            except Exception as exc:  # noqa: BLE001
                self._check_device_error(replica, exc, 1)
                out.append(self.guard.handle(number, row, exc))
                continue
            out.append(write_outputs(row, self.step.inputs, self.step.outputs, result))
        return out

    # ---- everything at once ------------------------------------------------------------------
    def process(
        self,
        replica: Replica,
        numbers: Sequence[int],
        rows: list[Any],
        sizes: dict[int, int] | None = None,
        pool: Executor | None = None,
        workers: int = 1,
    ) -> Chunk:
        """Prepare, cut, collate and forward ``rows`` in one call; the output in input order
        without the rows that failed under ``.safe()``. For engines that batch elsewhere (a
        Ray actor gets a block of rows) and for requests gathered by a server; ``sizes``
        receives each prepared row's size (its ``sort_key``: tokens, for text). With ``pool``
        (the step's ``workers=`` threads) the rows are prepared in ``workers`` parts at once."""
        prepared = self.prepare(numbers, rows) if pool is None else in_parts(pool, workers, self.prepare, numbers, rows)
        return self.process_prepared(replica, [p for p in prepared if p is not SKIPPED], sizes)

    def process_prepared(self, replica: Replica, prepared: list[Prepared], sizes: dict[int, int] | None = None) -> Chunk:
        """:meth:`process` for items prepared elsewhere (Ray's CPU tasks): cut, collate, forward."""
        if sizes is not None:
            sizes.update((p[0], p[3]) for p in prepared)
        results: list[Any] = [SKIPPED] * len(prepared)
        for indexed in self.cut(list(enumerate(prepared)), lambda ip: ip[1][3]):
            group = [p for _i, p in indexed]
            for (i, _p), out in zip(indexed, self.forward(replica, group, self.collate(group))):
                results[i] = out
        kept = [(p[0], out) for p, out in zip(prepared, results) if out is not SKIPPED]
        return [n for n, _ in kept], [out for _, out in kept]


def in_parts(pool: Executor, parts: int, fn: Callable[[Sequence[int], list[Any]], list[Any]], numbers: Sequence[int], rows: list[Any]) -> list[Any]:
    """``fn(numbers, rows)`` over ``rows`` cut into at most ``parts`` slices run at once on
    ``pool`` (a step's ``workers=``), the results joined in order.

    >>> from concurrent.futures import ThreadPoolExecutor
    >>> with ThreadPoolExecutor(2) as pool:
    ...     in_parts(pool, 2, lambda ns, rs: [n * 10 + r for n, r in zip(ns, rs)], [0, 1, 2], [5, 6, 7])
    [5, 16, 27]
    """
    if parts < 2 or len(rows) < 2:
        return fn(numbers, rows)
    step = -(-len(rows) // parts)
    done = pool.map(lambda i: fn(numbers[i : i + step], rows[i : i + step]), range(0, len(rows), step))
    return [out for part in done for out in part]


def _retry_kind(exc: Exception) -> str:
    """How a failed batch is run again: in ``halves`` after running out of memory, else by ``items``."""
    return "halves" if is_out_of_memory(exc) else "items"
