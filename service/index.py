"""The in-memory document collection of the FAISS modes: documents, their window rows and the index over them.

Vectors are searched through one FAISS index (:mod:`service.faiss_index`: the index types, chosen by size).
Deletes and replaced documents are tombstones excluded with an ``IDSelector`` at search time;
tombstones are compacted by :meth:`Collection.rebuild` (when the storage's upkeep finds it worthwhile).
A long document is several rows, one per window (:mod:`training.chunking`): a search over-fetches rows and
returns each document once, scored by its best window, with that window's ``span`` (None: one window).
A collection is not thread-safe: the service drives each one from its own single thread (which is also
what FAISS GPU indexes require). With ``faiss.get_num_gpus() > 0`` flat and IVF indexes are moved to the GPU.

Example::

    >>> import numpy as np
    >>> from service.documents import Document
    >>> from service.index import Collection, IndexConfig
    >>> c = Collection(dim=4, config=IndexConfig(kind="flat"))
    >>> v = np.eye(4, dtype=np.float32)
    >>> c.upsert([Document("a", "alpha", {"lang": "en"}), Document("b", "beta", {"lang": "tr"})], v[:2])
    >>> [(h.doc.id, round(h.score, 2)) for h in c.search(v[:1], k=2)[0]]
    [('a', 1.0), ('b', 0.0)]
    >>> [h.doc.id for h in c.search(v[:1], k=2, where={"lang": "tr"})[0]]
    ['b']
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence

import numpy as np

from training.chunking import Span, WindowVectors

from .collection import DocumentCollection, filter_key, metadata_keys
from .documents import Document, Hit
from .faiss_index import IndexConfig, VectorIndex, faiss_gpus

__all__ = ["Collection", "IndexConfig", "VectorIndex", "faiss_gpus"]

log = logging.getLogger("service.index")

EXACT_FILTER_MAX = 20_000  # filtered searches over at most this many candidates are exact brute force


class Collection(DocumentCollection):
    """Documents, their vectors (rows of one matrix; row = FAISS label) and the index over them.

    Filters as in :mod:`service.collection`. ``read_only`` marks a collection loaded from a
    published index bundle (:mod:`service.storage.bundle`).
    """

    def __init__(self, dim: int, config: IndexConfig, model_version: str = "", read_only: bool = False) -> None:
        self.dim = dim
        self.config = config
        self.model_version = model_version
        self.read_only = read_only
        self.docs: dict[str, tuple[Document, list[int]]] = {}  # id → (document, its rows: one per window)
        self._by_label: list[str | None] = []
        self._spans: list[Span | None] = []  # row → its window's span in the document (None: the whole text)
        self.live_rows_count = 0
        self._vectors = np.empty((0, dim), dtype=np.float32)
        self._meta: dict[tuple[str, str], set[int]] = {}
        self.index = VectorIndex(dim, "flat", config)

    def __len__(self) -> int:
        return len(self.docs)

    @property
    def rows(self) -> int:
        return len(self._by_label)

    def get(self, doc_id: str) -> Document | None:
        entry = self.docs.get(doc_id)
        return entry[0] if entry else None

    def vector(self, doc_id: str) -> np.ndarray | None:
        """The document's window vectors ``[windows, dim]`` (one row when it is one window)."""
        entry = self.docs.get(doc_id)
        return None if entry is None else self._vectors[entry[1]].copy()

    def upsert(self, docs: Sequence[Document], vectors: np.ndarray, owners: np.ndarray | None = None,
               spans: Sequence[Span | None] | None = None) -> None:
        """Insert or replace documents with their vectors: row ``i`` of ``vectors`` belongs to ``docs[owners[i]]``
        (default: one row each) and covers ``spans[i]`` of its text (None: all of it)."""
        rows = WindowVectors.of_documents(len(docs), self.dim, vectors, owners, spans)
        # a batch may name an id twice: the last one wins
        last = {doc.id: i for i, doc in enumerate(docs)}
        keep = sorted(last.values())
        self.delete([docs[i].id for i in keep])
        labels = self._append([docs[i] for i in keep], rows.select(keep))
        self.index.add(labels, self._vectors[labels])

    def _append(self, docs: Sequence[Document], rows: WindowVectors) -> np.ndarray:
        """Store new rows (documents' windows, vectors, metadata buckets) after the last one; returns their labels.
        ``rows.owners`` index ``docs`` and are non-decreasing (a document's rows are contiguous)."""
        vectors = rows.vectors
        start = len(self._by_label)
        need = start + len(vectors)
        if need > len(self._vectors):
            grown = np.empty((max(need, 2 * len(self._vectors), 1024), self.dim), dtype=np.float32)
            grown[:start] = self._vectors[:start]
            self._vectors = grown
        labels = np.arange(start, need, dtype=np.int64)
        self._vectors[start:need] = vectors
        for doc in docs:
            self.docs[doc.id] = (doc, [])
        for label, owner, span in zip(labels.tolist(), rows.owners.tolist(), rows.spans, strict=True):
            doc = docs[owner]
            self.docs[doc.id][1].append(label)
            self._by_label.append(doc.id)
            self._spans.append(span)
            for key in metadata_keys(doc.metadata):
                self._meta.setdefault(key, set()).add(label)
        self.live_rows_count += len(labels)
        return labels

    def delete(self, ids: Iterable[str]) -> list[str]:
        removed, labels = [], []
        for doc_id in ids:
            entry = self.docs.pop(doc_id, None)
            if entry is None:
                continue
            doc, rows = entry
            removed.append(doc_id)
            labels += rows
            self.live_rows_count -= len(rows)
            for label in rows:
                self._by_label[label] = None
            for key in metadata_keys(doc.metadata):
                bucket = self._meta.get(key)
                if bucket is not None:
                    bucket.difference_update(rows)
                    if not bucket:
                        del self._meta[key]
        self.index.remove(labels)
        return removed

    def _candidates(self, where: Mapping[str, object]) -> np.ndarray:
        result: set[int] | None = None
        for key, wanted in where.items():
            options = wanted if isinstance(wanted, list) else [wanted]
            matches: set[int] = set()
            for value in options:
                matches |= self._meta.get(filter_key(key, value), set())
            result = matches if result is None else result & matches
            if not result:
                break
        return np.fromiter(sorted(result or ()), dtype=np.int64)

    def search(self, queries: np.ndarray, k: int, where: Mapping[str, object] | None = None) -> list[list[Hit]]:
        """Top-``k`` documents per query row, best first, each once: scored by its best window."""
        queries = np.asarray(queries, dtype=np.float32).reshape(-1, self.dim)
        if not self.docs:
            return [[] for _ in range(len(queries))]
        candidates = None
        if where:
            candidates = self._candidates(where)
            if len(candidates) == 0:
                return [[] for _ in range(len(queries))]
            if len(candidates) <= EXACT_FILTER_MAX or self.index.device != "cpu":
                scores = queries @ self._vectors[candidates].T
                order = np.argsort(-scores, axis=1, kind="stable")
                return [self._distinct(candidates[order[q]], scores[q, order[q]], k) for q in range(len(queries))]
        # over-fetch windows so that k distinct documents remain after keeping each one's best window
        live = len(candidates) if candidates is not None else self.live_rows_count
        fetch = min(live, k * max(1, -(-self.live_rows_count // max(len(self.docs), 1))))
        out: list[list[Hit] | None] = [None] * len(queries)
        todo = list(range(len(queries)))
        while todo:
            scores, labels = self.index.search(queries[todo], fetch, allowed=candidates)
            again = []
            for row, q in enumerate(todo):
                hits = self._distinct(labels[row], scores[row], k)
                if len(hits) < k and fetch < live:
                    again.append(q)
                out[q] = hits
            todo, fetch = again, min(live, fetch * 4)
        return out

    def _distinct(self, labels: np.ndarray, scores: np.ndarray, k: int) -> list[Hit]:
        """The first ``k`` documents of rows ranked best first, each at its first (best) row."""
        hits: dict[str, Hit] = {}
        for label, score in zip(labels.tolist(), scores.tolist(), strict=True):
            doc_id = self._by_label[label] if label >= 0 else None
            if doc_id is not None and doc_id not in hits:
                hits[doc_id] = Hit(self.docs[doc_id][0], float(score), span=self._spans[label])
                if len(hits) == k:
                    break
        return list(hits.values())

    @property
    def chunked(self) -> bool:
        return self.live_rows_count > len(self.docs)

    def best_windows(self, query: np.ndarray, doc_ids: Sequence[str]) -> dict[str, Span]:
        query = np.asarray(query, dtype=np.float32).reshape(self.dim)
        spans = {}
        for doc_id in doc_ids:
            entry = self.docs.get(doc_id)
            if entry is not None and len(entry[1]) > 1:
                spans[doc_id] = self._spans[entry[1][int(np.argmax(self._vectors[entry[1]] @ query))]]
        return spans

    def documents(self, batch_size: int) -> Iterator[list[Document]]:
        docs, _ = self.live()
        for start in range(0, len(docs), batch_size):
            yield docs[start:start + batch_size]

    def live(self) -> tuple[list[Document], np.ndarray]:
        """Live documents in row order and the vectors of all their windows (rows, a copy; see :meth:`live_rows`)."""
        docs, rows = self.live_rows()
        return docs, rows.vectors

    def live_rows(self) -> tuple[list[Document], WindowVectors]:
        """Live documents in row order and their rows (a copy: vectors, owners indexing the documents, spans):
        what a rebuild, the store's upkeep and an index bundle read."""
        labels = [label for label, doc_id in enumerate(self._by_label) if doc_id is not None]
        order: dict[str, int] = {}
        owners = [order.setdefault(self._by_label[label], len(order)) for label in labels]
        rows = WindowVectors(self._vectors[np.asarray(labels, dtype=np.int64)].copy(),
                             np.asarray(owners, dtype=np.int64), [self._spans[label] for label in labels], len(order))
        return [self.docs[doc_id][0] for doc_id in order], rows

    def needs_rebuild(self) -> bool:
        dead = self.rows - self.live_rows_count
        return (dead > max(1000, self.live_rows_count // 5)
                or self.config.resolve(self.live_rows_count) != self.index.kind)

    def rebuild(self) -> None:
        """Compact tombstones and rebuild the index with the type suited to the current size."""
        docs, rows = self.live_rows()
        fresh = Collection.from_arrays(self.dim, self.config, self.model_version, docs, rows.vectors,
                                       owners=rows.owners, spans=rows.spans)
        self.__dict__.update(fresh.__dict__)

    @classmethod
    def from_arrays(cls, dim: int, config: IndexConfig, model_version: str, docs: Sequence[Document],
                    vectors: np.ndarray, read_only: bool = False, prebuilt: VectorIndex | None = None,
                    owners: np.ndarray | None = None, spans: Sequence[Span | None] | None = None) -> Collection:
        """Build a collection in one go: its index trained on ``vectors`` when needed, or ``prebuilt`` (an index
        read back that already holds ``vectors`` under labels 0..n-1, in order). ``owners``, ``spans``: as in
        :meth:`upsert` (default: one row per document)."""
        c = cls(dim, config, model_version, read_only)
        rows = WindowVectors.of_documents(len(docs), dim, vectors, owners, spans)
        if prebuilt is not None:
            c._append(docs, rows)
            c.index = prebuilt
            if prebuilt.ntotal != len(rows.vectors):
                raise ValueError(f"the index holds {prebuilt.ntotal} vectors for {len(rows.vectors)} rows")
            return c
        kind = config.resolve(len(rows.vectors))
        if kind != "flat":
            c.index = VectorIndex(dim, kind, config, train=rows.vectors)
        if docs:
            c.upsert(docs, rows.vectors, rows.owners, rows.spans)
        return c

    def info(self) -> dict:
        return {"type": self.index.kind, "documents": len(self.docs), "rows": self.rows,
                "windows": self.live_rows_count, "tombstones": self.rows - self.live_rows_count,
                "device": self.index.device,
                "nlist": self.index.nlist or None,
                "nprobe": self.config.nprobe if self.index.kind.startswith("ivf") else None,
                "ef_search": self.config.ef_search if self.index.kind.startswith("hnsw") else None,
                "model_version": self.model_version, "backend": "faiss", "read_only": self.read_only}
