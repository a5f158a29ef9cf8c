"""The storage interface: what the engine asks of the place documents and feedback persist.

A :class:`Storage` is one mode (local SQLite, in memory, read-only index bundle, Milvus; see
:mod:`service.storage`), chosen once at start. It never holds the serving generation itself; the
engine hands it what it needs and keeps the one write lock, so for every acknowledged write the
order is always: :meth:`Storage.log` (durable) → apply to the collection → acknowledge.

Contract, per call (the engine's side in brackets):

* :meth:`open` builds the first collection for a model: recovered from disk and re-embedded where
  another model embedded it, loaded from the bundle, or attached in Milvus (waiting for it). [once]
* :meth:`next_collection` builds the collection for a reload's model while the old generation
  serves; :meth:`catch_up` then brings it up to date with the writes acknowledged meanwhile. [write
  lock held during catch_up]
* :meth:`refuse_writes` raises when this mode takes no document writes (before any work is done).
* :meth:`log` makes one :class:`Write` durable, or raises :class:`service.store.WriteFailed`
  (nothing of it kept). [write lock held; blocking: run it in a thread]
* feedback: :meth:`add_feedback` (durable once it returns) and :meth:`read_feedback` (oldest first).
* upkeep: :meth:`upkeep_due` says when :meth:`upkeep` is worth running:
  storing vectors a re-embedding computed, compacting the index (never, in modes without a store).
* :meth:`lexical_for` gives the lexical (BM25) source searched beside a collection (:mod:`service.lexical`):
  asked once per generation, after :meth:`open` / :meth:`next_collection`; it is model-independent, so
  it may be the same source every time (a reload keeps it). The storage owns it and closes it in :meth:`close`.
* :meth:`broken` (liveness), :meth:`check` (readiness), :meth:`durability` (``/info``), :meth:`close`.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from training.chunking import WindowVectors

from ..collection import DocumentCollection
from ..documents import Document
from ..errors import Unprocessable
from ..lexical import LexicalHits, LexicalSource

if TYPE_CHECKING:
    from ..generation import Generation
    from ..model import EmbeddingModel


@dataclass(frozen=True)
class Write:
    """One acknowledged document change: an upsert (``docs`` with their ``vectors``) or a delete (``deleted``).

    A chunked upsert's ``rows`` are its windows (:class:`training.chunking.WindowVectors`: ``vectors`` is
    ``rows.vectors``, ``rows.owners`` index ``docs``), cut as ``layout`` says (``EmbeddingModel.layout``).
    """

    docs: Sequence[Document] = ()
    vectors: np.ndarray | None = None
    deleted: Sequence[str] = ()
    rows: WindowVectors | None = None
    layout: str = ""

    @classmethod
    def of_rows(cls, docs: Sequence[Document], rows: WindowVectors, layout: str) -> Write:
        return cls(docs, rows.vectors, rows=rows, layout=layout)

    @property
    def chunked(self) -> bool:
        """Some document of the write has several windows."""
        return self.rows is not None and (len(self.rows.vectors) != len(self.docs) or any(self.rows.spans))

    def apply(self, collection: DocumentCollection) -> None:
        if self.deleted:
            collection.delete(self.deleted)
        elif self.rows is not None and self.chunked:
            collection.upsert(self.docs, self.rows.vectors, self.rows.owners, self.rows.spans)
        else:
            collection.upsert(self.docs, self.vectors)


def durability_facts(settings, store: str | None = None, milvus_uri: str | None = None) -> dict:
    """``/info``'s ``durability`` section (the same keys in every mode, and before the mode is chosen):
    ``store`` is ``sqlite`` (``--data_dir``), ``memory`` or ``milvus``."""
    return {"store": store, "data_dir": str(settings.data_dir) if settings.data_dir else None,
            "analyzer": settings.analyzer if store == "sqlite" else None, "milvus_uri": milvus_uri}


class Storage(ABC):
    """One storage mode. See the module docstring for the contract of each call."""

    def __init__(self, settings) -> None:
        self.settings = settings

    @abstractmethod
    async def open(self, model: EmbeddingModel) -> DocumentCollection:
        """The first collection for ``model``, with every stored document embedded by it."""

    @abstractmethod
    async def next_collection(self, model: EmbeddingModel, old: Generation, status: dict) -> DocumentCollection:
        """A reload: the collection for ``model``, built while ``old`` serves; progress goes into ``status``
        (``state``, ``documents``, ``done``) for ``GET /admin/reload``."""

    @abstractmethod
    async def catch_up(self, new: Generation, writes: Sequence[Write]) -> None:
        """At the swap: bring ``new`` up to date with ``writes`` (acknowledged while it was built, in order)."""

    def lexical_for(self, collection: DocumentCollection) -> LexicalSource:
        """The lexical source searched beside ``collection`` (see the module docstring). Default: none."""
        return NoLexical(f"lexical search is not available with this storage ({type(self).__name__})")

    def refuse_writes(self, model: EmbeddingModel) -> None:  # noqa: B027 - optional hook
        """Raise a :class:`service.errors.ServiceError` when this mode takes no document writes."""

    def log(self, write: Write, model_version: str) -> None:  # noqa: B027 - optional hook
        """Make ``write`` durable before it is applied. Default: nothing to log (the collection is the
        durable copy, or nothing is)."""

    @abstractmethod
    def add_feedback(self, record: dict) -> None:
        """Store one feedback record; stored once this returns. Blocking."""

    @abstractmethod
    def read_feedback(self) -> list[dict]:
        """Every feedback record stored, oldest first. Blocking."""

    def upkeep_due(self, stopping: bool = False) -> bool:
        """Whether :meth:`upkeep` should run now (``stopping``: at a graceful stop)."""
        return False

    async def upkeep(self, lock: asyncio.Lock, current: Callable[[], Generation]) -> None:  # noqa: B027
        """Bring the store and ``current()``'s collection in line (read under ``lock``, the engine's write
        lock): store vectors re-embedded by its model, compact its index. Default: nothing to do."""

    @property
    def broken(self) -> str | None:
        """Why writes are refused until a restart (liveness fails), or ``None``."""
        return None

    def check(self, collection: DocumentCollection) -> None:  # noqa: B027 - optional hook
        """Raise :class:`service.errors.IndexUnavailable` when ``collection`` cannot serve (readiness).
        Blocking: run it on the generation's thread."""

    def durability(self) -> dict:
        """``/info``'s ``durability`` section."""
        return durability_facts(self.settings)

    def close(self) -> None:  # noqa: B027 - optional hook
        """Flush and release (after the last generation closed)."""


class NoLexical(LexicalSource):
    """A storage mode without a lexical index: lexical search is a 422 that says why, hybrid search dense only."""

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def search(self, query: str, k: int) -> LexicalHits:
        raise Unprocessable(self.reason)

    def info(self) -> dict:
        return {"engine": None, "analyzer": None, "available": False, "reason": self.reason}
