"""``/search`` latency over 100k documents by mode (dense, hybrid, lexical): closed loop at 1 and 8 clients, and
open loop (Poisson arrivals at half the measured 8-client hybrid capacity, bounded in time).

    python bench/bench_search_latency.py [--registry DIR --name NAME] [--documents 100000] [--seconds 10]
                                         [--open_loop_seconds 60] [--modes dense hybrid lexical] [--no_docs]

The data directory is written as ``bench/bench_service.py``'s /search part writes it
(:func:`synthetic_corpus.write_search_data`): ``--documents`` passage beginnings with real passage embeddings +
noise, straight into the service's SQLite store with their vectors, so the lexical (FTS5) index is built too and
the start embeds nothing. ``python -m service`` serves it on loopback (its default index for that size); this
process is the load generator (aiohttp, same 2 cores).

* **Closed loop** (:func:`http_load.load`): ``clients`` workers each send the next query when the last one
  answered; 8 clients measure saturation (throughput and the latency the 2 cores impose), 1 client the latency
  of a lone query. Questions of tquad1.dev.jsonl, ``top_k`` 10, ``"mode"`` as named.
* **Open loop**: queries arrive as a Poisson process at half the 8-client hybrid throughput, each sent at its
  arrival time whatever is in flight; its latency counts from the arrival (a late send counts against it), for
  ``--open_loop_seconds``.
* **Baselines, in this process, same run**: one query's encode + exact search (as ``bench_service``); one
  query's lexical search (FTS5 ``bm25()``, the top 100 the hybrid takes); one hybrid query = encode, the
  service's default index's top 100, the lexical top 100 and :func:`training.fusion.weighted_fusion`.

Goals (issue 15): hybrid p99 ≤ 1.25× dense p99 at 8 clients; open-loop hybrid p99 ≤ 2× the in-process latency of
one hybrid query. Writes ``docs/benchmarks/search_latency.md`` and ``bench/results/search_latency.json``
(``--no_docs``: prints only).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from http_load import Service, load, percentiles, post_once  # noqa: E402  (bench/)
from inputs import RESULTS, default_registry, load_texts  # noqa: E402
from proc_stats import cpu_seconds  # noqa: E402
from run_all import finish, goals_and_notes, report_options, rewrite_report  # noqa: E402
from search_at_100k import baseline_indexes, encode_one, one_query_ms  # noqa: E402
from synthetic_corpus import encode_passages, write_search_data  # noqa: E402


# ------------------------------------------------------------------------------------------- baselines
def in_process(model, questions: list[str], vectors: np.ndarray, data_dir: Path, alpha: float) -> dict:
    """Median ms per query, in this process, of: encode + exact top 10 (and the default index's), the lexical
    top 100, and a whole hybrid query (encode, default index top 100, lexical top 100, weighted fusion)."""
    from service.storage.memory_lexical import MemoryLexical
    from service.store import DocumentStore
    from training.analyzer import DEFAULT_ANALYZER, Analyzer
    from training.fusion import CANDIDATES, weighted_fusion

    indexes = baseline_indexes(vectors)
    out = {"encode_search_ms": one_query_ms(model, questions, indexes)}
    default_kind = next(k for k in indexes if k != "exact")
    default = indexes[default_kind]
    # the service's lexical side: BM25 postings in memory, loaded from the terms the store's FTS5 index holds
    lexical = MemoryLexical(Analyzer.named(DEFAULT_ANALYZER))
    store = DocumentStore(data_dir)
    store.open()
    try:
        lexical.load(store.lexical_terms())
    finally:
        store.close()
    for q in questions[:5]:  # warm-up
        lexical.search(q, CANDIDATES)
    try:
        lex_times, hybrid_times = [], []
        for q in questions[:100]:
            t0 = time.perf_counter()
            lexical.search(q, CANDIDATES)
            lex_times.append(time.perf_counter() - t0)
        for q in questions[:100]:
            t0 = time.perf_counter()
            scores, labels = default.search(encode_one(model, q), CANDIDATES)
            dense = [(f"p{i}", float(s)) for i, s in zip(np.ravel(labels), np.ravel(scores)) if i >= 0]
            weighted_fusion(dense, lexical.search(q, CANDIDATES).hits, alpha, limit=10)
            hybrid_times.append(time.perf_counter() - t0)
    finally:
        lexical.close()
    out["lexical_ms"] = round(float(np.median(lex_times) * 1000), 2)
    out["hybrid_ms"] = round(float(np.median(hybrid_times) * 1000), 2)
    out["default_index"] = default_kind
    return out


# ------------------------------------------------------------------------------------------- open loop
async def open_loop(url: str, path: str, bodies: list[dict], rate: float, seconds: float, seed: int = 0,
                    service_pid: int | None = None) -> dict:
    """Poisson arrivals at ``rate`` per second for ``seconds``; each request is sent at its arrival, whatever is
    in flight (no connection limit), and its latency counts from the arrival, so a late send counts too."""
    import aiohttp

    rng = np.random.default_rng(seed)
    arrivals = np.cumsum(rng.exponential(1 / rate, int(rate * seconds * 1.5) + 10))
    arrivals = arrivals[arrivals < seconds]
    payloads = [json.dumps(body).encode() for body in bodies]
    headers = {"content-type": "application/json"}
    latencies: list[float] = []
    lateness: list[float] = []
    errors: dict[str, int] = {}

    async with aiohttp.ClientSession(url, connector=aiohttp.TCPConnector(limit=0),
                                     timeout=aiohttp.ClientTimeout(total=120)) as session:
        async def one(i: int, due: float) -> None:
            lateness.append(time.perf_counter() - due)
            await post_once(session, path, payloads[i % len(payloads)], headers, due, latencies, errors)

        cpu0 = (time.process_time(), cpu_seconds(service_pid) if service_pid else 0.0)
        start = time.perf_counter()
        tasks = []
        for i, at in enumerate(arrivals):
            delay = start + at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(i, start + at)))
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - start
        cpu = (time.process_time() - cpu0[0], cpu_seconds(service_pid) - cpu0[1] if service_pid else 0.0)
    out = {"rate": round(rate, 2), "seconds": round(elapsed, 1), "sent": len(arrivals), "requests": len(latencies),
           "errors": errors, "requests_per_s": round(len(latencies) / elapsed, 1), **percentiles(latencies),
           "send_lateness_ms": percentiles(lateness)}
    if service_pid and latencies:
        out["cpu_ms_per_request"] = {"service": round(cpu[1] * 1000 / len(latencies), 2),
                                     "load_generator": round(cpu[0] * 1000 / len(latencies), 2)}
    return out


# ------------------------------------------------------------------------------------------- run
def run(args, workdir: Path) -> dict:
    import httpx

    questions, passages = load_texts()
    base, model = encode_passages(args.registry, args.name, passages, args.passages)
    data_dir = workdir / "data"
    t0 = time.perf_counter()
    vectors = write_search_data(data_dir, passages, base, model, args.documents)
    written_s = time.perf_counter() - t0
    print(f"wrote {args.documents} documents with vectors and lexical index in {written_s:.0f} s", flush=True)
    alpha = float((model.spec.fusion or {}).get("alpha", 0.5)) if hasattr(model.spec, "fusion") else 0.5
    baseline = in_process(model, questions, vectors, data_dir, alpha)
    print("in process", baseline, flush=True)
    del vectors
    model.close()

    svc = Service.qaembed(args.registry, args.name, data_dir, *shlex.split(args.server_args))
    out: dict = {"documents": args.documents, "write_s": round(written_s, 1), "baseline": baseline,
                 "alpha_in_process": alpha, "closed": []}
    try:
        out["ready_s"] = round(svc.wait_ready(), 1)
        out["rss_mb_loaded"] = svc.memory_mb()["VmRSS"]
        info = httpx.get(svc.url + "/info", timeout=30).json()
        out["index"] = info.get("index")
        out["search_info"] = info.get("search")
        for mode in args.modes:
            bodies = [{"query": q, "top_k": 10, "mode": mode} for q in questions]
            for clients in (1, 8):
                asyncio.run(load(svc.url, "/search", bodies, clients, 100, 2, 1))  # warm-up
                level = asyncio.run(load(svc.url, "/search", bodies, clients, 100_000, args.seconds, 1,
                                         svc.proc.pid))
                level["mode"] = mode
                out["closed"].append(level)
                print("closed", level, flush=True)
        capacity = next(r["requests_per_s"] for r in out["closed"] if r["mode"] == "hybrid" and r["clients"] == 8)
        out["open"] = []
        for mode in args.open_loop_modes:
            bodies = [{"query": q, "top_k": 10, "mode": mode} for q in questions]
            level = asyncio.run(open_loop(svc.url, "/search", bodies, capacity / 2, args.open_loop_seconds,
                                          service_pid=svc.proc.pid))
            level["mode"] = mode
            out["open"].append(level)
            print("open", level, flush=True)
        out["peak_rss_mb"] = svc.memory_mb()["VmHWM"]
    except Exception:
        print(Path(svc.log.name).read_text(errors="replace")[-3000:], file=sys.stderr)
        raise
    finally:
        svc.stop()
    out["goals"] = goals(out)
    return out


def level(out: dict, mode: str, clients: int) -> dict | None:
    return next((r for r in out["closed"] if r["mode"] == mode and r["clients"] == clients), None)


def goals(out: dict) -> dict:
    g: dict = {}
    dense, hybrid = level(out, "dense", 8), level(out, "hybrid", 8)
    if dense and hybrid:
        ratio = hybrid["p99"] / dense["p99"]
        g["hybrid p99 ≤ 1.25× dense p99 at 8 clients"] = {"hybrid_p99_ms": hybrid["p99"],
                                                          "dense_p99_ms": dense["p99"],
                                                          "ratio": round(ratio, 2), "met": ratio <= 1.25}
    opened = next((r for r in out.get("open", []) if r["mode"] == "hybrid"), None)
    if opened:
        ratio = opened["p99"] / out["baseline"]["hybrid_ms"]
        g["open-loop hybrid p99 ≤ 2× one in-process hybrid query"] = {
            "open_p99_ms": opened["p99"], "in_process_ms": out["baseline"]["hybrid_ms"], "ratio": round(ratio, 2),
            "met": ratio <= 2}
    return g


# ------------------------------------------------------------------------------------------- report
def report(result: dict, command: str) -> list[str]:
    b = result["baseline"]
    index = result.get("index") or {}
    lines = [
        f"# /search latency by mode at {result['documents']:,} documents",
        "",
        f"`{command}` ({result['machine']}; {result['date']}; load average {result['load_before']} before, "
        f"{result['load_after']} after). {result['documents']:,} documents (passage beginnings, real passage "
        f"embeddings + noise) written with their vectors into the service's SQLite store, lexical FTS5 index "
        f"included ({result['write_s']} s); `python -m service` ready in {result['ready_s']} s, index "
        f"{index.get('type')} ({', '.join(f'{k}={index[k]}' for k in ('nlist', 'nprobe') if index.get(k))}); "
        f"RSS {result['rss_mb_loaded']} MB loaded, **peak {result['peak_rss_mb']} MB**. Questions of "
        "tquad1.dev.jsonl, top_k 10; the load generator is this process (aiohttp, same cores, loopback).",
        "",
        "In-process baselines, same run, median of 100 queries: encode + exact top 10 "
        f"{b['encode_search_ms']['exact']} ms (+ {b['default_index']} top 10: "
        f"{b['encode_search_ms'][b['default_index']]} ms); lexical top 100 (the service's BM25 postings) "
        f"{b['lexical_ms']} ms; "
        f"**one hybrid query** (encode, {b['default_index']} top 100, lexical top 100, weighted fusion) "
        f"**{b['hybrid_ms']} ms**.",
        "",
        "## Closed loop",
        "",
        "| mode | clients | requests/s | p50 ms | p95 ms | p99 ms | CPU ms/request service / load gen | errors |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in result["closed"]:
        cpu = r.get("cpu_ms_per_request", {})
        lines.append(f"| {r['mode']} | {r['clients']} | {r['requests_per_s']} | {r['p50']} | {r['p95']} | "
                     f"{r['p99']} | {cpu.get('service', '-')} / {cpu.get('load_generator', '-')} | "
                     f"{r['errors'] or 0} |")
    hybrid8 = level(result, "hybrid", 8)
    if hybrid8 and hybrid8.get("cpu_ms_per_request"):
        cpu = hybrid8["cpu_ms_per_request"]
        bound = 8 * (cpu["service"] + cpu["load_generator"]) / (os.cpu_count() or 1)
        lines += ["", f"At 8 clients the cores decide: 8 requests always in flight × "
                  f"{cpu['service'] + cpu['load_generator']:.1f} CPU-ms each (service + load generator) / "
                  f"{os.cpu_count()} cores = a mean latency of at least {bound:.1f} ms for hybrid (Little's law); "
                  f"measured p50 {hybrid8['p50']} ms."]
    lines += ["", "## Open loop (Poisson arrivals at half the 8-client hybrid throughput)", "",
              "| mode | rate /s | seconds | answered | p50 ms | p95 ms | p99 ms | send lateness p99 ms | "
              "CPU ms/request service | errors |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in result.get("open", []):
        lines.append(f"| {r['mode']} | {r['rate']} | {r['seconds']} | {r['requests']} / {r['sent']} | {r['p50']} | "
                     f"{r['p95']} | {r['p99']} | {r['send_lateness_ms']['p99']} | "
                     f"{r.get('cpu_ms_per_request', {}).get('service', '-')} | {r['errors'] or 0} |")
    return lines + goals_and_notes(result["goals"].items(), result.get("notes", []))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--registry", type=Path, help="bundle registry (default: bench_service's, the bundled MiniLM)")
    p.add_argument("--name", default="minilm")
    p.add_argument("--documents", type=int, default=100_000)
    p.add_argument("--passages", type=int, default=1000, help="real passages embedded as noise centres")
    p.add_argument("--seconds", type=float, default=10, help="per closed-loop level")
    p.add_argument("--open_loop_seconds", type=float, default=60)
    p.add_argument("--modes", nargs="+", default=["dense", "hybrid", "lexical"])
    p.add_argument("--open_loop_modes", nargs="+", default=["hybrid"])
    p.add_argument("--server_args", default="", help="extra flags of python -m service, one string")
    report_options(p)
    args = p.parse_args()
    if args.report_only:
        rewrite_report("search_latency", args.note, report, RESULTS, args.no_docs)
        return
    if "hybrid" not in args.modes:
        p.error("--modes must include hybrid (the open loop runs at half its capacity)")
    command = "python bench/bench_search_latency.py " + shlex.join(sys.argv[1:])
    default_registry(args)
    load_before = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    workdir = Path(tempfile.mkdtemp(prefix="bench-latency-"))
    try:
        result = run(args, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    result.update(machine=f"{os.cpu_count()} CPU cores, {platform.machine()}, no GPU", command=command,
                  date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), load_before=load_before,
                  load_after=", ".join(f"{v:.1f}" for v in os.getloadavg()), notes=args.note)
    finish("search_latency", result, report(result, command), args.no_docs, RESULTS)


if __name__ == "__main__":
    main()
