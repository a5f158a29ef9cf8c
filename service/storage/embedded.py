"""The FAISS modes: documents in a collection in this process, kept by a journal (local or in memory).

* local (``--data_dir``, :class:`~service.storage.journal.SqliteJournal`): at start the documents and
  their vectors are read from the SQLite store (migrating the previous release's files once);
  documents another model version embedded (a restart on a new model) are re-embedded before the
  replica is ready, so it never searches mixed vectors, and their new vectors stored.
* in memory (no ``--data_dir``, :class:`~service.storage.journal.Journal`): a start is empty.

A reload re-embeds every live document with the new model into a new collection while the old one
serves; the writes acknowledged meanwhile are replayed into it at the swap, embedded by the new
model. The journal's upkeep stores the re-embedded vectors and compacts the index when worthwhile.
The lexical index is the journal's (:meth:`~.journal.Journal.lexical_source`): words, not vectors, so
every generation searches the same one and a reload re-indexes nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from training.analyzer import Analyzer

from ..documents import Document
from ..index import Collection, IndexConfig
from ..lexical import LexicalSource
from .base import Write
from .journal import Journal, JournaledStorage

if TYPE_CHECKING:
    from ..generation import Generation
    from ..model import EmbeddingModel

log = logging.getLogger("service.storage")


class EmbeddedStorage(JournaledStorage):
    """FAISS in process; durable when the journal is (``--data_dir``)."""

    def __init__(self, settings, journal: Journal, index_config: IndexConfig) -> None:
        super().__init__(settings, journal)
        self.index_config = index_config
        # before any write: the memory journal indexes every write from now on
        self.lexical = journal.lexical_source(Analyzer.named(settings.analyzer))

    def lexical_for(self, collection: Collection) -> LexicalSource:
        return self.lexical

    async def open(self, model: EmbeddingModel) -> Collection:
        state = await asyncio.to_thread(self.journal.recover)
        docs: list[Document] = []
        vectors: list[np.ndarray] = []
        stale: list[Document] = []
        for doc in state.docs.values():
            vector, version = state.embedded[doc.id]
            if version == model.spec.version and len(vector) == model.dimension:
                docs.append(doc)
                vectors.append(vector)
            else:  # embedded by another model version
                stale.append(doc)
        if state.docs:
            log.info("recovered %d documents (%d to re-embed)", len(state.docs), len(stale))
        matrix = np.stack(vectors).astype(np.float32) if vectors else np.empty((0, model.dimension), np.float32)
        if stale:
            t0 = time.perf_counter()
            matrix = np.concatenate([matrix, await model.embed_bulk([d.text for d in stale])])
            docs += stale
            log.info("re-embedded %d documents with %s in %.1fs", len(stale), model.spec.version,
                     time.perf_counter() - t0)
        collection = await asyncio.to_thread(Collection.from_arrays, model.dimension, self.index_config,
                                             model.spec.version, docs, matrix)
        self.journal.open_log(dirty=bool(stale))
        return collection

    async def next_collection(self, model: EmbeddingModel, old: Generation, status: dict) -> Collection:
        if model.spec.index:
            raise ValueError(f"{model.spec.name}/{model.spec.version} is a read-only index bundle: this replica "
                             "serves a model and its own documents (restart it to serve the bundle)")
        docs, _ = await old.run(old.collection.live)
        status.update(state="re-embedding", documents=len(docs), done=0)
        vectors = await model.embed_bulk([d.text for d in docs], progress=lambda n: status.__setitem__("done", n))
        return await asyncio.to_thread(Collection.from_arrays, model.dimension, self.index_config,
                                       model.spec.version, docs, vectors)

    async def catch_up(self, new: Generation, writes: Sequence[Write]) -> None:
        for write in writes:  # the vectors of an upsert are the old model's: embed it again
            if not write.deleted:
                write = Write(write.docs, await new.model.embed_bulk([d.text for d in write.docs]))
            await new.run(write.apply, new.collection)

    async def serving_documents(self, gen: Generation) -> tuple[list[Document], np.ndarray]:
        return await gen.run(gen.collection.live)

    async def compact(self, gen: Generation) -> None:
        if gen.collection.needs_rebuild():
            await gen.run(gen.collection.rebuild)
