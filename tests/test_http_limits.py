"""What one client may cost the service (issue 16, items 1 and 3), against real servers on loopback: the size of
a /search answer (a byte budget checked before the answer is built, hits without text or metadata, a bound on
stored metadata), the memory of a real ``python -m service`` process under a burst of amplifying requests, how
long a stalled body or an idle connection may hold a socket, and how an overload is shed (429 beyond the requests
in flight, before the body is read; 429 rather than a long wait in the inference queue)."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import psutil
import pytest

from service.backends.base import Backend
from service.model import EmbeddingModel, open_serving_model
from tests.test_service_api import ServerThread, assert_error, metric, settings_for

ROOT = Path(__file__).resolve().parents[1]
QUERY = "Türkiye'nin başkenti neresidir?"
ATTACK = {"queries": [QUERY] * 40, "top_k": 10}  # the 2 KB request


def metadata_of(size: int) -> dict:
    """Metadata of about ``size`` bytes as JSON."""
    return {"blob": "x" * (size - 20)}


def stored_documents(client: httpx.Client, metadata_bytes: int) -> None:
    docs = [{"id": f"big-{i}", "text": f"Ankara, Türkiye'nin başkentidir ({i}).",
             "metadata": metadata_of(metadata_bytes)} for i in range(10)]
    r = client.post("/documents", json={"documents": docs})
    assert r.status_code == 200, r.text[:300]


# ------------------------------------------------------------------------------------------- response size
@pytest.fixture(scope="module")
def budget_server(exported_bundle):
    srv = ServerThread(settings_for(exported_bundle, max_inputs=64, max_body_bytes=8 * 1024 * 1024,
                                    max_response_bytes=1024 * 1024, body_timeout_s=1.0, keep_alive_s=1.0)).start()
    yield srv
    srv.stop()


def test_metadata_per_document_is_bounded(budget_server):
    with httpx.Client(base_url=budget_server.url, timeout=60) as c:
        huge = {"documents": [{"id": "huge", "text": "Ankara", "metadata": metadata_of(3_900_000)}]}
        err = assert_error(c.post("/documents", json=huge), 413)
        assert "max_metadata_bytes" in err["message"] and "documents[0].metadata" in err["message"]
        assert_error(c.get("/documents/huge"), 404)
        limit = 64 * 1024  # the default
        assert c.post("/documents", json={"documents": [{"id": "edge", "text": "Ankara",
                                                         "metadata": metadata_of(limit - 100)}]}).status_code == 200
        assert_error(c.post("/documents", json={"documents": [{"id": "over", "text": "Ankara",
                                                               "metadata": metadata_of(limit + 100)}]}), 413)
        assert c.delete("/documents/edge").status_code == 200


def test_search_answer_is_refused_or_within_the_budget(budget_server):
    budget = 1024 * 1024
    with httpx.Client(base_url=budget_server.url, timeout=60) as c:
        stored_documents(c, 60_000)  # 40 queries × top 10 × 60 KB: 24 MB, 24 × the budget
        err = assert_error(c.post("/search", json=ATTACK), 413)
        assert err["type"] == "response_too_large"
        for hint in ("top_k", "queries", "return_metadata", "max_response_bytes"):
            assert hint in err["message"], err["message"]
        # the same request without metadata fits, and each hit is what was asked for
        lean = c.post("/search", json={**ATTACK, "return_metadata": False})
        assert lean.status_code == 200 and len(lean.content) <= budget
        rows = lean.json()["results"]
        scores = {"score", "dense_score", "lexical_score", "span"}  # span: the best window of a chunked document
        assert len(rows) == 40 and all(set(hit) == {"id", "text", *scores} for row in rows for hit in row)
        assert rows[0][0]["id"].startswith("big-") and rows[0] == rows[39]
        bare = c.post("/search", json={"query": QUERY, "top_k": 3, "return_metadata": False, "return_text": False})
        assert [set(hit) for hit in bare.json()["results"]] == [{"id", *scores}] * 3
        # with metadata, an answer under the budget is served whole
        fits = c.post("/search", json={"queries": [QUERY] * 10, "top_k": 1})
        assert fits.status_code == 200 and 600_000 < len(fits.content) <= budget
        assert fits.json()["results"][0][0]["metadata"] == metadata_of(60_000)
        for i in range(10):
            assert c.delete(f"/documents/big-{i}").status_code == 200


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_rss_of_a_real_server_under_concurrent_amplifying_searches(exported_bundle, tmp_path):
    """The issue's attack, 20 at once, at the default limits: the server's memory stays under twice its idle
    size (before the budget, one such answer took 1.56 GB)."""
    registry, name = exported_bundle
    port = free_port()
    env = {**os.environ, "QAEMBED_INTRA_OP_THREADS": "1", "QAEMBED_RELOAD_INTERVAL": "0"}
    proc = subprocess.Popen([sys.executable, "-m", "service", "--registry", str(registry), "--name", name,
                             "--port", str(port), "--log_level", "warning"], cwd=ROOT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=url, timeout=60) as c:
            deadline = time.time() + 120
            while True:
                assert proc.poll() is None and time.time() < deadline, "the server did not start"
                try:
                    if c.get("/ready").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.2)
            assert_error(c.post("/documents", json={"documents": [{"text": "x", "metadata": metadata_of(3_900_000)}]}),
                         413)
            stored_documents(c, 64 * 1024 - 200)  # as large as the default bound allows
            assert c.post("/search", json={"query": QUERY, "top_k": 10}).status_code == 200  # warm
            server = psutil.Process(proc.pid)
            idle = server.memory_info().rss
            peak, done = [idle], threading.Event()

            def sample() -> None:
                while not done.is_set():
                    peak[0] = max(peak[0], server.memory_info().rss)
                    time.sleep(0.005)

            async def attack() -> list[httpx.Response]:
                async with httpx.AsyncClient(base_url=url, timeout=120) as ac:
                    return await asyncio.gather(*(ac.post("/search", json=ATTACK) for _ in range(20)))

            sampler = threading.Thread(target=sample)
            sampler.start()
            try:
                answers = asyncio.run(attack())
            finally:
                done.set()
                sampler.join()
            # each refused: over the answer budget (413), or shed by the queue-wait bound (429) on a slow machine
            assert 413 in {r.status_code for r in answers} and {r.status_code for r in answers} <= {413, 429}
            assert all(len(r.content) < 1000 for r in answers)
            assert peak[0] < 2 * idle, (idle, peak[0])
            assert c.get("/health").status_code == 200
    finally:
        proc.terminate()
        proc.wait(30)


# ------------------------------------------------------------------------------------------- connections
def read_until_closed(sock: socket.socket, limit: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection, and how long that took."""
    start, data = time.monotonic(), b""
    sock.settimeout(limit)
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return data, time.monotonic() - start
        data += chunk


def test_a_stalled_body_is_answered_408_and_its_connection_closed(budget_server):
    host, port = budget_server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"POST /embed HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                     b"content-length: 1000\r\n\r\n{\"inputs\": [\"never fin")
        data, waited = read_until_closed(sock, 10)
    assert data.startswith(b"HTTP/1.1 408"), data[:200]
    assert b'"type":"request_timeout"' in data and b"connection: close" in data.lower()
    assert 0.9 <= waited < 3, waited  # body_timeout_s is 1


def test_an_idle_keep_alive_connection_is_closed(budget_server):
    host, port = budget_server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
        data, waited = read_until_closed(sock, 10)
    assert data.startswith(b"HTTP/1.1 200") and b'"status":"ok"' in data
    assert 0.9 <= waited < 3, waited  # keep_alive_s is 1


def test_connections_beyond_the_limit_are_refused(exported_bundle):
    srv = ServerThread(settings_for(exported_bundle, max_connections=2, warmup=False)).start()
    host, port = srv.url.removeprefix("http://").split(":")
    try:
        held = [socket.create_connection((host, int(port)), timeout=10) for _ in range(2)]
        time.sleep(0.2)  # both accepted
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
            assert sock.recv(1000).startswith(b"HTTP/1.1 503")
        for sock in held:
            sock.close()
        time.sleep(0.2)
        assert httpx.get(srv.url + "/health", timeout=10).status_code == 200
    finally:
        srv.stop()


# ------------------------------------------------------------------------------------------- overload
class GatedBackend(Backend):
    """Wraps a real backend; every forward pass waits until the test opens the gate, so requests pile up
    exactly where the test wants them (no sleeps standing in for slowness)."""

    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self.kind, self.device, self.variant, self.dimension = inner.kind, inner.device, inner.variant, inner.dimension
        self.gate, self.entered = threading.Event(), threading.Event()
        self.texts = 0  # texts that reached the model

    def embed(self, ids, mask, types):
        self.entered.set()
        self.gate.wait(60)
        self.texts += len(ids)
        return self.inner.embed(ids, mask, types)


@pytest.fixture()
def gated_server(exported_bundle):
    """A server whose model waits on a gate (one inference worker, batches of one); yields it and the backend."""
    backends: list[GatedBackend] = []

    def loader(settings, metrics, version):
        model = open_serving_model(settings, metrics, version)
        model.queue.close()
        backends.append(GatedBackend(model.backend))
        return EmbeddingModel(model.spec, backends[-1], settings, metrics)

    servers: list[ServerThread] = []

    def start(**overrides) -> tuple[ServerThread, GatedBackend]:
        settings = settings_for(exported_bundle, warmup=False, inference_workers=1, max_batch_size=1, **overrides)
        servers.append(ServerThread(settings, model_loader=loader))
        servers[-1].start()
        return servers[-1], backends[-1]

    yield start
    for backend in backends:
        backend.gate.set()
    for srv in servers:
        srv.stop()


async def wait_for_metric(ac: httpx.AsyncClient, name: str, value: float) -> None:
    """Until the server's /metrics shows ``name`` at ``value`` (a state the test waits for, not a time)."""
    for _ in range(600):
        if metric((await ac.get("/metrics")).text, name) == value:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{name} never reached {value}")


def test_requests_beyond_the_in_flight_limit_are_refused_at_once(gated_server):
    srv, backend = gated_server(max_concurrent_requests=2, body_timeout_s=30.0, max_queue_wait_ms=0)
    host, port = srv.url.removeprefix("http://").split(":")

    async def scenario() -> None:
        async with httpx.AsyncClient(base_url=srv.url, timeout=60) as ac:
            held = [asyncio.ensure_future(ac.post("/embed", json={"inputs": "held 0"}))]
            await asyncio.to_thread(backend.entered.wait, 60)
            held.append(asyncio.ensure_future(ac.post("/embed", json={"inputs": "held 1"})))
            await wait_for_metric(ac, "qaembed_queue_size", 1)  # one in the model, one queued: 2 in flight
            assert not any(t.done() for t in held)
            # a third request is refused while both are still held: 429 at once, JSON, Retry-After
            err = assert_error(await ac.post("/embed", json={"inputs": "third"}), 429)
            assert err["type"] == "overloaded" and "max_concurrent_requests" in err["message"]
            r = await ac.get("/documents/anything")  # every data route counts, not only the embedding ones
            assert r.status_code == 429 and r.headers["retry-after"] == "1"
            # ... before its body is read: a body that never arrives is refused, not waited for (408 after 30 s)
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(b"POST /embed HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                         b"content-length: 1000\r\n\r\n{\"inputs\": \"never fin")
            await writer.drain()
            head = await asyncio.wait_for(reader.read(1000), 20)
            writer.close()
            assert head.startswith(b"HTTP/1.1 429") and b'"type":"overloaded"' in head, head[:300]
            # probes and metrics are not counted: a busy replica stays alive and observable
            assert (await ac.get("/health")).status_code == 200
            assert not any(t.done() for t in held)
            backend.gate.set()
            assert [(await t).status_code for t in held] == [200, 200]
            assert (await ac.post("/embed", json={"inputs": "after"})).status_code == 200  # the slots are free
            text = (await ac.get("/metrics")).text
            assert metric(text, "qaembed_request_errors_total", 'error_type="overloaded"') >= 3
            assert metric(text, "qaembed_requests_total", 'status="429"') >= 3

    asyncio.run(scenario())


def test_a_request_that_cannot_start_within_the_queue_wait_bound_is_refused(gated_server):
    srv, backend = gated_server(max_queue_wait_ms=100)

    async def scenario() -> None:
        async with httpx.AsyncClient(base_url=srv.url, timeout=60) as ac:
            running = asyncio.ensure_future(ac.post("/embed", json={"inputs": "running"}))
            await asyncio.to_thread(backend.entered.wait, 60)
            waiting = asyncio.ensure_future(ac.post("/embed", json={"inputs": "waiting"}))
            await wait_for_metric(ac, "qaembed_queue_size", 1)
            await asyncio.sleep(0.3)  # the queued text is now older than the 100 ms bound
            # a newcomer would wait behind it: refused at once, while the model is still busy
            err = assert_error(await ac.post("/search", json={"query": "newcomer"}), 429)
            assert err["type"] == "overloaded" and "max_queue_wait_ms" in err["message"]
            assert not running.done() and not waiting.done()
            backend.gate.set()
            assert (await running).status_code == 200
            # the queued request is refused when the worker reaches it: its text never runs
            late = await waiting
            assert late.status_code == 429 and "max_queue_wait_ms" in late.json()["error"]["message"]
            assert late.headers["retry-after"] == "1"
            assert backend.texts == 1
            assert (await ac.post("/embed", json={"inputs": "after"})).status_code == 200  # serving again
            text = (await ac.get("/metrics")).text
            assert metric(text, "qaembed_request_errors_total", 'error_type="overloaded"') == 2

    asyncio.run(scenario())
