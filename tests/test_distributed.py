"""Scale-out serving end to end (issue 7), on real servers: the API on both index backends (FAISS in
process, Milvus Lite), two ``python -m service`` replicas sharing one Milvus Lite gRPC server on
loopback, and the read-only FAISS index bundle (build-index → serve → hot swap)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from export.registry import set_latest
from tests.test_service_api import ServerThread, _add_version, assert_error, settings_for
from tests.test_service_durability import ServiceProcess, free_port

pytest.importorskip("pymilvus")
pytest.importorskip("milvus_lite")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def registry(exported_bundle, tmp_path) -> tuple[Path, str]:
    """A private copy of the exported MiniLM registry (tests publish new versions into it)."""
    source, name = exported_bundle
    shutil.copytree(Path(source) / name, tmp_path / "registry" / name)
    return tmp_path / "registry", name


def wait_reload(c: httpx.Client, timeout: float = 180) -> dict:
    deadline = time.time() + timeout
    while (status := c.get("/admin/reload").json())["state"] not in ("done", "failed", "unchanged"):
        assert time.time() < deadline, status
        time.sleep(0.1)
    return status


# ------------------------------------------------------------------------------------------- one API, two backends
@pytest.mark.parametrize("backend", ["faiss", "milvus"])
def test_api_and_model_switch_on_both_backends(backend, registry, example_data, tmp_path):
    extra = (dict(data_dir=tmp_path / "data") if backend == "faiss" else
             dict(index="milvus", milvus_uri=str(tmp_path / "milvus.db"), milvus_index_type="FLAT"))
    srv = ServerThread(settings_for(registry, corpus=[example_data], **extra)).start()
    try:
        c = httpx.Client(base_url=srv.url, timeout=60)
        pairs = json.loads(example_data.read_text())
        corpus_size = c.get("/ready").json()["documents"]
        assert corpus_size == len({p["answer"] for p in pairs})
        hits = c.post("/search", json={"queries": [p["question"] for p in pairs[:20]], "top_k": 3}).json()["results"]
        assert sum(p["answer"] in {h["text"] for h in row} for p, row in zip(pairs, hits)) >= 12
        docs = [{"id": "capital", "text": "Ankara, Türkiye'nin başkentidir.", "metadata": {"lang": "tr"}},
                {"id": "capital-en", "text": "Ankara is the capital of Turkey.", "metadata": {"lang": "en"}}]
        assert c.post("/documents", json={"documents": docs}).json() == {"ids": ["capital", "capital-en"]}
        q = {"query": "Türkiye'nin başkenti neresidir?", "top_k": 3}
        assert [h["id"] for h in c.post("/search", json={**q, "filter": {"lang": "en"}}).json()["results"]] \
            == ["capital-en"]
        assert c.get("/documents/capital").json()["metadata"] == {"lang": "tr"}
        assert c.delete("/documents/capital-en").status_code == 200
        assert_error(c.get("/documents/capital-en"), 404)
        assert_error(c.delete("/documents/capital-en"), 404)
        if backend == "milvus":  # FAISS matches an explicit null; Milvus cannot tell it from a missing key
            assert_error(c.post("/search", json={**q, "filter": {"lang": None}}), 422)
        assert c.post("/feedback", json={"query": q["query"], "document_id": "capital"}).status_code == 200
        exported = c.get("/feedback/export").text.splitlines()
        assert [json.loads(line) for line in exported] == [{"question": q["query"], "answer": docs[0]["text"]}]

        # a new model version: re-embedded (FAISS: a new index; Milvus: a new collection + alias switch)
        first = c.get("/info").json()["model"]["version"]
        second = _add_version(*registry)
        assert c.post("/admin/reload", json={}).status_code == 202
        during = {"id": "during", "text": "Written while the new model re-embeds.", "metadata": {"lang": "en"}}
        assert c.post("/documents", json={"documents": [during]}).status_code == 200
        status = wait_reload(c)
        assert status["state"] == "done" and status["from"] == first and status["to"] == second
        info = c.get("/info").json()
        assert info["model"]["version"] == info["index"]["model_version"] == second
        assert info["index"]["documents"] == corpus_size + 2 and info["index"]["backend"] == backend
        assert c.post("/search", json={"query": during["text"], "top_k": 1}).json()["results"][0]["id"] == "during"
        if backend == "milvus":
            assert info["index"]["collection"] == f"qaembed_{registry[1]}_{second}"
            from service.milvus import MilvusStore

            store = MilvusStore(srv.app.state.settings)
            assert store.serving() == info["index"]["collection"]
            assert store.attach(f"qaembed_{registry[1]}_{first}").properties()["qaembed.state"] == "retired"
        assert c.post("/search", json=q).json()["results"][0]["id"] == "capital"
        assert c.get("/documents/capital-en").status_code == 404
    finally:
        srv.stop()


# ------------------------------------------------------------------------------------------- two replicas, one Milvus
class MilvusLiteServer:
    """``milvus-lite server`` (Milvus Lite's own gRPC server) on a loopback port."""

    def __init__(self, data_dir: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        exe = Path(sys.executable).parent / "milvus-lite"
        self.proc = subprocess.Popen([str(exe), "server", "--data-dir", str(data_dir), "--host", "127.0.0.1",
                                      "--port", str(self.port)], stdout=subprocess.DEVNULL,
                                     stderr=open(data_dir.parent / f"milvus-{self.port}.log", "ab"))
        deadline = time.time() + 60
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    break
            assert self.proc.poll() is None and time.time() < deadline, "milvus-lite server did not start"
            time.sleep(0.1)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


def test_two_replicas_share_one_milvus(registry, tmp_path):
    """Write on one replica, read on the other; a killed replica loses nothing (it holds no state);
    feedback from any replica reaches export-feedback; Milvus down → 503 and unready, then back."""
    milvus = MilvusLiteServer(tmp_path / "milvus")
    env = {"QAEMBED_INDEX": "milvus", "QAEMBED_MILVUS_URI": milvus.uri, "QAEMBED_RELOAD_INTERVAL": "0",
           "QAEMBED_MILVUS_INDEX_TYPE": "FLAT"}
    reg, name = registry
    a = ServiceProcess(reg, name, tmp_path / "unused-a", env=env)
    b = ServiceProcess(reg, name, tmp_path / "unused-b", env=env)
    try:
        ca, cb = a.wait_ready(), b.wait_ready()
        docs = [{"id": f"d{i}", "text": f"Belge {i}: {w}", "metadata": {"n": i % 2}}
                for i, w in enumerate("deniz dağ orman çöl nehir göl".split())]
        assert ca.post("/documents", json={"documents": docs}).status_code == 200
        assert cb.get("/documents/d3").json()["text"] == docs[3]["text"]
        top = cb.post("/search", json={"query": docs[4]["text"], "top_k": 1, "filter": {"n": 0}}).json()
        assert top["results"][0]["id"] == "d4"
        assert cb.delete("/documents/d2").status_code == 200
        assert_error(ca.get("/documents/d2"), 404)
        assert ca.get("/ready").json()["documents"] == cb.get("/ready").json()["documents"] == 5
        r = cb.post("/feedback", json={"query": "deniz", "document_id": "d0", "shown_ids": ["d1"]})
        assert r.status_code == 200

        # statelessness: kill -9 a replica and start a fresh one; everything is still there
        a.kill9()
        a = ServiceProcess(reg, name, tmp_path / "unused-c", env=env)
        ca = a.wait_ready()
        assert ca.get("/ready").json()["documents"] == 5 and ca.get("/documents/d5").status_code == 200
        out = tmp_path / "feedback.jsonl"
        run = subprocess.run([sys.executable, "-m", "service", "export-feedback", "--out", str(out)], cwd=ROOT,
                             env={**os.environ, "PYTHONPATH": str(ROOT), "QAEMBED_NAME": name, **env},
                             capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr
        assert [json.loads(x) for x in out.read_text().splitlines()] == [
            {"question": "deniz", "positive": docs[0]["text"], "negatives": [docs[1]["text"]]}]

        # Milvus goes away: clear 503s (no traceback), unready; it comes back: ready again
        milvus.stop()
        err = assert_error(cb.post("/search", json={"query": "deniz"}), 503)
        assert err["type"] == "index_unavailable" and milvus.uri in err["message"]
        assert_error(cb.get("/ready"), 503)
        assert "Traceback" not in b.log.read_text()
        milvus = MilvusLiteServer(tmp_path / "milvus", port=milvus.port)
        deadline = time.time() + 60
        while cb.get("/ready").status_code != 200:
            assert time.time() < deadline
            time.sleep(0.2)
        assert cb.post("/search", json={"query": "deniz", "top_k": 5}).status_code == 200
    finally:
        a.close()
        b.close()
        milvus.stop()


def test_replica_waits_for_milvus_at_start(registry, tmp_path):
    port = free_port()
    env = {"QAEMBED_INDEX": "milvus", "QAEMBED_MILVUS_URI": f"http://127.0.0.1:{port}",
           "QAEMBED_RELOAD_INTERVAL": "0"}
    svc = ServiceProcess(*registry, tmp_path / "unused", env=env)
    milvus = None
    try:
        deadline = time.time() + 120
        while True:
            try:
                r = httpx.get(svc.url + "/ready", timeout=2)
                if "waiting for milvus" in r.text:
                    break
            except httpx.TransportError:
                pass
            assert time.time() < deadline and svc.proc.poll() is None
            time.sleep(0.2)
        assert r.status_code == 503 and f"127.0.0.1:{port}" in r.json()["error"]["message"]
        milvus = MilvusLiteServer(tmp_path / "milvus", port=port)
        assert svc.wait_ready().get("/ready").json()["documents"] == 0
    finally:
        svc.close()
        if milvus is not None:
            milvus.stop()


# ------------------------------------------------------------------------------------------- read-only FAISS bundle
def build_index(registry: Path, model: str, name: str, corpus: Path) -> Path:
    run = subprocess.run([sys.executable, "-m", "service", "build-index", "--registry", str(registry), "--model",
                          model, "--name", name, "--corpus", str(corpus)], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)
    assert run.returncode == 0, run.stderr
    return Path(run.stdout.strip().splitlines()[-1])


def test_read_only_index_bundle_is_published_served_and_hot_swapped(registry, example_data, tmp_path):
    from export.bundle import open_bundle, verify_bundle

    reg, model = registry
    bad = subprocess.run([sys.executable, "-m", "service", "build-index", "--registry", str(reg), "--model", "nope",
                          "--name", "faq-index", "--corpus", str(example_data)], cwd=ROOT, capture_output=True,
                         text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert bad.returncode == 2 and bad.stderr.startswith("error:") and "Traceback" not in bad.stderr
    first = build_index(reg, model, "faq-index", example_data)
    bundle = verify_bundle(first)  # every file checksummed, model files included
    assert bundle.version == "v0001" and open_bundle(reg, "faq-index").version == "v0001"
    pairs = json.loads(example_data.read_text())
    facts = bundle.manifest["index"]
    assert facts["documents"] == len({p["answer"] for p in pairs}) and facts["model"]["name"] == model
    assert {"index.faiss", "vectors.npy", "documents.jsonl", "tokenizer.json"} <= set(bundle.manifest["files"])

    srv = ServerThread(settings_for((reg, "faq-index"), reload_interval=0.3)).start()
    try:
        c = httpx.Client(base_url=srv.url, timeout=60)
        info = c.get("/info").json()
        assert info["index"]["read_only"] is True and info["index"]["documents"] == facts["documents"]
        top = c.post("/search", json={"query": pairs[0]["question"], "top_k": 5}).json()["results"]
        assert pairs[0]["answer"] in [h["text"] for h in top]
        err = assert_error(c.post("/documents", json={"documents": [{"text": "x"}]}), 405)
        assert err["type"] == "read_only_index" and "build-index" in err["message"]
        assert_error(c.delete(f"/documents/{top[0]['id']}"), 405)

        # a new corpus published as v0002: the replica swaps to it on its own (LATEST watcher)
        extra = tmp_path / "more.json"
        mars = {"question": "Mars kaç uydusu var?", "answer": "Mars'ın iki uydusu vardır: Phobos ve Deimos."}
        more = pairs[:5] + [mars]
        extra.write_text(json.dumps(more))
        build_index(reg, model, "faq-index", extra)
        deadline = time.time() + 120
        while c.get("/info").json()["model"]["version"] != "v0002":
            assert time.time() < deadline
            time.sleep(0.2)
        assert c.get("/info").json()["index"]["documents"] == len({p["answer"] for p in more})
        top = c.post("/search", json={"query": "Mars'ın uyduları", "top_k": 1}).json()["results"][0]
        assert top["text"].startswith("Mars'ın iki uydusu")

        # a version picked by hand stays until LATEST moves: the watcher does not undo it
        assert c.post("/admin/reload", json={"version": "v0001"}).status_code == 202
        assert wait_reload(c)["state"] == "done"
        time.sleep(5 * 0.3)  # five polls of an unchanged LATEST (v0002)
        assert c.get("/info").json()["model"]["version"] == "v0001"
        set_latest(reg, "faq-index", "v0001")  # LATEST moves to what is serving: nothing to do
        deadline = time.time() + 30
        while c.get("/info").json()["latest_watch"].get("latest") != "v0001":
            assert time.time() < deadline
            time.sleep(0.1)
        set_latest(reg, "faq-index", "v0002")  # and on again: the watcher follows
        deadline = time.time() + 120
        while c.get("/info").json()["model"]["version"] != "v0002":
            assert time.time() < deadline
            time.sleep(0.2)
    finally:
        srv.stop()
