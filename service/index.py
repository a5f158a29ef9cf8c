"""FAISS vector index and the in-memory document collection searched through it.

Index types (inner product on L2-normalised vectors = cosine):

=========== ============================================= =====================================
``flat``    exact search                                  default up to ``flat_max`` documents
``ivf``     IVF-Flat, ``nprobe`` lists probed             large corpora, exact vectors
``ivf-sq8`` IVF with 8-bit scalar quantisation            default above ``flat_max`` (4× smaller)
``ivf-pq``  IVF-PQ (``pq_m`` bytes per vector)            very large corpora, lower recall
``hnsw``    HNSW graph (``hnsw_m``, ``ef_search``)        low latency, largest memory
``hnsw-sq8`` HNSW over 8-bit scalar-quantised vectors      low latency, smaller
=========== ============================================= =====================================

Deletes and replaced documents are tombstones excluded with an ``IDSelector`` at search time;
tombstones are compacted by :meth:`Collection.rebuild` (when the storage's upkeep finds it worthwhile).
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

import json
import logging
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import faiss
import numpy as np

from .collection import DocumentCollection
from .documents import Document, Hit

log = logging.getLogger("service.index")

EXACT_FILTER_MAX = 20_000  # filtered searches over at most this many candidates are exact brute force


@dataclass(frozen=True)
class IndexConfig:
    kind: str = "auto"
    flat_max: int = 50_000
    nlist: int = 0
    nprobe: int = 64
    hnsw_m: int = 32
    ef_construction: int = 80
    ef_search: int = 64
    pq_m: int = 48
    threads: int = 1
    use_gpu: bool = False

    @classmethod
    def from_settings(cls, settings) -> IndexConfig:
        return cls(kind=settings.index, flat_max=settings.flat_max, nlist=settings.nlist,
                   nprobe=settings.nprobe, hnsw_m=settings.hnsw_m, ef_construction=settings.ef_construction,
                   ef_search=settings.ef_search, pq_m=settings.pq_m, threads=settings.index_threads,
                   use_gpu=faiss_gpus() > 0)

    def resolve(self, n: int) -> str:
        """The index type used for ``n`` vectors (IVF types need enough vectors to train)."""
        kind = self.kind
        if kind == "auto":
            kind = "flat" if n <= self.flat_max else "ivf-sq8"
        if kind.startswith("ivf") and n < 256:
            return "flat"
        return kind

    def lists(self, n: int) -> int:
        """IVF lists for ``n`` vectors: ``nlist``, or 2·√n. Measured at nprobe 64 on vectors shaped like real
        embeddings (bench/bench_service.py, ad-hoc sweep 2026-11-26): √n lists fell below recall@10 0.95 at 1M
        (0.942), 2·√n keeps 0.96 at both 100k and 1M and searches 1.8× (100k) to 2× (1M) faster than √n;
        4·√n (the low end of FAISS's guidance) is faster still but lost 2 points of recall at 100k and
        triples the k-means time (95 s at 1M on 2 cores). Capped so each list gets ≥ 39 training points."""
        nlist = self.nlist or int(2 * math.sqrt(max(n, 1)))
        return max(1, min(nlist, n // 39))


def faiss_gpus() -> int:
    try:
        return int(faiss.get_num_gpus())
    except AttributeError:  # faiss-cpu builds without the GPU module
        return 0


class VectorIndex:
    """One FAISS index with int64 labels, tombstones and per-search parameters."""

    def __init__(self, dim: int, kind: str, config: IndexConfig, train: np.ndarray | None = None,
                 prebuilt: faiss.Index | None = None) -> None:
        """``prebuilt``: an index of type ``kind`` read back with ``faiss.read_index`` (already trained)."""
        self.dim, self.kind, self.config = dim, kind, config
        self.dead: set[int] = set()
        self._dead_selector = None
        self.nlist = 0
        metric = faiss.METRIC_INNER_PRODUCT
        if prebuilt is not None:
            index = prebuilt
            # the search settings of this run, not those saved with the index
            if kind.startswith("ivf"):
                ivf = faiss.extract_index_ivf(index)
                ivf.nprobe, self.nlist = config.nprobe, int(ivf.nlist)
            elif kind.startswith("hnsw"):
                inner = faiss.downcast_index(index.index if isinstance(index, faiss.IndexIDMap) else index)
                inner.hnsw.efSearch = config.ef_search
        elif kind == "flat":
            index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        elif kind in ("ivf", "ivf-sq8", "ivf-pq"):
            assert train is not None and len(train) > 0, "IVF needs training vectors"
            self.nlist = config.lists(len(train))
            self._quantizer = faiss.IndexFlatIP(dim)
            if kind == "ivf":
                index = faiss.IndexIVFFlat(self._quantizer, dim, self.nlist, metric)
            elif kind == "ivf-sq8":
                index = faiss.IndexIVFScalarQuantizer(self._quantizer, dim, self.nlist,
                                                      faiss.ScalarQuantizer.QT_8bit, metric)
            else:
                m = config.pq_m if dim % config.pq_m == 0 else next(d for d in (48, 32, 24, 16, 8, 4, 2, 1)
                                                                     if dim % d == 0)
                index = faiss.IndexIVFPQ(self._quantizer, dim, self.nlist, m, 8, metric)
            index.train(_sample(train, max(self.nlist * 64, 50_000)))
            index.nprobe = config.nprobe
        elif kind == "hnsw":
            inner = faiss.IndexHNSWFlat(dim, config.hnsw_m, metric)
            inner.hnsw.efConstruction = config.ef_construction
            inner.hnsw.efSearch = config.ef_search
            index = faiss.IndexIDMap2(inner)
        elif kind == "hnsw-sq8":
            inner = faiss.IndexHNSWSQ(dim, faiss.ScalarQuantizer.QT_8bit, config.hnsw_m, metric)
            inner.hnsw.efConstruction = config.ef_construction
            inner.hnsw.efSearch = config.ef_search
            assert train is not None and len(train) > 0, "SQ8 needs training vectors"
            inner.train(_sample(train, 100_000))
            index = faiss.IndexIDMap2(inner)
        else:
            raise ValueError(f"unknown index type {kind!r}")
        self.device = "cpu"
        if config.use_gpu and kind in ("flat", "ivf", "ivf-sq8", "ivf-pq"):  # pragma: no cover - needs a GPU
            try:
                self._gpu_res = faiss.StandardGpuResources()
                index = faiss.index_cpu_to_gpu(self._gpu_res, 0, index)
                self.device = "cuda"
            except Exception as exc:
                log.warning("cannot move the %s index to the GPU (%s); staying on CPU", kind, exc)
        self.index = index

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    def add(self, labels: np.ndarray, vectors: np.ndarray) -> None:
        if len(labels):
            self.index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32),
                                    np.ascontiguousarray(labels, dtype=np.int64))

    def remove(self, labels: Iterable[int]) -> None:
        before = len(self.dead)
        self.dead.update(int(x) for x in labels)
        if len(self.dead) != before:
            self._dead_selector = None

    def _params(self, selector):
        if self.kind.startswith("ivf"):
            return faiss.SearchParametersIVF(sel=selector, nprobe=self.config.nprobe)
        if self.kind.startswith("hnsw"):
            return faiss.SearchParametersHNSW(sel=selector, efSearch=max(self.config.ef_search, 16))
        return faiss.SearchParameters(sel=selector)

    def search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` (scores, labels); label -1 where fewer than ``k`` live vectors match."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        k = max(1, min(k, max(self.ntotal, 1)))
        selector = None
        if allowed is not None:
            selector = faiss.IDSelectorBatch(np.ascontiguousarray(allowed, dtype=np.int64))
        elif self.dead:
            if self._dead_selector is None:
                dead = np.fromiter(self.dead, dtype=np.int64, count=len(self.dead))
                batch = faiss.IDSelectorBatch(dead)
                self._dead_selector = (faiss.IDSelectorNot(batch), batch, dead)  # keep refs alive
            selector = self._dead_selector[0]
        if selector is None:
            return self.index.search(queries, k)
        return self.index.search(queries, k, params=self._params(selector))

    def memory_bytes(self) -> int:
        try:
            return len(faiss.serialize_index(self.index))
        except Exception:  # pragma: no cover - GPU indexes
            return 0


def _sample(vectors: np.ndarray, limit: int) -> np.ndarray:
    if len(vectors) <= limit:
        return np.ascontiguousarray(vectors, dtype=np.float32)
    rng = np.random.default_rng(0)
    return np.ascontiguousarray(vectors[rng.choice(len(vectors), limit, replace=False)], dtype=np.float32)


def _meta_keys(metadata: Mapping[str, object]) -> Iterable[tuple[str, str]]:
    for key, value in metadata.items():
        values = value if isinstance(value, list) else [value]
        for v in values:
            if v is None or isinstance(v, (str, int, float, bool)):
                yield key, json.dumps(v, sort_keys=True)


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
        self.docs: dict[str, tuple[Document, int]] = {}
        self._by_label: list[str | None] = []
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
        entry = self.docs.get(doc_id)
        return None if entry is None else self._vectors[entry[1]].copy()

    def upsert(self, docs: Sequence[Document], vectors: np.ndarray) -> None:
        """Insert or replace documents with their vectors."""
        vectors = np.asarray(vectors, dtype=np.float32).reshape(len(docs), self.dim)
        # a batch may name an id twice: the last one wins
        last = {doc.id: i for i, doc in enumerate(docs)}
        keep = sorted(last.values())
        self.delete([docs[i].id for i in keep])
        labels = self._append([docs[i] for i in keep], vectors[keep])
        self.index.add(labels, self._vectors[labels])

    def _append(self, docs: Sequence[Document], vectors: np.ndarray) -> np.ndarray:
        """Store new rows (documents, vectors, metadata buckets) after the last one; returns their labels."""
        start = len(self._by_label)
        need = start + len(docs)
        if need > len(self._vectors):
            grown = np.empty((max(need, 2 * len(self._vectors), 1024), self.dim), dtype=np.float32)
            grown[:start] = self._vectors[:start]
            self._vectors = grown
        labels = np.arange(start, need, dtype=np.int64)
        self._vectors[start:need] = vectors
        for label, doc in zip(labels.tolist(), docs, strict=True):
            self.docs[doc.id] = (doc, label)
            self._by_label.append(doc.id)
            for key in _meta_keys(doc.metadata):
                self._meta.setdefault(key, set()).add(label)
        return labels

    def delete(self, ids: Iterable[str]) -> list[str]:
        removed, labels = [], []
        for doc_id in ids:
            entry = self.docs.pop(doc_id, None)
            if entry is None:
                continue
            doc, label = entry
            removed.append(doc_id)
            labels.append(label)
            self._by_label[label] = None
            for key in _meta_keys(doc.metadata):
                bucket = self._meta.get(key)
                if bucket is not None:
                    bucket.discard(label)
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
                matches |= self._meta.get((key, json.dumps(value, sort_keys=True)), set())
            result = matches if result is None else result & matches
            if not result:
                break
        return np.fromiter(sorted(result or ()), dtype=np.int64)

    def search(self, queries: np.ndarray, k: int, where: Mapping[str, object] | None = None) -> list[list[Hit]]:
        """Top-``k`` hits per query row, best first."""
        queries = np.asarray(queries, dtype=np.float32).reshape(-1, self.dim)
        if not self.docs:
            return [[] for _ in range(len(queries))]
        if where:
            candidates = self._candidates(where)
            if len(candidates) == 0:
                return [[] for _ in range(len(queries))]
            if len(candidates) <= EXACT_FILTER_MAX or self.index.device != "cpu":
                scores = queries @ self._vectors[candidates].T
                top = min(k, len(candidates))
                order = np.argsort(-scores, axis=1, kind="stable")[:, :top]
                return [[self._hit(int(candidates[j]), float(scores[q, j])) for j in order[q]]
                        for q in range(len(queries))]
            scores, labels = self.index.search(queries, k, allowed=candidates)
        else:
            scores, labels = self.index.search(queries, k)
        out = []
        for q in range(len(queries)):
            hits = [self._hit(int(label), float(score))
                    for score, label in zip(scores[q], labels[q], strict=True)
                    if label >= 0 and self._by_label[int(label)] is not None]
            out.append(hits[:k])
        return out

    def _hit(self, label: int, score: float) -> Hit:
        return Hit(self.docs[self._by_label[label]][0], score)

    def documents(self, batch_size: int) -> Iterator[list[Document]]:
        docs, _ = self.live()
        for start in range(0, len(docs), batch_size):
            yield docs[start:start + batch_size]

    def live(self) -> tuple[list[Document], np.ndarray]:
        """Live documents in row order and their vectors (a copy): what a rebuild and the store's upkeep read."""
        rows = [(label, doc_id) for label, doc_id in enumerate(self._by_label) if doc_id is not None]
        labels = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        return [self.docs[doc_id][0] for _, doc_id in rows], self._vectors[labels].copy()

    def needs_rebuild(self) -> bool:
        dead = self.rows - len(self.docs)
        return dead > max(1000, len(self.docs) // 5) or self.config.resolve(len(self.docs)) != self.index.kind

    def rebuild(self) -> None:
        """Compact tombstones and rebuild the index with the type suited to the current size."""
        docs, vectors = self.live()
        fresh = Collection.from_arrays(self.dim, self.config, self.model_version, docs, vectors)
        self.__dict__.update(fresh.__dict__)

    @classmethod
    def from_arrays(cls, dim: int, config: IndexConfig, model_version: str, docs: Sequence[Document],
                    vectors: np.ndarray, read_only: bool = False, prebuilt: VectorIndex | None = None) -> Collection:
        """Build a collection in one go: its index trained on ``vectors`` when needed, or ``prebuilt`` (an index
        read back that already holds ``vectors`` under labels 0..n-1, in order)."""
        c = cls(dim, config, model_version, read_only)
        vectors = np.asarray(vectors, dtype=np.float32).reshape(len(docs), dim)
        if prebuilt is not None:
            c._append(docs, vectors)
            c.index = prebuilt
            if prebuilt.ntotal != len(docs):
                raise ValueError(f"the index holds {prebuilt.ntotal} vectors for {len(docs)} documents")
            return c
        kind = config.resolve(len(docs))
        if kind != "flat":
            c.index = VectorIndex(dim, kind, config, train=vectors)
        if docs:
            c.upsert(docs, vectors)
        return c

    def info(self) -> dict:
        return {"type": self.index.kind, "documents": len(self.docs), "rows": self.rows,
                "tombstones": self.rows - len(self.docs), "device": self.index.device,
                "nlist": self.index.nlist or None,
                "nprobe": self.config.nprobe if self.index.kind.startswith("ivf") else None,
                "ef_search": self.config.ef_search if self.index.kind.startswith("hnsw") else None,
                "model_version": self.model_version, "backend": "faiss", "read_only": self.read_only}
