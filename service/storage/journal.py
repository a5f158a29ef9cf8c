"""Journals: where the FAISS modes (local, in memory, index bundle) keep writes and feedback durable.

A FAISS collection lives in the replica's memory, so what survives a restart is up to its journal:

* :class:`Journal` (no ``--data_dir``): nothing is logged; feedback is kept in a list. A restart
  starts empty.
* :class:`WalJournal` (``--data_dir``): every write and feedback record goes to the WAL (fsync-ed)
  before it is applied; snapshots compact the log (:mod:`service.store`, whose on-disk format this
  keeps). A snapshot is due every ``--snapshot_every`` records, and once at start when recovery
  replayed the log or re-embedded documents. It holds the directory's lock (:mod:`.lock`) until closed.

:class:`JournaledStorage` is the part of :class:`~service.storage.base.Storage` both FAISS storages
(:mod:`.embedded`, :mod:`.bundle`) hand to their journal; what a snapshot holds is theirs to say
(:meth:`JournaledStorage.snapshot_documents`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import numpy as np

from ..documents import Document
from ..store import DurableStore, RecoveredState
from .base import Storage, Write, durability_facts
from .lock import DataDirLock

if TYPE_CHECKING:
    from ..generation import Generation

log = logging.getLogger("service.storage")

SnapshotDocuments = Callable[["Generation"], Awaitable[tuple[list[Document], np.ndarray]]]


class Journal:
    """In memory: writes are not logged, feedback is kept in a list; nothing survives a restart."""

    wal_seq: int | None = None
    broken: str | None = None

    def __init__(self) -> None:
        self._feedback: list[dict] = []

    def recover(self) -> RecoveredState:
        """What the journal holds from before the start (here: nothing)."""
        return RecoveredState()

    def open_log(self, dirty: bool) -> None:
        """Take writes from now on; ``dirty``: recovery changed something a snapshot should keep."""

    def log(self, write: Write, model_version: str) -> None:
        """Durable before it returns (here: nothing to make durable)."""

    def add_feedback(self, record: dict) -> None:
        self._feedback.append(record)

    def read_feedback(self) -> list[dict]:
        return list(self._feedback)

    def snapshot_due(self, stopping: bool) -> bool:
        return False

    async def snapshot(self, lock: asyncio.Lock, current: Callable[[], Generation],
                       documents: SnapshotDocuments) -> None:
        """Nothing to compact."""

    def close(self) -> None:
        """Nothing to flush."""


class WalJournal(Journal):
    """The WAL and snapshots in ``--data_dir`` (:class:`service.store.DurableStore`), written only while
    ``lock`` (the directory's, held) is; :meth:`close` releases it."""

    def __init__(self, store: DurableStore, snapshot_every: int, lock: DataDirLock) -> None:
        super().__init__()
        self.store = store
        self.lock = lock
        self.snapshot_every = snapshot_every
        self._dirty = False  # recovery replayed or re-embedded: snapshot once at start

    @property
    def wal_seq(self) -> int:
        return self.store.seq

    @property
    def broken(self) -> str | None:
        return self.store.broken

    def recover(self) -> RecoveredState:
        return self.store.recover()

    def open_log(self, dirty: bool) -> None:
        self.store.open_log()
        self._dirty = dirty

    def log(self, write: Write, model_version: str) -> None:
        if write.deleted:
            self.store.append_delete(write.deleted)
        else:
            self.store.append_upsert(write.docs, write.vectors, model_version)

    def add_feedback(self, record: dict) -> None:
        self.store.append_feedback(record)

    def read_feedback(self) -> list[dict]:
        return self.store.read_feedback()

    def snapshot_due(self, stopping: bool) -> bool:
        logged = self.store.records_since_snapshot
        return self._dirty or logged >= self.snapshot_every or (stopping and logged > 0)

    async def snapshot(self, lock: asyncio.Lock, current: Callable[[], Generation],
                       documents: SnapshotDocuments) -> None:
        if self.store.broken:  # the disk failed: leave it as it is for the restart to recover from
            log.warning("no snapshot: %s", self.store.broken)
            return
        async with lock:  # no write between the log's cut and the read of the documents
            gen = current()
            seq = self.store.rotate()
            self._dirty = False
            docs, vectors = await documents(gen)
        await asyncio.to_thread(self.store.write_snapshot, seq, docs, vectors, gen.model.spec.name, gen.version)

    def close(self) -> None:
        try:
            self.store.close()
        finally:  # the log is flushed or failed for good: another process may take over
            self.lock.release()


class JournaledStorage(Storage):
    """A FAISS storage mode whose writes and feedback go to a :class:`Journal`."""

    def __init__(self, settings, journal: Journal) -> None:
        super().__init__(settings)
        self.journal = journal

    async def snapshot_documents(self, gen: Generation) -> tuple[list[Document], np.ndarray]:
        """What a snapshot of ``gen`` holds (called on the event loop, under the write lock)."""
        return [], np.empty((0, gen.model.dimension), np.float32)

    def log(self, write: Write, model_version: str) -> None:
        self.journal.log(write, model_version)

    def add_feedback(self, record: dict) -> None:
        self.journal.add_feedback(record)

    def read_feedback(self) -> list[dict]:
        return self.journal.read_feedback()

    def snapshot_due(self, stopping: bool = False) -> bool:
        return self.journal.snapshot_due(stopping)

    async def snapshot(self, lock: asyncio.Lock, current: Callable[[], Generation]) -> None:
        await self.journal.snapshot(lock, current, self.snapshot_documents)

    @property
    def broken(self) -> str | None:
        return self.journal.broken

    def durability(self) -> dict:
        return durability_facts(self.settings, wal_seq=self.journal.wal_seq)

    def close(self) -> None:
        self.journal.close()
