"""The batching queue: token budgets, bounded capacity, workers, failures."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from export.runtime import Encoded
from service.backends.base import Backend
from service.batching import BatchQueue
from service.errors import Overloaded
from service.metrics import ServiceMetrics


class RecordingBackend(Backend):
    """Deterministic fake model: the embedding encodes the first token id; records batch shapes."""

    dimension = 4

    def __init__(self, delay: float = 0.0):
        self.delay = delay
        self.shapes: list[tuple[int, int]] = []
        self.gate = threading.Event()
        self.gate.set()

    def embed(self, ids, mask, types):
        self.gate.wait(10)
        self.shapes.append(ids.shape)
        time.sleep(self.delay)
        out = np.zeros((len(ids), 4), np.float32)
        out[:, 0] = ids[:, 0]
        out[:, 1] = 1
        return out


def enc(first: int, length: int) -> Encoded:
    ids = np.full(length, 7, np.int64)
    ids[0] = first
    return Encoded(ids, np.zeros(length, np.int64))


def test_queue_batches_concurrent_requests_within_token_budget():
    backend = RecordingBackend(delay=0.01)
    metrics = ServiceMetrics(process=False)

    async def main():
        q = BatchQueue(backend, max_batch_tokens=64, max_batch_size=16, max_wait_s=0.005, capacity=100,
                       metrics=metrics)
        jobs = [q.submit([enc(i, 8)]) for i in range(20)]
        results = [await j.wait() for j in jobs]
        q.close()
        return results

    results = asyncio.run(main())
    for i, r in enumerate(results):  # every request gets its own vector back
        assert r.vectors[0, 0] == pytest.approx(i / np.sqrt(i * i + 1))
    assert max(b for b, _ in backend.shapes) > 1
    assert all(b * s <= 64 for b, s in backend.shapes)  # padded tokens within budget
    assert sum(b for b, _ in backend.shapes) == 20


def test_queue_full_is_refused_at_once_and_cancelled_jobs_are_dropped():
    backend = RecordingBackend()
    backend.gate.clear()  # hold the first batch inside the "model"

    async def main():
        q = BatchQueue(backend, max_batch_tokens=1000, max_batch_size=1, max_wait_s=0, capacity=3)
        first = q.submit([enc(1, 4)])
        while not q.size == 0:
            await asyncio.sleep(0.001)
        keep = q.submit([enc(2, 4), enc(3, 4)])
        gone = q.submit([enc(4, 4)])
        t0 = time.perf_counter()
        with pytest.raises(Overloaded):
            q.submit([enc(5, 4)])
        assert time.perf_counter() - t0 < 0.05
        gone.cancel()  # the client went away
        backend.gate.set()
        await first.wait()
        r = await keep.wait()
        q.close()
        return r

    r = asyncio.run(main())
    assert r.vectors.shape == (2, 4)
    assert len(backend.shapes) == 3  # 1 + 2; the cancelled text never reached the model


def test_two_workers_run_forward_passes_at_once_and_reassemble_split_requests():
    class Overlapping(RecordingBackend):
        """Each pass waits (bounded) for a second one to be inside the model at the same time."""

        def __init__(self):
            super().__init__()
            self.inside = 0
            self.most_inside = 0
            self.lock = threading.Lock()
            self.both = threading.Event()

        def embed(self, ids, mask, types):
            with self.lock:
                self.inside += 1
                self.most_inside = max(self.most_inside, self.inside)
                if self.inside == 2:
                    self.both.set()
            self.both.wait(2)
            try:
                return super().embed(ids, mask, types)
            finally:
                with self.lock:
                    self.inside -= 1

    backend = Overlapping()

    async def main():
        q = BatchQueue(backend, max_batch_size=1, max_wait_s=0, capacity=100, workers=2)
        many = q.submit([enc(i, 3) for i in range(1, 21)])  # one request, twenty single-text passes
        other = q.submit([enc(99, 3)])
        results = await many.wait(), await other.wait()
        q.close()
        return results

    many, other = asyncio.run(main())
    assert backend.most_inside == 2 and backend.both.is_set()
    expected = np.array([i / np.sqrt(i * i + 1) for i in range(1, 21)], np.float32)
    np.testing.assert_allclose(many.vectors[:, 0], expected, rtol=1e-6)  # every row back in its place
    assert other.vectors[0, 0] == pytest.approx(99 / np.sqrt(99 * 99 + 1))
    assert len(backend.shapes) == 21


def test_queue_failure_fails_requests_not_the_worker():
    class Flaky(RecordingBackend):
        def embed(self, ids, mask, types):
            if ids[0, 0] == 13:
                raise RuntimeError("boom")
            return super().embed(ids, mask, types)

    async def main():
        q = BatchQueue(Flaky(), max_batch_size=1, max_wait_s=0, capacity=10)
        with pytest.raises(Exception, match="inference failed"):
            await q.submit([enc(13, 3)]).wait()
        ok = await q.submit([enc(2, 3)]).wait()
        q.close()
        return ok

    assert asyncio.run(main()).vectors.shape == (1, 4)
