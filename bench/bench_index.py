"""Benchmark of the two index backends: FAISS in process vs Milvus (Lite) on the same 100k vectors.

    python bench/bench_index.py [--n 100000] [--seconds 10]

* **Data**: ``--n`` random unit vectors (dim 384, seed 0) and 200 random unit queries; ground truth
  by exact inner-product search (``faiss.IndexFlatIP``). Random vectors are the hard case for
  approximate indexes (no cluster structure), so recall here is a floor, not a typical value.
* **FAISS**: :class:`service.index.Collection` (what a replica searches in process) as exact
  ``flat``, the service default at this size (``auto`` = IVF-SQ8, nlist = 2·√n, nprobe 64) and
  ``hnsw`` (M 32, ef 64), one OpenMP thread per search as in the service.
* **Milvus Lite**: ``milvus-lite server`` (Milvus Lite 3.x, a separate process on loopback, as shared
  by several replicas), searched through :class:`service.milvus.MilvusCollection` (the service's
  own calls), HNSW (M 32, ef 64; what ``k8s/overlays/distributed`` uses) then FLAT on the same rows.
  Vectors are inserted in batches of 5000, then flushed so searches run on sealed, indexed segments.
* **Load**: 1 and 8 concurrent clients (threads of this process), one query per request, top 10,
  each level up to ``--seconds`` s or 2000 requests; QPS and p50/p99 latency. Recall@10 of every
  configuration against exact search (queries sent in batches).

Writes ``docs/benchmarks/index.md``, ``docs/benchmarks/index.png`` and ``bench/results/index.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results" / "index.json"
DOC = ROOT / "docs" / "benchmarks" / "index.md"
DIM, QUERIES, K = 384, 200, 10


def unit(rng: np.random.Generator, n: int) -> np.ndarray:
    out = np.empty((n, DIM), dtype=np.float32)
    for start in range(0, n, 50_000):
        x = rng.standard_normal((min(50_000, n - start), DIM), dtype=np.float32)
        out[start:start + len(x)] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def load(search, queries: np.ndarray, clients: int, seconds: float, max_requests: int = 2000) -> dict:
    """``clients`` threads sending one query each per request; QPS and latency percentiles."""
    latencies: list[float] = []
    lock = threading.Lock()
    sent = [0]
    deadline = time.perf_counter() + seconds

    def worker() -> None:
        while time.perf_counter() < deadline:
            with lock:
                if sent[0] >= max_requests:
                    return
                i = sent[0]
                sent[0] += 1
            t0 = time.perf_counter()
            search(queries[i % len(queries)][None, :])
            with lock:
                latencies.append(time.perf_counter() - t0)

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    ms = np.asarray(latencies) * 1000
    return {"clients": clients, "requests": len(latencies), "qps": round(len(latencies) / elapsed, 1),
            "p50_ms": round(float(np.percentile(ms, 50)), 1), "p99_ms": round(float(np.percentile(ms, 99)), 1)}


def recall(search, queries: np.ndarray, exact: np.ndarray, batch: int = 50) -> float:
    found = []
    for start in range(0, len(queries), batch):
        found += [[h.doc.id for h in row] for row in search(queries[start:start + batch])]
    return round(float(np.mean([len({f"d{i}" for i in truth} & set(got)) / K
                                for truth, got in zip(exact, found, strict=True)])), 4)


def measure(name: str, search, queries: np.ndarray, exact: np.ndarray, seconds: float, extra: dict) -> dict:
    row = {"config": name, **extra, "recall@10": recall(search, queries, exact),
           "levels": [load(search, queries, c, seconds) for c in (1, 8)]}
    print(json.dumps(row), flush=True)
    return row


# ------------------------------------------------------------------------------------------- FAISS
def faiss_rows(vectors: np.ndarray, queries: np.ndarray, exact: np.ndarray, seconds: float) -> list[dict]:
    import faiss

    from service.documents import Document
    from service.index import Collection, IndexConfig

    docs = [Document(f"d{i}", "", {}) for i in range(len(vectors))]
    rows = []
    for kind in ("flat", "auto", "hnsw"):
        faiss.omp_set_num_threads(2)  # build with both cores
        t0 = time.perf_counter()
        c = Collection.from_arrays(DIM, IndexConfig(kind=kind, ef_search=64), "bench", docs, vectors)
        build_s = time.perf_counter() - t0
        faiss.omp_set_num_threads(1)  # search like the service: one thread per search
        info = c.info()
        params = {k: info[k] for k in ("nlist", "nprobe", "ef_search") if info.get(k)}
        name = f"faiss auto = {info['type']} (service default)" if kind == "auto" else f"faiss {kind}"
        rows.append(measure(name, lambda q, c=c: c.search(q, K), queries, exact, seconds,
                            {"engine": "faiss", "kind": kind, "build_s": round(build_s, 1), **params}))
        del c
    return rows


# ------------------------------------------------------------------------------------------- Milvus Lite
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def milvus_rows(vectors: np.ndarray, queries: np.ndarray, exact: np.ndarray, seconds: float,
                workdir: Path) -> list[dict]:
    from service.documents import Document
    from service.milvus import MilvusStore
    from service.settings import Settings

    port = free_port()
    server = subprocess.Popen([str(Path(sys.executable).parent / "milvus-lite"), "server", "--data-dir",
                               str(workdir / "milvus"), "--host", "127.0.0.1", "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rows = []
    try:
        while True:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.1)
        settings = Settings.build(index="milvus", milvus_uri=f"http://127.0.0.1:{port}", name="bench",
                                  milvus_index_type="HNSW", hnsw_m=32, ef_construction=80, ef_search=64)
        store = MilvusStore(settings)
        c = store.open("v0001", DIM)
        t0 = time.perf_counter()
        for start in range(0, len(vectors), 5000):
            stop = min(start + 5000, len(vectors))
            c.write([(Document(f"d{i}", "", {}), 0) for i in range(start, stop)], vectors[start:stop])
        insert_s = time.perf_counter() - t0
        client = store.client
        for kind, params in (("HNSW", {"M": 32, "efConstruction": 80}), ("FLAT", {})):
            t0 = time.perf_counter()
            if kind != "HNSW":  # same rows, another index
                client.release_collection(c.name)
                client.drop_index(c.name, "vector")
                index = client.prepare_index_params()
                index.add_index("vector", index_type=kind, metric_type="IP", params=params)
                client.create_index(c.name, index)
            client.flush(c.name)
            client.load_collection(c.name)
            while client.describe_index(c.name, "vector")["pending_index_rows"]:
                time.sleep(0.5)
            c.search(queries[:1], K)  # first search loads the segments
            index_s = time.perf_counter() - t0
            store.settings = settings.replace(milvus_index_type=kind)  # search parameters of this index
            rows.append(measure(f"milvus-lite {kind.lower()}", lambda q: c.search(q, K), queries, exact, seconds,
                                {"engine": "milvus-lite", "kind": kind.lower(), "insert_s": round(insert_s, 1),
                                 "index_s": round(index_s, 1), **({"ef_search": 64} if kind == "HNSW" else {})}))
        store.close()
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(60)
    return rows


# ------------------------------------------------------------------------------------------- report
def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (qps_axis, p99_axis) = plt.subplots(1, 2, figsize=(11, 4.2))
    x = np.arange(len(rows))
    for offset, clients in ((-0.2, 1), (0.2, 8)):
        level = [next(lv for lv in r["levels"] if lv["clients"] == clients) for r in rows]
        qps_axis.bar(x + offset, [lv["qps"] for lv in level], 0.4, label=f"{clients} client(s)")
        p99_axis.bar(x + offset, [lv["p99_ms"] for lv in level], 0.4, label=f"{clients} client(s)")
    labels = [f"{r['config'].replace(' (service default)', '*')}\nrecall {r['recall@10']}" for r in rows]
    for axis, title in ((qps_axis, "search QPS (log)"), (p99_axis, "p99 latency ms (log)")):
        axis.set_yscale("log")
        axis.set_xticks(x)
        axis.set_xticklabels(labels, fontsize=7)
        axis.set_title(title)
        axis.legend(fontsize=8)
    figure.suptitle(f"{rows[0]['n']:,} random unit vectors, dim {DIM}, top {K} (* = service default)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def report(results: dict) -> str:
    lines = ["# Index backends: FAISS vs Milvus Lite", "",
             f"Command: `{results['command']}` ({results['machine']}; {results['seconds_total']} s; load average "
             f"{results['load_average']} at the end, this benchmark and Milvus Lite's server included: compare rows, "
             "not absolute numbers). "
             f"{results['n']:,} random unit vectors (dim {DIM}), {QUERIES} random queries, top {K}; recall@10 "
             "against exact search. Clients are threads of the benchmark process sending one query per request "
             "through the service's own collection code (`service.index.Collection`, "
             "`service.milvus.MilvusCollection`); Milvus Lite runs as `milvus-lite server` on loopback (a "
             "separate process, as when replicas share it).", "",
             "| config | params | build / insert+index s | recall@10 | QPS 1 client | p50 / p99 ms (requests) | "
             "QPS 8 clients | p50 / p99 ms (requests) |", "|---|---|---|---|---|---|---|---|"]
    for r in results["rows"]:
        one, eight = r["levels"]
        params = ", ".join(f"{k}={r[k]}" for k in ("nlist", "nprobe", "ef_search") if k in r)
        build = r["build_s"] if "build_s" in r else f"{r['insert_s']} + {r['index_s']}"
        lines.append(f"| {r['config']} | {params} | {build} | {r['recall@10']} | {one['qps']} | {one['p50_ms']} / "
                     f"{one['p99_ms']} ({one['requests']}) | {eight['qps']} | {eight['p50_ms']} / {eight['p99_ms']} "
                     f"({eight['requests']}) |")
    lines += ["", "![QPS and p99 per configuration](index.png)", "", "## Reading it", ""]
    lines += [f"* {note}" for note in results["notes"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=100_000)
    p.add_argument("--seconds", type=float, default=10.0, help="per load level")
    args = p.parse_args()
    import faiss

    t_start = time.perf_counter()
    rng = np.random.default_rng(0)
    vectors, queries = unit(rng, args.n), unit(rng, QUERIES)
    flat = faiss.IndexFlatIP(DIM)
    flat.add(vectors)
    _, exact = flat.search(queries, K)
    del flat
    workdir = Path(tempfile.mkdtemp(prefix="bench-index-"))
    rows = faiss_rows(vectors, queries, exact, args.seconds) + milvus_rows(vectors, queries, exact, args.seconds,
                                                                           workdir)
    for r in rows:
        r["n"] = args.n
    by = {(r["engine"], r["kind"]): r for r in rows}
    default, lite = by["faiss", "auto"], by["milvus-lite", "hnsw"]
    qps8 = {k: next(lv["qps"] for lv in r["levels"] if lv["clients"] == 8) for k, r in by.items()}
    notes = [
        f"In process, FAISS answers a query in {default['levels'][0]['p50_ms']} ms with the service default "
        f"({default['config']}); exact flat search costs {by['faiss', 'flat']['levels'][0]['p50_ms']} ms and is "
        "the reference (recall 1.0).",
        f"Milvus Lite is {qps8['faiss', 'auto'] / max(qps8['milvus-lite', 'hnsw'], 0.1):.0f}× slower "
        f"than the FAISS default at 8 clients ({qps8['milvus-lite', 'hnsw']} vs {qps8['faiss', 'auto']} QPS; "
        "its 1-client p99 rests on few requests). A profile of its search: about 1 ms in FAISS HNSW, about "
        "190 ms building a per-search deletion/visibility mask row by row in Python, the rest gRPC and one "
        "Python process serving all clients. Milvus Lite is a development and test engine; a Milvus cluster "
        "(C++/Go query nodes) was not available here, so these numbers say nothing about one.",
        f"Recall@10 on random vectors: FAISS IVF-SQ8 {default['recall@10']}, FAISS HNSW "
        f"{by['faiss', 'hnsw']['recall@10']}, Milvus Lite HNSW {lite['recall@10']}. Random vectors have no "
        "neighbourhood structure, the worst case for IVF and graph indexes; on real embeddings "
        "docs/benchmarks/service.md measured 0.96 (IVF-SQ8, nprobe 64) and 0.95 (HNSW, ef 128). Milvus Lite "
        "likely searches one small HNSW graph per segment and merges the results, close to exhaustive on "
        "100k rows (recall 1.0 at its latency), not the large-segment HNSW of a Milvus cluster.",
        f"Loading {args.n:,} vectors into Milvus Lite took {lite['insert_s']} s (batches of 5000 over gRPC), "
        f"flushing and indexing {lite['index_s']} s.",
        "Choosing (docs/operations.md, \"Choosing an index backend\"): one replica or a corpus that fits one "
        "node's memory → FAISS in process (fastest, GPU when present, SQLite for durability); a static corpus "
        "served by many replicas → a read-only FAISS index bundle; many writable replicas or a corpus beyond "
        "one node → a Milvus cluster, not Milvus Lite.",
    ]
    results = {"command": "python bench/bench_index.py " + " ".join(sys.argv[1:]),
               "machine": f"{os.cpu_count()} CPU cores, {platform.machine()}, no GPU", "n": args.n,
               "rows": rows, "notes": notes, "seconds_total": round(time.perf_counter() - t_start),
               "load_average": round(os.getloadavg()[0], 1)}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=1))
    DOC.parent.mkdir(parents=True, exist_ok=True)
    plot(rows, DOC.with_suffix(".png"))
    DOC.write_text(report(results), encoding="utf-8")
    print(f"wrote {DOC}")


if __name__ == "__main__":
    main()
