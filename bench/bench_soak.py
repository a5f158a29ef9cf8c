"""Soak at saturation: a real server on loopback, mixed traffic at twice the rate it sustains, for minutes.

    python bench/bench_soak.py [--registry DIR --name NAME] [--duration_s 600] [--load_note '...'] [--no_docs]

What a long overload must not do, measured on ``python -m service`` (its own process, a data directory):

1. **Sustainable rate**, measured first in the same run: ``--calibrate_clients`` closed-loop clients send the
   mix for ``--calibrate_s``; the rate of 200 answers is what the server sustains.
2. **Soak**: Poisson arrivals (open loop: a request is sent when its time comes, answered or not) at
   ``--factor`` × that rate, for ``--duration_s``. The mix: ``/embed`` (one question), ``/search`` (one
   question, top 10), ``/documents`` (an upsert of one passage into a bounded set of ids, so the
   collection's size stays fixed and any growth is a leak; and ``GET /documents/{id}``). At most
   ``--connections`` requests are in flight: above the server's ``--max_concurrent_requests`` (512) and below
   its ``--max_connections`` (1000). An arrival beyond them is counted as not sent, never silently delayed:
   the server is to shed the excess itself (429: too long a wait in its inference queue, or too many requests
   in flight) before that many wait in it, so any arrival not sent fails the soak.
3. **Recorded**: every answer's status (any other than 200 or 429, or a client error, fails the soak); the
   server's RSS and open file descriptors every ``--sample_s`` seconds. RSS growth is measured from the end
   of the warm-up (``--warmup_s``) to the end (< 5 % passes); descriptors are compared with the load stopped,
   before and after the soak (no growth passes).

The result goes to ``docs/benchmarks/soak.md`` (then ``docs/benchmarks.md`` is assembled, see
``bench/run_all.py``) and ``bench/results/soak.json``; ``--no_docs`` (a smoke run) prints it only.
Texts: questions and passages of ``/work/shared/data/turkish-qa`` (``QAEMBED_QA_DATA``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import shlex
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from http_load import Service, percentiles  # noqa: E402  (bench/)
from inputs import RESULTS, default_registry, load_texts  # noqa: E402
from proc_stats import cpu_seconds, memory_mb  # noqa: E402
from run_all import publish  # noqa: E402

POOL = 200  # ids the soak's upserts overwrite: a fixed collection size
OK = {"200", "429"}


def open_fds(pid: int) -> Counter:
    """The process's open file descriptors by kind: socket, file, pipe, other."""
    kinds: Counter = Counter()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:  # closed meanwhile
            continue
        kinds["socket" if target.startswith("socket:") else "pipe" if target.startswith("pipe:")
              else "file" if target.startswith("/") else "other"] += 1
    return kinds


class Mix:
    """The soak's requests, pre-serialised (the generator shares the cores with the server): ``(method, path,
    body)`` in a fixed random order with weights embed 0.4, search 0.4, upsert 0.1, get 0.1."""

    def __init__(self, questions: list[str], passages: list[str], preloaded: int, seed: int = 7) -> None:
        rng = random.Random(seed)
        kinds = rng.choices(["embed", "search", "upsert", "get"], weights=[4, 4, 1, 1], k=4096)
        self.requests = []
        for i, kind in enumerate(kinds):
            q, p = rng.choice(questions), rng.choice(passages)
            if kind == "embed":
                self.requests.append(("POST", "/embed", json.dumps({"inputs": [q]}).encode()))
            elif kind == "search":
                self.requests.append(("POST", "/search", json.dumps({"query": q, "top_k": 10}).encode()))
            elif kind == "upsert":
                doc = {"id": f"soak-{i % POOL}", "text": p, "metadata": {"n": i}}
                self.requests.append(("POST", "/documents", json.dumps({"documents": [doc]}).encode()))
            else:
                self.requests.append(("GET", f"/documents/p{rng.randrange(preloaded)}", None))
        self.next = 0

    def take(self) -> tuple[str, str, bytes | None]:
        self.next += 1
        return self.requests[self.next % len(self.requests)]


class Client:
    """One aiohttp session counting every answer by route and status (client errors by exception name)."""

    def __init__(self, url: str, connections: int) -> None:
        import aiohttp

        self.session = aiohttp.ClientSession(url, connector=aiohttp.TCPConnector(limit=connections),
                                             timeout=aiohttp.ClientTimeout(total=120))
        self.statuses: Counter = Counter()  # (route, status)
        self.latencies: list[float] = []  # of 200 answers
        self.in_flight = 0

    async def send(self, method: str, path: str, body: bytes | None) -> None:
        import aiohttp

        route = "/documents/{id}" if path.startswith("/documents/") else path
        self.in_flight += 1
        t0 = time.perf_counter()
        try:
            async with self.session.request(method, path, data=body,
                                            headers={"content-type": "application/json"}) as response:
                await response.read()
                status = str(response.status)
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            status = type(exc).__name__
        finally:
            self.in_flight -= 1
        self.statuses[route, status] += 1
        if status == "200":
            self.latencies.append(time.perf_counter() - t0)

    def by_status(self) -> dict[str, int]:
        out: Counter = Counter()
        for (_, status), n in self.statuses.items():
            out[status] += n
        return dict(sorted(out.items()))


async def calibrate(url: str, mix: Mix, clients: int, seconds: float) -> dict:
    """Closed loop: the rate of 200 answers with ``clients`` always waiting for one."""
    client = Client(url, clients)
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        while time.perf_counter() < deadline:
            await client.send(*mix.take())

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(clients)))
    elapsed = time.perf_counter() - t0
    await client.session.close()
    ok = client.by_status().get("200", 0)
    return {"clients": clients, "seconds": round(elapsed, 1), "statuses": client.by_status(),
            "rate_per_s": round(ok / elapsed, 1), **percentiles(client.latencies)}


async def soak(svc: Service, mix: Mix, rate: float, seconds: float, connections: int, sample_s: float) -> dict:
    """Open loop at ``rate`` requests/s (Poisson) for ``seconds``, sampling the server every ``sample_s``."""
    client = Client(svc.url, connections)
    rng = np.random.default_rng(11)
    samples, tasks = [], set()
    not_sent = 0
    t0 = time.perf_counter()
    cpu0 = (time.process_time(), cpu_seconds(svc.proc.pid))

    async def sampler() -> None:
        answered, at = 0, t0
        while True:
            now, total, fds = time.perf_counter(), sum(client.statuses.values()), open_fds(svc.proc.pid)
            samples.append({"t": round(now - t0, 1), "rss_mb": memory_mb(svc.proc.pid)["VmRSS"],
                            "fds": sum(fds.values()), "fd_kinds": dict(fds), "in_flight": client.in_flight,
                            "answers_per_s": round((total - answered) / max(now - at, 1e-9), 1)})
            answered, at = total, now
            await asyncio.sleep(sample_s)

    sampling = asyncio.get_running_loop().create_task(sampler())
    arrival = 0.0
    while arrival < seconds:
        arrival += rng.exponential(1 / rate)
        delay = t0 + arrival - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        if client.in_flight >= connections:
            not_sent += 1
            continue
        task = asyncio.get_running_loop().create_task(client.send(*mix.take()))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - t0
    sampling.cancel()
    await client.session.close()
    cpu = (time.process_time() - cpu0[0], cpu_seconds(svc.proc.pid) - cpu0[1])
    statuses = client.by_status()
    return {"target_rate_per_s": round(rate, 1), "arrivals_s": seconds, "seconds": round(elapsed, 1),
            "statuses": statuses,
            "by_route": {f"{route} {status}": n for (route, status), n in sorted(client.statuses.items())},
            "not_sent": not_sent, "answered_per_s": round(sum(statuses.values()) / elapsed, 1),
            "ok_per_s": round(statuses.get("200", 0) / elapsed, 1), **percentiles(client.latencies),
            "cpu_share": {"service": round(cpu[1] / elapsed / (os.cpu_count() or 1), 2),
                          "load_generator": round(cpu[0] / elapsed / (os.cpu_count() or 1), 2)},
            "samples": samples}


def idle_state(svc: Service, settle_s: float = 3.0) -> dict:
    time.sleep(settle_s)  # closed connections leave the server's descriptor table
    fds = open_fds(svc.proc.pid)
    return {"fds": sum(fds.values()), "fd_kinds": dict(fds), "rss_mb": memory_mb(svc.proc.pid)["VmRSS"]}


def verdict(result: dict, warmup_s: float) -> dict:
    after = [s for s in result["soak"]["samples"] if s["t"] >= warmup_s]
    if len(after) < 2:
        return {"error": f"no samples after the {warmup_s} s warm-up: run longer or shorten --warmup_s"}
    start, end = after[0]["rss_mb"], after[-1]["rss_mb"]
    t = np.array([s["t"] for s in after])
    slope = float(np.polyfit(t, [s["rss_mb"] for s in after], 1)[0]) * 60
    before, idle_after = result["idle_before"]["fds"], result["idle_after"]["fds"]
    statuses, not_sent = result["soak"]["statuses"], result["soak"]["not_sent"]
    arrivals = sum(statuses.values()) + not_sent
    return {"only_200_429": set(statuses) <= OK, "not_sent_share": round(not_sent / arrivals, 4),
            "other_answers": {k: v for k, v in statuses.items() if k not in OK},
            "rss_after_warmup_mb": start, "rss_end_mb": end, "rss_max_mb": max(s["rss_mb"] for s in after),
            "rss_growth": round((end - start) / start, 4), "rss_slope_mb_per_min": round(slope, 2),
            "rss_ok": (end - start) / start < 0.05,
            "fds_idle_before": before, "fds_idle_after": idle_after, "fds_max_under_load": max(s["fds"] for s in after),
            "fds_ok": idle_after <= before}


def run(args: argparse.Namespace, workdir: Path) -> dict:
    import httpx

    questions, passages = load_texts()
    svc = Service.qaembed(args.registry, args.name, workdir / "data", *shlex.split(args.server_args))
    try:
        ready_s = svc.wait_ready()
        with httpx.Client(base_url=svc.url, timeout=600) as c:
            for start in range(0, args.documents, 32):  # the collection /search and GET /documents read
                docs = [{"id": f"p{i}", "text": passages[i % len(passages)]}
                        for i in range(start, min(start + 32, args.documents))]
                c.post("/documents", json={"documents": docs}).raise_for_status()
            info = c.get("/info").json()
        mix = Mix(questions, passages, args.documents)
        asyncio.run(calibrate(svc.url, mix, args.calibrate_clients, 5))  # warm-up, not counted
        sustained = asyncio.run(calibrate(svc.url, mix, args.calibrate_clients, args.calibrate_s))
        print("sustainable", sustained, flush=True)
        idle_before = idle_state(svc)
        rate = args.factor * sustained["rate_per_s"]
        result = asyncio.run(soak(svc, mix, rate, args.duration_s, args.connections, args.sample_s))
        idle_after = idle_state(svc)
        alive = httpx.get(svc.url + "/ready", timeout=30).status_code
    finally:
        svc.stop()
        shutil.rmtree(workdir / "data", ignore_errors=True)  # its log stays in workdir
    return {"ready_s": round(ready_s, 1), "documents": args.documents, "index": info.get("index"),
            "limits": info.get("limits"), "sustainable": sustained, "idle_before": idle_before, "soak": result,
            "idle_after": idle_after, "ready_after": alive, "exit_code": svc.proc.returncode}


def report(result: dict, command: str) -> list[str]:
    v, s, c = result["verdict"], result["soak"], result["sustainable"]
    mark = {True: "pass", False: "**FAIL**"}
    statuses = ", ".join(f"{k}: {n:,}" for k, n in s["statuses"].items())
    routes = ", ".join(f"{k}: {n:,}" for k, n in s["by_route"].items())
    return [
        "# Soak at saturation",
        "",
        f"Command: `{command}` ({result['machine']}). Load: {result['load_note']}.",
        "",
        f"A real `python -m service` on loopback (its own process, a data directory, {result['documents']:,} "
        f"documents preloaded, index {(result.get('index') or {}).get('type', '?')}), mixed traffic: `/embed` 40 %, "
        "`/search` 40 %, `/documents` 20 % (upserts overwriting a fixed set of ids, and reads by id). "
        f"Sustainable rate, measured first in the same run: {c['clients']} closed-loop clients for {c['seconds']} s "
        f"answered **{c['rate_per_s']} requests/s** (p50 {c['p50']} ms, p99 {c['p99']} ms). The soak then sent "
        f"Poisson arrivals at **{s['target_rate_per_s']} requests/s** ({result['factor']}× that) for "
        f"{s['arrivals_s']:g} s (the last answers came {s['seconds'] - s['arrivals_s']:.1f} s later), at most "
        f"{result['connections']} in flight ({s['not_sent']:,} arrivals not sent "
        "for that); the load generator shares the cores with the server.",
        "",
        "| check | result | |",
        "|---|---|---|",
        f"| answers only 200 or 429 | {statuses} | {mark[v['only_200_429']]} |",
        f"| the server sheds the excess itself: no arrival waits for one of the {result['connections']} "
        f"connections | {s['not_sent']:,} not sent ({v['not_sent_share']:.1%}) | {mark[s['not_sent'] == 0]} |",
        f"| RSS growth after the {result['warmup_s']} s warm-up (< 5 %) | {v['rss_after_warmup_mb']} → "
        f"{v['rss_end_mb']} MB ({v['rss_growth']:+.1%}; max {v['rss_max_mb']} MB, trend "
        f"{v['rss_slope_mb_per_min']:+} MB/min) | {mark[v['rss_ok']]} |",
        f"| open descriptors, load stopped: before → after (no growth) | {v['fds_idle_before']} → "
        f"{v['fds_idle_after']} (max {v['fds_max_under_load']} under load) | {mark[v['fds_ok']]} |",
        f"| still ready after the soak; exit code on SIGTERM | {result['ready_after']}; {result['exit_code']} | "
        f"{mark[result['ready_after'] == 200 and result['exit_code'] in (0, -15)]} |",
        "",
        f"Served {s['ok_per_s']} requests/s with 200 during the soak (p50 {s['p50']} ms, p95 {s['p95']} ms, p99 "
        f"{s['p99']} ms of the 200 answers); CPU share of the machine: service {s['cpu_share']['service']:.0%}, "
        f"load generator {s['cpu_share']['load_generator']:.0%}. By route: {routes}.",
        "",
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--registry", type=Path, help="bundle registry (default: export the bundled MiniLM)")
    p.add_argument("--name", default="minilm")
    p.add_argument("--duration_s", type=float, default=600)
    p.add_argument("--warmup_s", type=float, help="RSS growth is measured after it (default: a fifth of the soak)")
    p.add_argument("--factor", type=float, default=2.0, help="offered load as a multiple of the sustainable rate")
    p.add_argument("--calibrate_s", type=float, default=30)
    p.add_argument("--calibrate_clients", type=int, default=8)
    p.add_argument("--connections", type=int, default=768,
                   help="requests in flight at most: above the server's --max_concurrent_requests (512 by default: "
                        "it sheds with 429 beyond them) and below its --max_connections (1000: a plain 503 beyond)")
    p.add_argument("--documents", type=int, default=1000, help="documents preloaded")
    p.add_argument("--sample_s", type=float, default=5)
    p.add_argument("--server_args", default="", help="extra flags of python -m service, one string")
    p.add_argument("--load_note", default="not recorded", help="how busy the machine was (other jobs, load average)")
    p.add_argument("--no_docs", action="store_true", help="print the result only (a smoke run)")
    args = p.parse_args()
    args.warmup_s = args.duration_s / 5 if args.warmup_s is None else args.warmup_s
    command = "python bench/bench_soak.py " + shlex.join(sys.argv[1:])
    default_registry(args)
    result = run(args, Path(tempfile.mkdtemp(prefix="bench-soak-")))
    result.update(machine=f"{os.cpu_count()} CPU cores, {platform.machine()}", load_note=args.load_note,
                  factor=args.factor, connections=args.connections, warmup_s=args.warmup_s, command=command)
    result["verdict"] = verdict(result, args.warmup_s)
    print(json.dumps({k: v for k, v in result.items() if k != "soak"}, indent=1))
    print(json.dumps({k: v for k, v in result["soak"].items() if k != "samples"}, indent=1))
    if "error" in result["verdict"]:
        sys.exit(f"docs not written: {result['verdict']['error']}")
    if args.no_docs:
        print("\n".join(report(result, command)) + "\n(--no_docs: nothing written)")
        return
    publish("soak", result, report(result, command), RESULTS)


if __name__ == "__main__":
    main()
