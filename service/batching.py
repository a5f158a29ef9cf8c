"""The one queue that owns batching: coalesce concurrent texts into forward passes.

* **Token accounting.** A batch costs ``len(batch) × longest`` padded tokens; the worker takes
  texts in arrival order while that cost stays within ``max_batch_tokens`` (and ``max_batch_size``).
* **Short wait.** The worker waits at most ``max_wait_s`` after the oldest queued text for more to
  arrive (while a forward pass runs, new texts accumulate anyway).
* **Bounded.** At most ``capacity`` texts wait; a request that would overflow is refused at once
  (:class:`~service.errors.Overloaded`, 429), never queued.
* **Bounded wait** (``max_queue_wait_s``). While the oldest queued text has waited longer, a new request
  is refused at once (429): in a FIFO it would wait at least as long. A request none of whose texts has
  started within the bound is refused (429) when a worker reaches it, so under sustained overload the
  excess is shed in about the bound instead of piling up for the whole queue's drain time.
* **Abandoned requests dropped.** A request whose client went away is marked cancelled; its texts
  are skipped when the worker reaches them.
* **The runtime's steps.** Texts arrive as the runtime's :class:`~export.runtime.Encoded`; a batch is
  padded with :func:`~export.runtime.pad_batch` and normalised with :func:`~export.runtime.normalize`,
  exactly as the export gates' ``OnnxEncoder`` does, so only the batch composition differs.
* **Off the event loop.** Forward passes run in ``workers`` dedicated threads that drain the same
  queue; results are handed back with ``loop.call_soon_threadsafe``. One worker suits a GPU; on CPU
  two small forward passes at once keep both cores busier than one pass split across intra-op
  threads (ONNX Runtime's ``run`` is thread-safe; measured in docs/benchmarks/service.md).

Example::

    >>> import asyncio, numpy as np
    >>> from service.backends.base import Backend
    >>> from service.batching import BatchQueue
    >>> from export.runtime import Encoded
    >>> class Ones(Backend):
    ...     dimension = 2
    ...     def embed(self, ids, mask, types):
    ...         return np.ones((len(ids), 2), np.float32)
    >>> async def main():
    ...     queue = BatchQueue(Ones(), max_batch_tokens=64, max_batch_size=8, max_wait_s=0.001, capacity=16)
    ...     enc = [Encoded(np.arange(3), np.zeros(3, np.int64))] * 2
    ...     result = await queue.submit(enc).wait()
    ...     queue.close()
    ...     return result.vectors.shape
    >>> asyncio.run(main())
    (2, 2)
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass

import numpy as np

from export.runtime import Encoded, normalize, pad_batch

from .backends.base import Backend
from .errors import ClientGone, NotReady, Overloaded, ServiceError
from .metrics import ServiceMetrics

log = logging.getLogger("service.batching")

PADDING_SLACK = 1.3  # a forward pass may hold at most 30 % padding tokens


class InferenceFailed(ServiceError):
    status, type = 500, "inference_error"


@dataclass
class EmbedResult:
    vectors: np.ndarray  # float32 [n, dim], L2-normalised
    tokens: int
    queue_s: float
    inference_s: float


class Job:
    """The texts of one request travelling through the queue; await :meth:`wait` for the result."""

    def __init__(self, loop: asyncio.AbstractEventLoop, n: int, dim: int, tokens: int) -> None:
        self.loop = loop
        self.future: asyncio.Future[EmbedResult] = loop.create_future()
        self.out = np.empty((n, dim), dtype=np.float32)
        self.remaining = n
        self.tokens = tokens
        self.enqueued = time.perf_counter()
        self.first_start: float | None = None
        self.last_end = 0.0
        self.cancelled = False  # read by the worker threads; a plain bool is enough
        self.started = False  # a worker took one of its texts: it is past the queue-wait bound
        self._lock = threading.Lock()  # two workers may finish pieces of the same job at once

    def cancel(self) -> None:
        self.cancelled = True
        if not self.future.done():
            self.future.cancel()

    async def wait(self, disconnected: Awaitable[object] | None = None) -> EmbedResult:
        """The result; if ``disconnected`` completes first the job is dropped and :class:`ClientGone` raised."""
        if disconnected is None:
            try:
                return await asyncio.shield(self.future)
            except asyncio.CancelledError:
                self.cancel()
                raise
        # The watcher, when it finishes first, cancels the future this awaits (one callback: asyncio.wait's set,
        # waiter and callbacks on both cost as much again, per request).
        gone = False

        def on_watcher_done(watcher: asyncio.Future) -> None:
            nonlocal gone
            if not watcher.cancelled() and not self.future.done():
                gone = True
                self.cancel()

        watcher = asyncio.ensure_future(disconnected)
        watcher.add_done_callback(on_watcher_done)
        try:
            return await self.future
        except asyncio.CancelledError:
            self.cancel()
            if gone:
                raise ClientGone() from None
            raise
        finally:
            if not watcher.done():
                watcher.remove_done_callback(on_watcher_done)
                watcher.cancel()

    # called in the worker threads --------------------------------------------------------------
    def _deliver(self, rows: list[int], vectors: np.ndarray, start: float, end: float) -> None:
        with self._lock:
            if self.remaining <= 0:  # already failed
                return
            self.out[rows] = vectors
            self.first_start = start if self.first_start is None else min(self.first_start, start)
            self.last_end = max(self.last_end, end)
            self.remaining -= len(rows)
            if self.remaining > 0:
                return
            result = EmbedResult(self.out, self.tokens, self.first_start - self.enqueued,
                                 self.last_end - self.first_start)
        self.loop.call_soon_threadsafe(_resolve, self.future, result, None)

    def _fail(self, exc: BaseException) -> None:
        with self._lock:
            self.remaining = -1
        self.loop.call_soon_threadsafe(_resolve, self.future, None, exc)


def _resolve(future: asyncio.Future, result: object, exc: BaseException | None) -> None:
    if future.done():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)


@dataclass(slots=True)
class _Item:
    job: Job
    row: int
    enc: Encoded
    enqueued: float


class BatchQueue:
    """Bounded FIFO of texts plus the inference threads that drain it in token-budgeted batches."""

    def __init__(self, backend: Backend, *, max_batch_tokens: int = 16384, max_batch_size: int = 128,
                 max_wait_s: float = 0.002, capacity: int = 2048, metrics: ServiceMetrics | None = None,
                 name: str = "inference", workers: int = 1, max_queue_wait_s: float = 0.0) -> None:
        self.backend = backend
        self.max_queue_wait_s = max_queue_wait_s  # 0: no bound
        self.max_batch_tokens = max_batch_tokens
        self.max_batch_size = min(max_batch_size, backend.max_batch_size or max_batch_size)
        self.max_wait_s = max_wait_s
        self.capacity = capacity
        self.metrics = metrics
        self._items: collections.deque[_Item] = collections.deque()
        self._queued_tokens = 0
        self._cond = threading.Condition()
        self._closing = False
        if metrics is not None:
            metrics.queue_capacity.set(capacity)
            metrics.queue_size.set(0)
        self.workers = max(1, workers)
        self._threads = [threading.Thread(target=self._run, name=f"{name}-{i}", daemon=True)
                         for i in range(self.workers)]
        for thread in self._threads:
            thread.start()

    @property
    def size(self) -> int:
        return len(self._items)

    def submit(self, encodings: Sequence[Encoded], loop: asyncio.AbstractEventLoop | None = None) -> Job:
        """Queue the texts of one request (all or nothing). Raises 429 when the queue is full."""
        loop = loop or asyncio.get_running_loop()
        n = len(encodings)
        job = Job(loop, n, self.backend.dimension, sum(len(e) for e in encodings))
        if n == 0:
            job.future.set_result(EmbedResult(job.out, 0, 0.0, 0.0))
            return job
        with self._cond:
            if self._closing:
                raise NotReady("the model is shutting down")
            if len(self._items) + n > self.capacity:
                raise Overloaded(f"inference queue full ({len(self._items)} of {self.capacity} texts waiting); "
                                 "retry later", headers={"Retry-After": "1"})
            now = job.enqueued
            head = self._items[0] if self._items else None
            if head is not None and self._waited_too_long(head, now):
                raise self._wait_exceeded(now - head.enqueued)
            was_empty = not self._items
            self._items.extend(_Item(job, row, enc, now) for row, enc in enumerate(encodings))
            self._queued_tokens += job.tokens
            # A worker is woken for the first text (it then waits out max_wait_s, or less) and when a batch is
            # full; waking one for each text in between only made it look again (a thread switch and the GIL
            # handed over, per request). A worker that leaves texts behind wakes the next one (_run).
            if was_empty or self._full():
                self._cond.notify()
        if self.metrics is not None:
            self.metrics.queue_size.set(len(self._items))
        return job

    def close(self, timeout: float | None = 30.0) -> None:
        """Finish what is queued, then stop the threads."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self._threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))

    def _waited_too_long(self, item: _Item, now: float) -> bool:
        """Over the wait bound with none of its request's texts started (a started request runs to its end)."""
        job = item.job
        return (bool(self.max_queue_wait_s) and now - item.enqueued > self.max_queue_wait_s and not job.started
                and not job.cancelled and job.remaining > 0)

    def _wait_exceeded(self, waited_s: float) -> Overloaded:
        return Overloaded(f"inference queue too slow: texts have waited {waited_s * 1000:.0f} ms, over the "
                          f"{self.max_queue_wait_s * 1000:g} ms bound (--max_queue_wait_ms); retry later",
                          headers={"Retry-After": "1"})

    # worker threads -----------------------------------------------------------------------------
    def _full(self) -> bool:
        return len(self._items) >= self.max_batch_size or self._queued_tokens >= self.max_batch_tokens

    def _take(self) -> list[_Item]:
        batch: list[_Item] = []
        longest = 0
        while self._items and len(batch) < self.max_batch_size:
            item = self._items[0]
            now = time.perf_counter()
            if self._waited_too_long(item, now):
                item.job._fail(self._wait_exceeded(now - item.enqueued))
            if item.job.cancelled or item.job.remaining < 0:
                self._items.popleft()
                self._queued_tokens -= len(item.enc)
                continue
            cost = (len(batch) + 1) * max(longest, len(item.enc))
            if batch and cost > self.max_batch_tokens:
                break
            self._items.popleft()
            self._queued_tokens -= len(item.enc)
            item.job.started = True
            batch.append(item)
            longest = max(longest, len(item.enc))
        return batch

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._items and not self._closing:
                    self._cond.wait()
                if not self._items and self._closing:
                    return
                deadline = self._items[0].enqueued + self.max_wait_s
                # another worker may take the texts while this one waits: then start over
                while self._items and not self._full() and not self._closing:
                    remaining = deadline - time.perf_counter()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
                batch = self._take()
                queued = len(self._items)
                if queued:  # more than one batch waits: another worker starts on the rest
                    self._cond.notify()
            if self.metrics is not None:
                self.metrics.queue_size.set(queued)
            if batch:
                self._forward(batch)

    def _forward(self, batch: list[_Item]) -> None:
        """Run a taken batch: sorted by length and cut where padding would waste > 30 % of the
        compute (on CPU a padded token costs as much as a real one), one forward pass per piece."""
        batch = sorted(batch, key=lambda it: len(it.enc))
        pieces: list[list[_Item]] = [[]]
        real = 0
        for it in batch:
            piece = pieces[-1]
            if piece and (len(piece) + 1) * len(it.enc) > PADDING_SLACK * (real + len(it.enc)):
                pieces.append([])
                real = 0
            pieces[-1].append(it)
            real += len(it.enc)
        for piece in pieces:
            self._forward_piece(piece)

    def _forward_piece(self, batch: list[_Item]) -> None:
        start = time.perf_counter()
        ids, mask, types = pad_batch([it.enc for it in batch])
        try:
            vectors = normalize(self.backend.embed(ids, mask, types))
        except Exception as exc:  # a failing batch fails its requests, not the thread
            log.exception("inference failed for a batch of %d texts", len(batch))
            error = InferenceFailed(f"inference failed: {type(exc).__name__}")
            for job in {id(it.job): it.job for it in batch}.values():
                job._fail(error)
            return
        end = time.perf_counter()
        if self.metrics is not None:
            self.metrics.inference_duration.observe(end - start)
            self.metrics.batch_size.observe(len(batch))
            self.metrics.batch_tokens.observe(ids.size)
            for it in batch:
                self.metrics.queue_wait.observe(start - it.enqueued)
        per_job: dict[int, tuple[Job, list[int], list[int]]] = {}
        for i, it in enumerate(batch):
            entry = per_job.setdefault(id(it.job), (it.job, [], []))
            entry[1].append(it.row)
            entry[2].append(i)
        for job, rows, positions in per_job.values():
            if job.remaining > 0:
                job._deliver(rows, vectors[positions], start, end)

