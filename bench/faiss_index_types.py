"""``bench_service``'s FAISS part: index types at 100k and 1M vectors shaped like real embeddings.

Flat, IVF-Flat / IVF-SQ8 / IVF-PQ at √n-sized lists and at the service's default list count, HNSW up to
``hnsw_max``: build time, index size, QPS (one search thread, as the service) and recall@10 against exact search.
"""

from __future__ import annotations

import time

import numpy as np
from synthetic_corpus import synthetic


def index_scale(base: np.ndarray, queries: np.ndarray, sizes: list[int], hnsw_max: int) -> list[dict]:
    import faiss

    from service.index import IndexConfig

    faiss.omp_set_num_threads(2)
    rows = []
    for n in sizes:
        vectors, _ = synthetic(base, n, noise=0.75, seed=2)
        dim = vectors.shape[1]
        nq = len(queries)

        def measure(name: str, index, build_s: float, params: dict | None = None, exact=None, n=n,
                    nq=nq) -> dict:
            faiss.omp_set_num_threads(1)  # the service searches with one thread per query batch
            t0 = time.perf_counter()
            _, labels = index.search(queries, 10)
            seconds = time.perf_counter() - t0
            faiss.omp_set_num_threads(2)
            recall = 1.0 if exact is None else float(np.mean([len(set(a) & set(b)) / 10
                                                              for a, b in zip(labels, exact, strict=True)]))
            row = {"n": n, "index": name, **(params or {}), "build_s": round(build_s, 1),
                   "size_mb": round(len(faiss.serialize_index(index)) / 2**20, 1),
                   "qps": round(nq / seconds, 1), "recall@10": round(recall, 4)}
            print("index", row, flush=True)
            return row

        t0 = time.perf_counter()
        flat = faiss.IndexFlatIP(dim)
        flat.add(vectors)
        flat_row = measure("flat", flat, time.perf_counter() - t0)
        _, exact = flat.search(queries, 10)
        rows.append(flat_row)
        del flat
        # √n-sized lists (1024 / 256) and the service's default (2·√n, service.index.IndexConfig.lists)
        for first, nlist in zip((True, False), (1024 if n >= 500_000 else 256, IndexConfig().lists(n))):
            t0 = time.perf_counter()
            quantizer = faiss.IndexFlatIP(dim)
            km = faiss.Clustering(dim, nlist)
            km.niter = 10
            km.max_points_per_centroid = 64
            km.train(vectors[np.random.default_rng(3).choice(n, min(n, nlist * 64), replace=False)], quantizer)
            coarse_s = time.perf_counter() - t0
            # IVF-PQ only on the first: it loses too much recall on these vectors at any list count
            for kind in ("ivf-flat", "ivf-sq8") + (("ivf-pq96",) if first else ()):
                t0 = time.perf_counter()
                if kind == "ivf-flat":
                    index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
                elif kind == "ivf-sq8":
                    index = faiss.IndexIVFScalarQuantizer(quantizer, dim, nlist, faiss.ScalarQuantizer.QT_8bit,
                                                          faiss.METRIC_INNER_PRODUCT)
                    index.train(vectors[:50_000])
                else:
                    index = faiss.IndexIVFPQ(quantizer, dim, nlist, 96, 8, faiss.METRIC_INNER_PRODUCT)
                    index.train(vectors[:20_000])
                index.add(vectors)
                build = time.perf_counter() - t0 + coarse_s
                for nprobe in (8, 32, 64):
                    index.nprobe = nprobe
                    rows.append(measure(kind, index, build, {"nlist": nlist, "nprobe": nprobe}, exact))
                del index
        if n <= hnsw_max:
            for kind in ("hnsw32", "hnsw32-sq8"):
                t0 = time.perf_counter()
                if kind == "hnsw32":
                    index = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
                else:
                    index = faiss.IndexHNSWSQ(dim, faiss.ScalarQuantizer.QT_8bit, 32, faiss.METRIC_INNER_PRODUCT)
                    index.train(vectors[:50_000])
                index.hnsw.efConstruction = 80
                index.add(vectors)
                build = time.perf_counter() - t0
                for ef in (32, 64, 128):
                    index.hnsw.efSearch = ef
                    rows.append(measure(kind, index, build, {"ef_search": ef}, exact))
                del index
        del vectors
    return rows
