"""The FAISS index of one collection: index types, their settings, tombstones and per-search parameters.

Index types (inner product on L2-normalised vectors = cosine):

=========== ============================================= =====================================
``flat``    exact search                                  default up to ``flat_max`` documents
``ivf``     IVF-Flat, ``nprobe`` lists probed             large corpora, exact vectors
``ivf-sq8`` IVF with 8-bit scalar quantisation            default above ``flat_max`` (4× smaller)
``ivf-pq``  IVF-PQ (``pq_m`` bytes per vector)            very large corpora, lower recall
``hnsw``    HNSW graph (``hnsw_m``, ``ef_search``)        low latency, largest memory
``hnsw-sq8`` HNSW over 8-bit scalar-quantised vectors      low latency, smaller
=========== ============================================= =====================================

With ``faiss.get_num_gpus() > 0`` flat and IVF indexes are moved to the GPU. Not thread-safe (see
:mod:`service.index`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass

import faiss
import numpy as np

log = logging.getLogger("service.index")


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
