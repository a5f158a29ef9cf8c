"""The Milvus mode (``--index milvus``): documents and feedback in Milvus, shared by stateless replicas.

Milvus is itself the durable copy: nothing is logged here, and a replica keeps no data dir. Each
model version has its own collection and an alias names the one serving (:mod:`service.milvus`).

* start: connect (retrying until ``--ready_timeout_s``: Milvus may start after the replicas; ``/ready``
  says what it waits for), open the collection of the model's version, :func:`fill` it from the
  collection the alias names (re-embedding what it lacks), then move the alias to it. A collection the
  previous release made (no BM25 field) is filled the same way into ``<its name>_bm25``, once.
* lexical search: Milvus's BM25 function on the serving collection (:mod:`service.milvus_lexical`).
* long documents: every window is stored (:mod:`service.milvus_windows`); ``fill`` re-embeds with
  ``embed_documents``, which cuts each document into the new model's windows again.
* reload: fill the new version's collection while the old one serves; at the swap, move the alias and
  fill once more with what was written meanwhile (this replica's writes, and other replicas' until
  they saw the switch).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from training.chunking import WindowVectors

from ..errors import IndexUnavailable
from ..milvus import MilvusCollection, MilvusStore, now_ms
from ..milvus_lexical import MilvusLexical
from .base import Storage, Write, durability_facts

if TYPE_CHECKING:
    from ..generation import Generation
    from ..model import EmbeddingModel

log = logging.getLogger("service.storage")

CLOCK_SKEW_MS = 10_000  # replicas' clocks may differ this much when catching up on writes


class MilvusStorage(Storage):
    """Documents and feedback in Milvus; ``waiting`` hears what the start waits for (``None``: nothing)."""

    def __init__(self, settings, waiting: Callable[[str | None], None]) -> None:
        super().__init__(settings)
        self.waiting = waiting
        self._closing = contextlib.ExitStack()

    async def open(self, model: EmbeddingModel) -> MilvusCollection:
        self.milvus = await self._connect()
        return await self._collection(model, switch=True)

    async def _connect(self) -> MilvusStore:
        """Connect, retrying until ``--ready_timeout_s``."""
        deadline = time.monotonic() + self.settings.ready_timeout_s
        waiting_for = None
        while True:
            try:
                store = await asyncio.to_thread(MilvusStore, self.settings)
                self._closing.callback(store.close)
                await asyncio.to_thread(store.ping)
                self.waiting(None)
                return store
            except IndexUnavailable as exc:
                if waiting_for != exc.message:
                    log.warning("waiting for Milvus: %s", exc.message)
                waiting_for = exc.message
                self.waiting(exc.message)
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(2)

    async def _source(self, target: MilvusCollection) -> MilvusCollection | None:
        """The collection the alias names when it is not ``target`` (another model's vectors), else None."""
        serving = await asyncio.to_thread(self.milvus.serving)
        return await asyncio.to_thread(self.milvus.attach, serving) if serving not in (None, target.name) else None

    async def _collection(self, model: EmbeddingModel, switch: bool,
                          progress: Callable[[int], None] | None = None) -> MilvusCollection:
        """The collection of ``model``'s version, brought up to date with the one serving now (re-embedding
        what it lacks); with ``switch`` the alias moves to it at once."""
        target = await asyncio.to_thread(self.milvus.open, model.spec.version, model.dimension)
        source = await self._source(target)
        embedded = await fill(source, target, _windows_of(model), model.bulk_chunk, progress)
        if source is not None:
            log.info("collection %s: %d documents re-embedded from %s", target.name, embedded, source.name)
        if switch:
            await self._switch(model, target)
        return target

    async def _switch(self, model: EmbeddingModel, target: MilvusCollection) -> None:
        """Move the alias to ``target``, then re-embed what was written to the old collection since the
        last pass (this replica's writes during a reload, other replicas' until they saw the switch)."""
        source = await self._source(target)
        await asyncio.to_thread(self.milvus.switch, target)
        caught_up = await fill(source, target, _windows_of(model), model.bulk_chunk)
        if caught_up:
            log.info("collection %s: %d recent writes caught up", target.name, caught_up)

    async def next_collection(self, model: EmbeddingModel, old: Generation, status: dict) -> MilvusCollection:
        if model.spec.index:
            raise ValueError(f"{model.spec.name}/{model.spec.version} is a read-only FAISS index bundle: "
                             "serve it without --index milvus")
        status.update(state="re-embedding", done=0)
        return await self._collection(model, switch=False, progress=lambda n: status.__setitem__("done", n))

    async def catch_up(self, new: Generation, writes: Sequence[Write]) -> None:
        """The writes sit in the old collection in Milvus (any replica's): switch, then fill from it."""
        await self._switch(new.model, new.collection)

    def add_feedback(self, record: dict) -> None:
        self.milvus.add_feedback(record)  # where every replica and the retraining Job read it

    def read_feedback(self) -> list[dict]:
        return self.milvus.read_feedback()

    def lexical_for(self, collection: MilvusCollection) -> MilvusLexical:
        """Milvus's BM25 over ``collection`` (every collection this release serves has it: one the previous
        release made without it is refilled into a new one by :meth:`MilvusStore.open`)."""
        return collection.lexical()

    def check(self, collection: MilvusCollection) -> None:
        collection.ensure_loaded()

    def durability(self) -> dict:
        return durability_facts(self.settings, store="milvus", milvus_uri=self.settings.milvus_uri)

    def close(self) -> None:
        self._closing.close()


def _windows_of(model: EmbeddingModel) -> Callable[[list[str]], Awaitable[WindowVectors]]:
    """Documents → every window embedded by ``model`` (cut by its tokenizer), in bulk."""
    return lambda texts: model.embed_documents(texts, bulk=True)


async def fill(source: MilvusCollection | None, target: MilvusCollection,
               embed: Callable[[list[str]], Awaitable[WindowVectors | np.ndarray]], batch_size: int = 256,
               progress: Callable[[int], None] | None = None) -> int:
    """Bring ``target`` up to date with ``source`` (another model's collection), re-embedding what changed.

    A target that never served (or was retired by a switch away from it) gets every document of
    ``source`` whose ``updated_at`` it lacks, then loses the documents that ``source`` no longer has.
    A target that already serves gets only the documents written to ``source`` since its last
    full pass (minus the clock skew): writes of replicas that still ran the old model. Newer
    ``updated_at`` always wins, so nothing written directly into ``target`` is overwritten.
    ``embed`` gives every window of the texts (:class:`training.chunking.WindowVectors`), or one vector each.
    Returns the number of documents embedded.
    """
    if source is None or source.name == target.name:
        return 0
    run = asyncio.to_thread
    props = await run(target.properties)
    full = props.get("qaembed.state") != "ready"
    expr = "" if full else f"updated_at >= {int(props.get('qaembed.synced_ms', 0)) - CLOCK_SKEW_MS}"
    started, done = now_ms(), 0
    iterator = source.rows(batch_size, expr)
    while batch := await run(next, iterator, None):
        have = await run(target.updated, [doc.id for doc, _ in batch])
        newer = [(doc, at) for doc, at in batch if have.get(doc.id, -1) < at]
        if newer:
            await run(target.write, newer, await embed([doc.text for doc, _ in newer]))
        done += len(newer)
        if progress is not None:
            progress(done)
    if full:
        await run(_drop_deleted, source, target, now_ms())
        await run(target.store.call, target.client.alter_collection_properties, target.name,
                  properties={"qaembed.synced_ms": str(started)})
    return done


def _drop_deleted(source: MilvusCollection, target: MilvusCollection, before_ms: int) -> None:
    """Delete from ``target`` the documents copied before ``before_ms`` that ``source`` no longer has."""
    gone: list[str] = []
    for batch in target.rows(1000):
        old = [doc.id for doc, at in batch if at < before_ms]
        alive = source.updated(old) if old else {}
        gone += [i for i in old if i not in alive]
    target.remove(gone)
