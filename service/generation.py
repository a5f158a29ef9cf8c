"""A generation: one model and the collection its documents were embedded by, served together.

Every request takes the current generation once and uses it for both embedding and searching, so
no query embedded by one model is ever searched in an index built by another. A reload builds a
complete new generation while the old one keeps serving, and the engine swaps the reference; the
old generation is closed when its last request finishes (``users`` reaches 0 once ``retired``).

Beside them it holds the storage's lexical (BM25) source (``lexical``): model-independent, so a reload
hands the next generation the same one, and closing a generation never closes it (the storage does); and
``fusion``, the hybrid search defaults its model's bundle implies (:func:`service.search.fusion_defaults`).

The collection is driven from the generation's own thread(s) (``collection.workers``: one for a
FAISS index, several for Milvus RPCs), never from the event loop. Unfiltered searches that arrive
while one runs are coalesced into one multi-query call (one matrix product instead of many).

Example::

    >>> gen = Generation(model, collection, search_threads=1)       # doctest: +SKIP
    >>> hits = await gen.search(vectors, k=5, where=None)            # doctest: +SKIP
    >>> documents = await gen.run(len, gen.collection)               # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import faiss
import numpy as np

from .collection import DocumentCollection
from .documents import Hit
from .lexical import LexicalSource

if TYPE_CHECKING:
    from .model import EmbeddingModel


class Generation:
    """A model and the collection embedded with it, plus the thread(s) that touch the collection."""

    def __init__(self, model: EmbeddingModel, collection: DocumentCollection, search_threads: int = 1,
                 lexical: LexicalSource | None = None, fusion: object = None) -> None:
        self.model = model
        self.collection = collection
        self.lexical = lexical
        self.fusion = fusion  # service.search.FusionDefaults (typed loosely: search imports this module)
        # OpenMP's thread count is per calling thread: set it in the index thread itself (left at the
        # default, FAISS spins up a team per search that fights inference for the cores).
        self._executor = ThreadPoolExecutor(max_workers=collection.workers,
                                            thread_name_prefix=f"index-{model.spec.version}",
                                            initializer=faiss.omp_set_num_threads, initargs=(search_threads,))
        self.users = 0
        self.retired = False
        self.closed = False
        self._searches: list[tuple[np.ndarray, int, asyncio.Future]] = []
        self._searching = False

    @property
    def version(self) -> str:
        return self.model.spec.version

    async def search(self, vectors: np.ndarray, k: int, where: Mapping | None) -> list[list[Hit]]:
        """Search on the index thread; unfiltered searches are coalesced (see the module's docstring)."""
        if where:
            return await self.run(self.collection.search, vectors, k, where)
        future = asyncio.get_running_loop().create_future()
        self._searches.append((vectors, k, future))
        if not self._searching:
            self._searching = True
            asyncio.get_running_loop().create_task(self._drain_searches())
        return await future

    async def _drain_searches(self) -> None:
        try:
            while self._searches:
                batch, self._searches = self._searches, []
                queries = np.concatenate([v for v, _, _ in batch])
                try:
                    hits = await self.run(self.collection.search, queries, max(k for _, k, _ in batch), None)
                except Exception as exc:  # hand the failure to every waiting request
                    for _, _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                row = 0
                for vectors, k, future in batch:
                    if not future.done():
                        future.set_result([h[:k] for h in hits[row:row + len(vectors)]])
                    row += len(vectors)
        finally:
            self._searching = False

    def release(self) -> None:
        """One request less; the last one out of a retired generation closes it."""
        self.users -= 1
        if self.retired and self.users == 0:
            asyncio.get_running_loop().run_in_executor(None, self.close)

    def retire(self) -> None:
        """Swapped out: close once the requests still using it finish (at once when none is)."""
        self.retired = True
        self.users += 1
        self.release()

    async def run(self, fn: Callable, *args):
        """Run ``fn`` on this generation's index thread(s) (FAISS GPU indexes need one thread)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.model.close()
        self._executor.shutdown(wait=True)
        self.collection.close()
