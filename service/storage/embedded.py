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
from training.chunking import WindowVectors

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
        dim = model.dimension
        kept: list[tuple[Document, np.ndarray, list | None]] = []  # document, its window vectors, their spans
        legacy: list[tuple[Document, np.ndarray]] = []  # one vector stored before chunking (format 1)
        stale: list[Document] = []
        for doc in state.docs.values():
            flat, version = state.embedded[doc.id]
            layout, spans = state.windows.get(doc.id, ("", None))
            if version == model.spec.version and layout == model.layout and len(flat) and len(flat) % dim == 0:
                kept.append((doc, flat.reshape(-1, dim), spans))
            elif version == model.spec.version and layout == "" and len(flat) == dim:
                legacy.append((doc, flat))
            else:  # embedded by another model version, or cut into other windows
                stale.append(doc)
        if legacy:  # still right where the document is one window: only longer ones are embedded again
            counts = np.bincount(model.windows([d.text for d, _ in legacy]).owners, minlength=len(legacy))
            for (doc, flat), n in zip(legacy, counts.tolist(), strict=True):
                kept.append((doc, flat.reshape(1, dim), None)) if n == 1 else stale.append(doc)
        if state.docs:
            log.info("recovered %d documents (%d to re-embed)", len(state.docs), len(stale))
        docs = [doc for doc, _, _ in kept]
        rows = _rows_of(kept, dim)
        if stale:
            t0 = time.perf_counter()
            fresh = await model.embed_documents([d.text for d in stale], bulk=True)
            docs += stale
            rows = WindowVectors(np.concatenate([rows.vectors, fresh.vectors]),
                                 np.concatenate([rows.owners, fresh.owners + rows.count]),
                                 rows.spans + fresh.spans, rows.count + fresh.count)
            log.info("re-embedded %d documents (%d windows) with %s in %.1fs", len(stale), len(fresh.vectors),
                     model.spec.version, time.perf_counter() - t0)
        collection = await asyncio.to_thread(Collection.from_arrays, dim, self.index_config, model.spec.version,
                                             docs, rows.vectors, owners=rows.owners, spans=rows.spans)
        self.journal.open_log(dirty=bool(stale or legacy))
        return collection

    async def next_collection(self, model: EmbeddingModel, old: Generation, status: dict) -> Collection:
        if model.spec.index:
            raise ValueError(f"{model.spec.name}/{model.spec.version} is a read-only index bundle: this replica "
                             "serves a model and its own documents (restart it to serve the bundle)")
        docs, _ = await old.run(old.collection.live_rows)
        status.update(state="re-embedding", documents=len(docs), done=0)
        # cut again with the new model's tokenizer: its windows may differ
        rows = await model.embed_documents([d.text for d in docs], bulk=True,
                                           progress=lambda n: status.__setitem__("done", n))
        return await asyncio.to_thread(Collection.from_arrays, model.dimension, self.index_config,
                                       model.spec.version, docs, rows.vectors, owners=rows.owners, spans=rows.spans)

    async def catch_up(self, new: Generation, writes: Sequence[Write]) -> None:
        for write in writes:  # the vectors of an upsert are the old model's: embed (and cut) it again
            if not write.deleted:
                rows = await new.model.embed_documents([d.text for d in write.docs], bulk=True)
                write = Write.of_rows(write.docs, rows, new.model.layout)
            await new.run(write.apply, new.collection)

    async def serving_documents(self, gen: Generation) -> tuple[list[Document], WindowVectors]:
        return await gen.run(gen.collection.live_rows)

    async def compact(self, gen: Generation) -> None:
        if gen.collection.needs_rebuild():
            await gen.run(gen.collection.rebuild)


def _rows_of(kept: Sequence[tuple[Document, np.ndarray, list | None]], dim: int) -> WindowVectors:
    """The rows of recovered documents (each its window vectors and spans, None: one whole-text vector)."""
    if not kept:
        return WindowVectors.one_each(np.empty((0, dim), np.float32))
    vectors = np.concatenate([v for _, v, _ in kept]).astype(np.float32)
    owners = np.concatenate([np.full(len(v), i, np.int64) for i, (_, v, _) in enumerate(kept)])
    spans = [span for _, v, sp in kept for span in (sp if sp is not None else [None] * len(v))]
    return WindowVectors(vectors, owners, spans, len(kept))
