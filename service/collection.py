"""The document collection behind the engine: one interface, an embedded and a distributed engine.

================= =============================================== ==========================================
``index.py``      :class:`service.index.Collection`: FAISS in      default (``--index auto|faiss|flat|...``):
                  process, durable in the service's SQLite store    one replica, GPU when present
``milvus.py``     :class:`service.milvus.MilvusCollection`:         ``--index milvus``: stateless replicas,
                  documents, metadata and vectors in Milvus         any replica writes, corpus beyond one node
================= =============================================== ==========================================

A collection holds the vectors of exactly one model version (``model_version``): the engine pairs
it with that model in a generation, so no query is searched against another model's vectors.

Metadata filters (``where``) mean the same everywhere: ``{"key": value}`` matches documents whose
metadata ``key`` equals ``value`` (or contains it, for list values); ``{"key": [v1, v2]}`` matches
any of the values; several keys must all match.

Where a collection's documents persist (a SQLite store, Milvus itself, an index bundle, nowhere) is not its
business: :mod:`service.storage` composes collections into the service's storage modes.

Example (the interface, on the embedded engine)::

    >>> import numpy as np
    >>> from service.documents import Document
    >>> from service.index import Collection, IndexConfig
    >>> c: DocumentCollection = Collection(dim=2, config=IndexConfig(kind="flat"), model_version="v1")
    >>> c.upsert([Document("a", "alpha", {"tags": ["x"]}), Document("b", "beta")], np.eye(2, dtype=np.float32))
    >>> [h.doc.id for h in c.search(np.eye(2, dtype=np.float32)[1:], k=2, where={"tags": "x"})[0]]
    ['a']
    >>> len(c), c.delete(["a", "zz"]), [d.id for batch in c.documents(10) for d in batch]
    (2, ['a'], ['b'])
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping, Sequence

import numpy as np

from .documents import Document, Hit


def filter_key(key: str, value: object) -> tuple[str, str]:
    """The one spelling of ``key = value`` a filter compares: the value's canonical JSON."""
    return key, json.dumps(value, sort_keys=True)


def metadata_keys(metadata: Mapping[str, object]) -> Iterable[tuple[str, str]]:
    """The :func:`filter_key` of every value a filter can match in ``metadata`` (each item of a list; scalars
    only: nested objects match nothing)."""
    for key, value in metadata.items():
        for v in value if isinstance(value, list) else [value]:
            if v is None or isinstance(v, (str, int, float, bool)):
                yield filter_key(key, v)


def matches(metadata: Mapping[str, object], where: Mapping[str, object]) -> bool:
    """Whether one document's ``metadata`` passes ``where`` (see the module docstring)."""
    have = set(metadata_keys(metadata))
    return all(any(filter_key(key, w) in have for w in (wanted if isinstance(wanted, list) else [wanted]))
               for key, wanted in where.items())


class DocumentCollection(ABC):
    """Documents with their vectors (embedded by ``model_version``), searchable with filters."""

    model_version: str = ""
    read_only: bool = False  # a published index bundle: the engine refuses writes
    workers: int = 1  # calls the engine may run at once (a FAISS index is driven by one thread)

    @abstractmethod
    def __len__(self) -> int:
        """Number of live documents."""

    @abstractmethod
    def get(self, doc_id: str) -> Document | None: ...

    @abstractmethod
    def upsert(self, docs: Sequence[Document], vectors: np.ndarray, owners: np.ndarray | None = None,
               spans: Sequence[tuple[int, int] | None] | None = None) -> None:
        """Insert or replace documents with their vectors; the last of a repeated id wins. Row ``i`` of ``vectors``
        is ``docs[owners[i]]``'s (default: ``docs[i]``'s), a window covering ``spans[i]`` of its text (None: the
        whole text): a long document has several rows (:mod:`training.chunking`); a search returns it once, scored
        by its best window, with that window's span as :attr:`Hit.span`."""

    @abstractmethod
    def delete(self, ids: Sequence[str]) -> list[str]:
        """Remove documents; returns the ids that existed."""

    @abstractmethod
    def search(self, queries: np.ndarray, k: int, where: Mapping[str, object] | None = None) -> list[list[Hit]]:
        """Top-``k`` hits per query row (inner product of unit vectors = cosine), best first."""

    @property
    def chunked(self) -> bool:
        """Whether a document may have several windows: when not, :meth:`best_windows` has nothing to say and
        hybrid search does not ask it (a read on the event loop: stale by a write at most)."""
        return True

    @abstractmethod
    def best_windows(self, query: np.ndarray, doc_ids: Sequence[str]) -> dict[str, tuple[int, int]]:
        """The span of each listed chunked document's window nearest to ``query`` (one vector): what a dense hit
        would carry, for hits another ranker found (hybrid). Documents of one window, or gone, are left out."""

    @abstractmethod
    def documents(self, batch_size: int) -> Iterator[list[Document]]:
        """Every live document, in batches (re-embedding with another model streams through this)."""

    @abstractmethod
    def info(self) -> dict:
        """What ``/info`` shows under ``index``; always has ``type``, ``documents`` and ``model_version``."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections or memory."""
