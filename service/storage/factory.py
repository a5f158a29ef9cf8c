"""Choose the storage mode, once, at start: from the settings and whether the model is an index bundle.

======================================== ==============================================================
the model's bundle and settings           storage
======================================== ==============================================================
an index bundle (``spec.index``)          :class:`~.bundle.BundleStorage` (feedback: SQLite in
                                          ``--data_dir``, else memory); ``--index milvus`` is refused
``--index milvus``                        :class:`~.milvus.MilvusStorage` (``--data_dir`` unused)
``--data_dir``                            :class:`~.embedded.EmbeddedStorage` with SQLite (local)
neither                                   :class:`~.embedded.EmbeddedStorage` in memory
======================================== ==============================================================

The SQLite store in ``--data_dir`` is written only by the process holding the directory's lock
(:mod:`.lock`): a second one is refused with :class:`~.lock.DataDirLocked` before it reads anything there.
The store's lexical index is analysed by ``--analyzer`` (fixed when the directory is created).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from training.analyzer import Analyzer

from ..backends.base import ModelSpec
from ..index import IndexConfig
from ..store import DocumentStore
from .base import Storage
from .bundle import BundleStorage
from .embedded import EmbeddedStorage
from .journal import Journal, SqliteJournal
from .lock import DataDirLock, DataDirLocked
from .milvus import MilvusStorage

__all__ = ["DataDirLocked", "open_storage"]  # what the engine needs: the one call and the refusal it may raise

log = logging.getLogger("service.storage")


def open_storage(settings, spec: ModelSpec, waiting: Callable[[str | None], None]) -> Storage:
    """The storage for ``settings`` serving ``spec``'s bundle (nothing is read yet: see ``Storage.open``).
    ``waiting`` hears what a start waits for (an unreachable Milvus), for ``/ready``. Raises
    :class:`DataDirLocked` when another process holds ``--data_dir``."""
    if settings.index == "milvus":
        if spec.index:
            raise ValueError(f"{spec.name} is a read-only FAISS index bundle: serve it without --index milvus")
        if settings.data_dir is not None:
            log.warning("--data_dir is not used with --index milvus: documents and feedback live in Milvus")
        return MilvusStorage(settings, waiting)
    config = IndexConfig.from_settings(settings)
    journal = _sqlite_journal(settings) if settings.data_dir is not None else Journal()
    if spec.index:
        return BundleStorage(settings, journal, config)
    if settings.data_dir is None:
        log.warning("no --data_dir: documents live in memory only and are lost on restart")
    return EmbeddedStorage(settings, journal, config)


def _sqlite_journal(settings) -> SqliteJournal:
    """The SQLite store in ``--data_dir``, its lock taken first; raises :class:`DataDirLocked` when another
    process has it."""
    lock = DataDirLock(settings.data_dir).acquire()
    try:
        store = DocumentStore(settings.data_dir, Analyzer.named(settings.analyzer))
        return SqliteJournal(store, settings.snapshot_every, lock)
    except BaseException:
        lock.release()
        raise
