"""The service under test and the load against it, over loopback.

:class:`Service` runs ``python -m service`` (or Infinity's server) as a subprocess on a free port;
:func:`load` is the closed-loop load generator (aiohttp) with latency percentiles and, given the server's pid,
the CPU both sides spent per request; :func:`metric_value` reads a Prometheus counter from ``/metrics``.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from inputs import ROOT
from proc_stats import cpu_seconds, memory_mb


def percentiles(values: list[float]) -> dict:
    if not values:
        return {"p50": None, "p95": None, "p99": None}
    a = np.asarray(values) * 1000
    return {f"p{q}": round(float(np.percentile(a, q)), 1) for q in (50, 95, 99)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Service:
    """A server process on a free loopback port; ``qaembed`` and ``infinity`` build the two /embed compares."""

    def __init__(self, command: list[str], log: Path, port: int, ready_path: str = "/ready", tree: Path = ROOT) -> None:
        """``tree``: the checkout it runs from (``bench_ingest``'s baseline is another revision's worktree)."""
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.ready_path = ready_path
        self.log = open(log, "wb")
        env = {**os.environ, "PYTHONPATH": str(tree), "QAEMBED_LOG_LEVEL": "warning"}
        self.t0 = time.perf_counter()
        self.proc = subprocess.Popen(command, cwd=tree, env=env, stdout=self.log, stderr=subprocess.STDOUT)

    @classmethod
    def qaembed(cls, registry: Path, name: str, data_dir: Path, *extra: str) -> Service:
        port = free_port()
        return cls([sys.executable, "-m", "service", "--registry", str(registry), "--name", name, "--data_dir",
                    str(data_dir), "--port", str(port), *extra], data_dir.parent / f"service-{port}.log", port)

    @classmethod
    def infinity(cls, executable: str, model_dir: Path, engine: str, workdir: Path) -> Service:
        port = free_port()
        return cls([executable, "v2", "--model-id", str(model_dir), "--served-model-name", "minilm",
                    "--engine", engine, "--device", "cpu", "--port", str(port), "--host", "127.0.0.1"],
                   workdir / f"infinity-{engine}.log", port, ready_path="/health")

    def wait_ready(self, timeout: float = 600) -> float:
        import httpx

        while time.perf_counter() - self.t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"service exited with {self.proc.returncode}")
            try:
                if httpx.get(self.url + self.ready_path, timeout=2).status_code == 200:
                    return time.perf_counter() - self.t0
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise TimeoutError("service not ready")

    def memory_mb(self) -> dict:
        return memory_mb(self.proc.pid)

    def stop(self, grace_s: float = 60) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(30)  # reaped before the caller reuses its port or data directory


async def post_once(session, path: str, payload: bytes, headers: dict, since: float, latencies: list[float],
                    errors: dict[str, int]) -> None:
    """POST one request: a 200's latency counted from ``since`` goes to ``latencies``; any other status (or the
    client error's name) is counted in ``errors``."""
    import aiohttp

    try:
        async with session.post(path, data=payload, headers=headers) as response:
            await response.read()
            code = response.status
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        code = type(exc).__name__
    if code == 200:
        latencies.append(time.perf_counter() - since)
    else:
        errors[str(code)] = errors.get(str(code), 0) + 1


async def load(url: str, path: str, bodies: list[dict], clients: int, max_requests: int, max_seconds: float,
               texts_per_request: int, service_pid: int | None = None) -> dict:
    """Closed-loop load: ``clients`` workers each send a request as soon as their last one answered.

    aiohttp, bodies serialised once: the generator shares the 2 cores with the server, and httpx cost
    3.3 CPU-ms per request here against aiohttp's 1.4 (every millisecond it takes is one the server lacks).
    With ``service_pid`` the CPU both sides spent per request is reported, which bounds the latency:
    ``clients`` requests in flight on ``cores`` cores wait at least clients × CPU per request / cores.
    """
    import aiohttp

    latencies: list[float] = []
    errors: dict[str, int] = {}
    sent = 0
    payloads = [json.dumps(body).encode() for body in bodies]
    headers = {"content-type": "application/json"}
    deadline = time.perf_counter() + max_seconds
    timeout = aiohttp.ClientTimeout(total=300)

    async with aiohttp.ClientSession(url, connector=aiohttp.TCPConnector(limit=clients), timeout=timeout) as session:
        async def worker() -> None:
            nonlocal sent
            while sent < max_requests and time.perf_counter() < deadline:
                payload = payloads[sent % len(payloads)]
                sent += 1
                await post_once(session, path, payload, headers, time.perf_counter(), latencies, errors)

        cpu0 = (time.process_time(), cpu_seconds(service_pid) if service_pid else 0.0)
        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        elapsed = time.perf_counter() - t0
        cpu = (time.process_time() - cpu0[0], cpu_seconds(service_pid) - cpu0[1] if service_pid else 0.0)
    out = {"clients": clients, "requests": len(latencies), "errors": errors, "seconds": round(elapsed, 2),
           "texts_per_s": round(len(latencies) * texts_per_request / elapsed, 1),
           "requests_per_s": round(len(latencies) / elapsed, 1), **percentiles(latencies)}
    if service_pid and latencies:
        out["cpu_ms_per_request"] = {"service": round(cpu[1] * 1000 / len(latencies), 2),
                                     "load_generator": round(cpu[0] * 1000 / len(latencies), 2)}
    return out


def metric_value(url: str, name: str) -> float:
    import httpx

    total = 0.0
    for line in httpx.get(url + "/metrics").text.splitlines():
        if line.split(" ")[0].split("{")[0] == name:
            total += float(line.rsplit(" ", 1)[1])
    return total


def one_worker_level(registry: Path, name: str, data_dir: Path, path: str, bodies: list[dict], clients: int,
                     seconds: float) -> dict:
    """The same load against ``--inference_workers 1`` (one forward pass at a time, the earlier default)."""
    svc = Service.qaembed(registry, name, data_dir, "--inference_workers", "1")
    try:
        svc.wait_ready()
        asyncio.run(load(svc.url, path, bodies, clients, 200, 3, 1))  # warm-up
        result = asyncio.run(load(svc.url, path, bodies, clients, 4000, seconds, 1, svc.proc.pid))
    finally:
        svc.stop()
    print(path, "one worker", result, flush=True)
    return result
