"""Ingest through the real service: documents/s and peak RSS, the SQLite store against the previous release's.

    python bench/bench_ingest.py [--documents 100000] [--baseline_rev REV] [--registry DIR --name NAME] [--no_docs]

Both stores run as ``python -m service`` on loopback with a fresh ``--data_dir``: this tree (documents, vectors,
lexical index and feedback in SQLite, :mod:`service.store`) and ``--baseline_rev`` (default: the revision before
the SQLite store, whose write-ahead log + snapshots kept documents), checked out by ``git worktree`` into a
temporary folder that is removed afterwards. Same bundle, same settings, same documents: passages of
``/work/shared/data/turkish-qa`` (``QAEMBED_QA_DATA``), repeated with a number appended up to ``--documents``.

``--clients`` concurrent clients send ``POST /documents`` with ``--batch`` documents each, one after the other
(closed loop; a 429 is sent again after half a second, and counted). Measured per store: documents acknowledged
per second (first request to last answer), the server's peak RSS (``VmHWM``), the data directory's size, and the
time a restart takes to be ready again with every document (after a SIGTERM). Embedding the texts is most of an
ingest's work, the same for both stores: the ratio shows what the store costs on top of it (``--sqlite_args
'--chunk_stride 0'`` gives this release the previous one's embedding work: one window per document). The first
start, on the empty directory, is timed too: a restart's time less it is what recovering the documents costs
(the rest is imports and loading the model, CPU-bound, so both swing with the machine's load). Goal (issue 15):
ingest throughput ≥ 0.8× the previous release's.

``--store_only N`` also compares the stores alone at a size the model could not embed in time (100k documents
at ~10 documents/s would take hours on 2 cores): N documents with seeded random vectors written in process, one
transaction (SQLite) or log record + periodic snapshot (previous release) per ``--batch`` documents, then the
directory reopened; ``--documents 0`` runs only that.

    python bench/bench_ingest.py --documents 5000 --sqlite_args '--chunk_stride 0' --store_only 100000

The result goes to ``docs/benchmarks/ingest.md`` (then ``docs/benchmarks.md`` is assembled, see
``bench/run_all.py``) and ``bench/results/ingest.json``; ``--no_docs`` (a smoke run) prints it only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from http_load import Service, free_port  # noqa: E402  (bench/)
from inputs import RESULTS, ROOT, default_registry, load_texts  # noqa: E402
from proc_stats import memory_mb  # noqa: E402
from run_all import finish, report_options, rewrite_report  # noqa: E402

BASELINE_REV = "95d272a~1"  # the last revision whose local store is the write-ahead log + snapshots


def documents(n: int) -> list[dict]:
    """``n`` distinct documents from the shared passages (numbered once the passages run out)."""
    _, passages = load_texts()
    return [{"id": f"doc-{i}", "text": passages[i % len(passages)] + (f" ({i // len(passages)})"
                                                                      if i >= len(passages) else ""),
             "metadata": {"n": i}} for i in range(n)]


def start_server(tree: Path, args, data_dir: Path, log: Path, extra: str = "") -> Service:
    """``python -m service`` from ``tree`` (a checkout of this repository) on a free loopback port."""
    port = free_port()
    return Service([sys.executable, "-m", "service", "--registry", str(args.registry), "--name", args.name,
                    "--data_dir", str(data_dir), "--port", str(port), *shlex.split(args.server_args),
                    *shlex.split(extra)], log, port, tree=tree)


async def ingest(url: str, docs: list[dict], batch: int, clients: int) -> tuple[float, int]:
    """Seconds to ingest ``docs`` with ``clients`` closed-loop clients, and the requests answered 429 (sent
    again after a pause, as a client should); raises on any other answer but 200."""
    import aiohttp

    bodies = [json.dumps({"documents": docs[i:i + batch]}).encode() for i in range(0, len(docs), batch)]
    queue = iter(bodies)
    refused = 0

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal refused
        for body in queue:  # one shared iterator: each body is acknowledged once
            while True:
                async with session.post(url + "/documents", data=body,
                                        headers={"content-type": "application/json"}) as r:
                    if r.status == 200:
                        break
                    if r.status != 429:
                        raise RuntimeError(f"POST /documents answered {r.status}: {(await r.text())[:300]}")
                refused += 1
                await asyncio.sleep(0.5)

    t0 = time.perf_counter()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None)) as session:
        await asyncio.gather(*(client(session) for _ in range(clients)))
    return time.perf_counter() - t0, refused


def measure(tree: Path, args, docs: list[dict], workdir: Path, extra: str = "") -> dict:
    """Ingest ``docs`` into a fresh data directory, then restart on it; the first start (empty directory) is
    timed too: a restart's time less that is what recovering the documents costs."""
    import httpx

    data = workdir / "data"
    server = start_server(tree, args, data, workdir / "service.log", extra)
    try:
        empty_s = server.wait_ready(timeout=1800)
        seconds, refused = asyncio.run(ingest(server.url, docs, args.batch, args.clients))
        peak = memory_mb(server.proc.pid)["VmHWM"]
        stored = httpx.get(server.url + "/ready", timeout=30).json()["documents"]
    finally:
        server.stop(grace_s=600)  # the previous release writes its last snapshot on the way out
    restart = start_server(tree, args, data, workdir / "restart.log", extra)
    try:
        ready_s = restart.wait_ready(timeout=1800)
        recovered = httpx.get(restart.url + "/ready", timeout=30).json()["documents"]
    finally:
        restart.stop(grace_s=600)
    if stored != len(docs) or recovered != len(docs):
        raise RuntimeError(f"{tree}: {len(docs)} ingested, {stored} served, {recovered} after the restart")
    return {"documents": len(docs), "seconds": round(seconds, 2), "docs_per_s": round(len(docs) / seconds, 1),
            "answered_429": refused, "start_empty_s": round(empty_s, 1),
            "peak_rss_mb": peak, "data_dir_mb": round(sum(f.stat().st_size for f in data.rglob("*") if f.is_file())
                                                       / 2**20, 1), "restart_ready_s": round(ready_s, 1)}


def run(args, workdir: Path) -> dict:
    baseline = workdir / "baseline"
    subprocess.run(["git", "worktree", "add", "--detach", str(baseline), args.baseline_rev], cwd=ROOT, check=True,
                   capture_output=True)
    try:
        revision = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=baseline, capture_output=True,
                                  text=True, check=True).stdout.strip()
        results: dict = {"baseline_rev": revision}
        if args.documents:
            docs = documents(args.documents)
            for label, tree, extra in (("sqlite", ROOT, args.sqlite_args), ("wal", baseline, "")):
                (workdir / label).mkdir()
                results[label] = measure(tree, args, docs, workdir / label, extra)
                print(label, json.dumps(results[label]), flush=True)
            ratio = results["sqlite"]["docs_per_s"] / results["wal"]["docs_per_s"]
            results.update(throughput_ratio=round(ratio, 3), goal_met=ratio >= 0.8)
        if args.store_only:
            results["store_only"] = run_store_only(args, workdir, baseline)
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(baseline)], cwd=ROOT, check=False)
    return results

# Runs inside the tree under test (PYTHONPATH = that tree): writes the documents of a JSONL file with seeded
# random vectors into that tree's store the way its server's journal does (one transaction or log record per
# request of ``batch`` documents; the previous release also wrote a snapshot every ``snapshot_every`` records and
# at the stop), then opens the directory again as a restart does. Prints one JSON line.
_STORE_DRIVER = r"""
import json, sys, time
from pathlib import Path
import numpy as np
import service.store as st
from service.documents import Document
source, data, batch, every = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
docs = [Document(r["id"], r["text"], r["metadata"]) for r in map(json.loads, open(source, encoding="utf-8"))]
rng = np.random.default_rng(0)
vectors = rng.standard_normal((len(docs), 384), dtype=np.float32)
vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
def hwm():
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1]) / 1024
before = hwm()
t0 = time.perf_counter()
if hasattr(st, "DocumentStore"):
    kind, store = "sqlite", st.DocumentStore(data)
    store.open()
    for i in range(0, len(docs), batch):
        store.upsert(docs[i:i + batch], vectors[i:i + batch], "v1")
    store.close()
    reopen = lambda: st.DocumentStore(data).open()
else:
    kind, store = "wal", st.DurableStore(data)
    store.recover()
    store.open_log()
    def snapshot(upto):
        store.write_snapshot(store.rotate(), docs[:upto], vectors[:upto], "m", "v1")
    for i in range(0, len(docs), batch):
        store.append_upsert(docs[i:i + batch], vectors[i:i + batch], "v1")
        if store.records_since_snapshot >= every:
            snapshot(i + batch)
    if store.records_since_snapshot:
        snapshot(len(docs))
    store.close()
    reopen = lambda: st.DurableStore(data).recover()
seconds = time.perf_counter() - t0
peak = hwm()
t0 = time.perf_counter()
state = reopen()
reopen_s = time.perf_counter() - t0
assert len(state.docs) == len(docs), (len(state.docs), len(docs))
size = sum(f.stat().st_size for f in data.rglob("*") if f.is_file())
print(json.dumps({"kind": kind, "documents": len(docs), "seconds": round(seconds, 2),
                  "docs_per_s": round(len(docs) / seconds, 1), "peak_rss_mb": round(peak, 1),
                  "rss_before_writes_mb": round(before, 1), "data_dir_mb": round(size / 2**20, 1),
                  "reopen_s": round(reopen_s, 2)}))
"""


def store_only(tree: Path, docs_file: Path, data: Path, batch: int, snapshot_every: int) -> dict:
    """The store of ``tree`` alone, in a process of its own (see ``_STORE_DRIVER``): no model, no HTTP."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    out = subprocess.run([sys.executable, "-c", _STORE_DRIVER, str(docs_file), str(data), str(batch),
                          str(snapshot_every)], cwd=tree, env=env, capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"store-only run in {tree} failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_store_only(args, workdir: Path, baseline: Path) -> dict:
    docs_file = workdir / "documents.jsonl"
    with open(docs_file, "w", encoding="utf-8") as f:
        for doc in documents(args.store_only):
            f.write(json.dumps(doc, ensure_ascii=False) + "\n")
    results = {}
    for label, tree in (("sqlite", ROOT), ("wal", baseline)):
        results[label] = store_only(tree, docs_file, workdir / f"store-{label}", args.batch, args.snapshot_every)
        print("store only", label, json.dumps(results[label]), flush=True)
        shutil.rmtree(workdir / f"store-{label}", ignore_errors=True)
    return {**results, "throughput_ratio": round(results["sqlite"]["docs_per_s"] / results["wal"]["docs_per_s"], 3)}


def report(result: dict, command: str) -> list[str]:
    lines = ["# Ingest: the SQLite store against the write-ahead log", "",
             f"`{command}` ({result['machine']}; {result['date']}; load average {result['load_before']} before, "
             f"{result['load_after']} after{'; ' + result['load_note'] if result['load_note'] else ''}). "
             f"Baseline in the same run: the write-ahead log + snapshots of {result['baseline_rev']} (checked out "
             "by `git worktree`).", ""]
    if "sqlite" in result:
        new, old = result["sqlite"], result["wal"]
        rows = [("documents/s", "docs_per_s"), ("seconds", "seconds"), ("requests answered 429 (sent again)",
                 "answered_429"), ("peak RSS, MB", "peak_rss_mb"), ("data directory, MB", "data_dir_mb"),
                ("first start, empty directory, s", "start_empty_s"), ("restart until ready, s", "restart_ready_s")]
        lines += [
            "## Through the service", "",
            f"{new['documents']:,} documents (the shared passages) through `POST /documents` of `python -m service` "
            f"on loopback ({result['clients']} clients, {result['batch']} documents per request), a fresh "
            f"`--data_dir` each; this release with `{result['sqlite_args'] or 'its defaults'}`. Embedding is most "
            "of the work and the same for both (the same bundle; with `--chunk_stride 0` the same text per "
            "document): the ratio shows what the store costs on top of it.", "",
            "| | SQLite (this release) | WAL + snapshots (previous) |", "|---|---|---|",
            *[f"| {title} | {new.get(key, '-')} | {old.get(key, '-')} |" for title, key in rows], "",
            f"Throughput ratio **{result['throughput_ratio']:.2f}×** (goal ≥ 0.8×: "
            f"{'met' if result['goal_met'] else 'NOT met'}). The SQLite store also writes the lexical index "
            "(analysed text in FTS5) in the same transaction; the previous store wrote one log frame per request.",
            ""]
    so = result.get("store_only")
    if so:
        new, old = so["sqlite"], so["wal"]
        rows = [("documents/s", "docs_per_s"), ("seconds", "seconds"), ("peak RSS, MB", "peak_rss_mb"),
                ("RSS before the writes (documents + vectors in memory), MB", "rss_before_writes_mb"),
                ("data directory, MB", "data_dir_mb"), ("reopen (recover every document), s", "reopen_s")]
        lines += [
            "## The stores alone", "",
            f"{new['documents']:,} documents with seeded random 384-d vectors written in process, no model and no "
            f"HTTP, each store in a process of its own, the way its server's journal writes: one committed "
            f"transaction (SQLite: document, vector, FTS5 lexical entry) or one fsync-ed log record per "
            f"{result['batch']} documents; the previous release also wrote a snapshot (documents + vectors) every "
            f"{result['snapshot_every']} records and at the stop, as its `--snapshot_every` default did. Then the "
            "directory is opened again, as a restart does.", "",
            "| | SQLite (this release) | WAL + snapshots (previous) |", "|---|---|---|",
            *[f"| {title} | {new[key]} | {old[key]} |" for title, key in rows], "",
            f"Store-only throughput ratio **{so['throughput_ratio']:.2f}×**.", ""]
    return lines + [f"* {note}" for note in result.get("notes", [])] + [""]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--registry", type=Path, help="bundle registry (default: export the bundled MiniLM)")
    p.add_argument("--name", default="minilm")
    p.add_argument("--documents", type=int, default=100_000)
    p.add_argument("--batch", type=int, default=64, help="documents per POST /documents")
    p.add_argument("--clients", type=int, default=2)
    p.add_argument("--baseline_rev", default=BASELINE_REV, help="the git revision whose store is compared")
    p.add_argument("--server_args", default="", help="extra flags of python -m service, one string (both stores)")
    p.add_argument("--sqlite_args", default="",
                   help="extra flags for this release's server only, e.g. '--chunk_stride 0' (the previous release "
                        "embedded each document's beginning once)")
    p.add_argument("--store_only", type=int, default=0,
                   help="also write this many documents into each store alone, in process (no model, no HTTP)")
    p.add_argument("--snapshot_every", type=int, default=1000,
                   help="the previous release's --snapshot_every default, for --store_only")
    p.add_argument("--load_note", default="", help="how busy the machine was (other jobs)")
    report_options(p)
    args = p.parse_args()
    if args.report_only:
        rewrite_report("ingest", args.note, report, RESULTS, args.no_docs)
        return
    command = "python bench/bench_ingest.py " + shlex.join(sys.argv[1:])
    default_registry(args)
    load_before = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    workdir = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    try:
        result = run(args, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    result.update(machine=f"{os.cpu_count()} CPU cores, {platform.machine()}", load_note=args.load_note,
                  clients=args.clients, batch=args.batch, command=command, sqlite_args=args.sqlite_args,
                  snapshot_every=args.snapshot_every, notes=args.note, load_before=load_before,
                  load_after=", ".join(f"{v:.1f}" for v in os.getloadavg()),
                  date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    finish("ingest", result, report(result, command), args.no_docs, RESULTS)


if __name__ == "__main__":
    main()
