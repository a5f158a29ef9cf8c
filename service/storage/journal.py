"""Journals: where the FAISS modes (local, in memory, index bundle) keep writes and feedback durable.

A FAISS collection lives in the replica's memory, so what survives a restart is up to its journal:

* :class:`Journal` (no ``--data_dir``): nothing is logged; feedback is kept in a list. A restart
  starts empty.
* :class:`SqliteJournal` (``--data_dir``): every write and feedback record is committed to the data
  directory's SQLite database (:mod:`service.store`) before it is applied. It holds the directory's
  lock (:mod:`.lock`) until closed.

Each also keeps the documents' lexical index (:meth:`Journal.lexical_source`): BM25 postings in memory
(:mod:`.memory_lexical`) fed every acknowledged write. The SQLite journal's store also writes the document's FTS5
entry in the document's own transaction, the durable copy the postings are loaded from at start.

SQLite needs no snapshots; the engine's upkeep hook brings what the store
and the serving collection hold in line: vectors re-embedded by another model (at a start on a new
model, after a reload) are stored, so the next start re-embeds nothing, and the FAISS index is
compacted when deletes left it mostly tombstones. It is due once at start when vectors were
re-embedded, after a reload, and every ``--snapshot_every`` document writes.

:class:`JournaledStorage` is the part of :class:`~service.storage.base.Storage` both FAISS storages
(:mod:`.embedded`, :mod:`.bundle`) hand to their journal; what the serving collection holds is theirs
to say (:meth:`JournaledStorage.serving_documents`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from training.analyzer import Analyzer
from training.chunking import WindowVectors

from ..documents import Document
from ..store import DocumentStore, RecoveredState
from .base import Storage, Write, durability_facts
from .lock import DataDirLock
from .memory_lexical import MemoryLexical

if TYPE_CHECKING:
    from ..generation import Generation

log = logging.getLogger("service.storage")


class Journal:
    """In memory: writes are not logged, feedback is kept in a list; nothing survives a restart."""

    kind = "memory"  # /info's durability.store
    broken: str | None = None

    def __init__(self) -> None:
        self._feedback: list[dict] = []
        self._lexical: MemoryLexical | None = None

    def lexical_source(self, analyzer: Analyzer) -> MemoryLexical:
        """The documents' lexical index (one, whatever the model): here in memory, fed by :meth:`log` from now on."""
        if self._lexical is None:
            self._lexical = MemoryLexical(analyzer)
        return self._lexical

    def recover(self) -> RecoveredState:
        """What the journal holds from before the start (here: nothing)."""
        return RecoveredState()

    def open_log(self, dirty: bool) -> None:
        """Take writes from now on; ``dirty``: vectors were re-embedded at start, the upkeep should store them."""

    def log(self, write: Write, model_version: str) -> None:
        """Durable before it returns (here: nothing to make durable; the lexical index takes it)."""
        self._index_words(write)

    def _index_words(self, write: Write) -> None:
        """Feed an acknowledged write to the lexical index's postings."""
        if self._lexical is not None:
            if write.deleted:
                self._lexical.delete(write.deleted)
            else:
                self._lexical.upsert(write.docs)

    def add_feedback(self, record: dict) -> None:
        self._feedback.append(record)

    def read_feedback(self) -> list[dict]:
        return list(self._feedback)

    def upkeep_due(self, stopping: bool) -> bool:
        return False

    async def upkeep(self, lock: asyncio.Lock, current: Callable[[], Generation],
                     storage: JournaledStorage) -> None:
        """Nothing to keep up."""

    def close(self) -> None:
        """Nothing to flush."""


class SqliteJournal(Journal):
    """The SQLite database in ``--data_dir`` (:class:`service.store.DocumentStore`), written only while
    ``lock`` (the directory's, held) is; :meth:`close` releases it."""

    def __init__(self, store: DocumentStore, upkeep_every: int, lock: DataDirLock) -> None:
        super().__init__()
        self.kind = "sqlite"
        self.store = store
        self.lock = lock
        self.upkeep_every = upkeep_every
        self._writes = 0  # document writes since the last upkeep
        self._dirty = False  # vectors were re-embedded at start: store them

    @property
    def broken(self) -> str | None:
        return self.store.broken

    def recover(self) -> RecoveredState:
        state = self.store.open()
        if self._lexical is not None:  # the postings start from the terms the store's FTS5 index holds
            self._lexical.load(self.store.lexical_terms())
        return state

    def lexical_source(self, analyzer: Analyzer) -> MemoryLexical:
        """Postings over the store's FTS5 terms (analysed by the store's analyzer, which ``--analyzer`` must match
        to open it), loaded by :meth:`recover`, fed by :meth:`log` after each commit."""
        if self._lexical is None:
            self._lexical = MemoryLexical(analyzer, kept=f"SQLite FTS5 in {self.store.path}")
        return self._lexical

    def open_log(self, dirty: bool) -> None:
        self._dirty = dirty

    def log(self, write: Write, model_version: str) -> None:
        if write.deleted:
            self.store.delete(write.deleted)
        else:
            self.store.upsert(write.docs, write.vectors, model_version, write.rows, write.layout)
        self._writes += 1
        self._index_words(write)  # committed: only now may a search find it

    def add_feedback(self, record: dict) -> None:
        self.store.add_feedback(record)

    def read_feedback(self) -> list[dict]:
        return self.store.read_feedback()

    def upkeep_due(self, stopping: bool) -> bool:
        return not stopping and (self._dirty or self._writes >= self.upkeep_every)  # nothing to flush at a stop

    async def upkeep(self, lock: asyncio.Lock, current: Callable[[], Generation],
                     storage: JournaledStorage) -> None:
        if self.store.broken:  # the disk failed: leave it as it is for the restart to recover from
            log.warning("no store upkeep: %s", self.store.broken)
            return
        self._writes, self._dirty = 0, False
        async with lock:  # the collection read whole, with no write in between
            gen = current()
            await storage.compact(gen)
            stale = await asyncio.to_thread(self.store.stale_vectors, gen.version, gen.model.layout)
            if not stale:
                return
            docs, rows = await storage.serving_documents(gen)
        # outside the lock: a write since stores this model's vectors itself, and save_vectors leaves it be
        saved = await asyncio.to_thread(self.store.save_vectors, docs, rows.vectors, gen.version, rows,
                                        gen.model.layout)
        log.info("stored %d vectors re-embedded by %s", saved, gen.version)

    def close(self) -> None:
        try:
            self.store.close()
        finally:  # the database is closed: another process may take over
            self.lock.release()


class JournaledStorage(Storage):
    """A FAISS storage mode whose writes and feedback go to a :class:`Journal`."""

    def __init__(self, settings, journal: Journal) -> None:
        super().__init__(settings)
        self.journal = journal

    async def serving_documents(self, gen: Generation) -> tuple[list[Document], WindowVectors]:
        """The documents ``gen`` serves and their vectors (windows), when they are this storage's (called on the
        event loop, under the write lock)."""
        return [], WindowVectors.one_each(np.empty((0, gen.model.dimension), np.float32))

    async def compact(self, gen: Generation) -> None:
        """Compact ``gen``'s index when worthwhile (called on the event loop, under the write lock)."""

    def log(self, write: Write, model_version: str) -> None:
        self.journal.log(write, model_version)

    def add_feedback(self, record: dict) -> None:
        self.journal.add_feedback(record)

    def read_feedback(self) -> list[dict]:
        return self.journal.read_feedback()

    def upkeep_due(self, stopping: bool = False) -> bool:
        return self.journal.upkeep_due(stopping)

    async def upkeep(self, lock: asyncio.Lock, current: Callable[[], Generation]) -> None:
        await self.journal.upkeep(lock, current, self)

    @property
    def broken(self) -> str | None:
        return self.journal.broken

    def durability(self) -> dict:
        return durability_facts(self.settings, store=self.journal.kind)

    def close(self) -> None:
        self.journal.close()
