"""``bench_service``'s /search part at 100k documents, and the in-process baselines it is compared with.

The baselines (:func:`one_query_ms`: encode one query + search exactly and with the service's default index
type) are shared with ``bench_search_latency``.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import numpy as np
from http_load import Service, load, one_worker_level
from synthetic_corpus import write_search_data


def encode_one(model, question: str) -> np.ndarray:
    """One query through the service's tokenizer and backend, in this process (no queue, no batching)."""
    enc = model.tokenizer.encode([question], is_query=True)[0]
    ids = enc.ids[None, :]
    return model.backend.embed(ids, np.ones_like(ids), enc.type_ids[None, :])


def baseline_indexes(vectors: np.ndarray) -> dict:
    """Exact search and the index type the service picks by default at this size (same code, same parameters)."""
    import faiss

    from service.index import IndexConfig, VectorIndex

    n = len(vectors)
    config = IndexConfig()
    default_kind = config.resolve(n)
    indexes = {"exact": faiss.IndexFlatIP(vectors.shape[1]),
               default_kind: VectorIndex(vectors.shape[1], default_kind, config, train=vectors)}
    indexes["exact"].add(vectors)
    indexes[default_kind].add(np.arange(n, dtype=np.int64), vectors)
    faiss.omp_set_num_threads(1)
    return indexes


def one_query_ms(model, questions: list[str], indexes: dict, k: int = 10) -> dict[str, float]:
    """Median ms of encoding one query and searching each index for its ``k`` best, in process."""
    out = {}
    for kind, index in indexes.items():
        for q in questions[:5]:  # warm-up: the first queries of a fresh index and session are slower
            index.search(encode_one(model, q), k)
        times = []
        for q in questions[:100]:
            t0 = time.perf_counter()
            index.search(encode_one(model, q), k)
            times.append(time.perf_counter() - t0)
        out[kind] = round(float(np.median(times) * 1000), 2)
    return out


def search_at_100k(registry: Path, name: str, passages: list[str], base: np.ndarray, model, questions: list[str],
                   workdir: Path, quick: bool) -> dict:
    n = 100_000
    data_dir = workdir / "search-data"
    vectors = write_search_data(data_dir, passages, base, model, n)
    # in-process baselines: encode one query + search the same vectors, exactly and with the index type the
    # service picks by default at this size
    indexes = baseline_indexes(vectors)
    baseline_ms = one_query_ms(model, questions, indexes)
    del indexes, vectors
    model.close()
    svc = Service.qaembed(registry, name, data_dir)
    try:
        ready_s = svc.wait_ready()
        mem_loaded = svc.memory_mb()
        bodies = [{"query": q, "top_k": 10} for q in questions]
        asyncio.run(load(svc.url, "/search", bodies, 8, 200, 3, 1))  # warm-up
        result = asyncio.run(load(svc.url, "/search", bodies, 8, 4000, 5 if quick else 10, 1, svc.proc.pid))
        mem = svc.memory_mb()
        import httpx

        info = httpx.get(svc.url + "/info").json()
    finally:
        svc.stop()
    print("search", result, flush=True)
    one_worker = one_worker_level(registry, name, data_dir, "/search", bodies, 8, 5 if quick else 10)
    cpu = result.get("cpu_ms_per_request", {})
    # Little's law: `clients` requests always in flight, each needing this much CPU of the cores
    bound_ms = round(result["clients"] * (cpu.get("service", 0) + cpu.get("load_generator", 0))
                     / (os.cpu_count() or 1), 1)
    return {"documents": n, "ready_s": round(ready_s, 1), "index": info["index"],
            "inference_workers": info["limits"]["inference_workers"], "one_worker": one_worker,
            "baseline_encode_search_ms": baseline_ms["exact"], "baseline_ms": baseline_ms,
            "load": result, "rss_mb_loaded": mem_loaded["VmRSS"], "peak_rss_mb": mem["VmHWM"],
            "mean_latency_bound_ms": bound_ms,
            "p99_over_baseline": round(result["p99"] / baseline_ms["exact"], 2)}
