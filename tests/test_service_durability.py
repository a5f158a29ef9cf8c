"""Durability of ``python -m service`` as a real process: kill -9 after acknowledged writes loses
nothing; SIGTERM shuts down gracefully; restart with another model version re-embeds; a data directory
of the previous release (write-ahead log + snapshots) is migrated into SQLite at start."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bundle(request) -> tuple[Path, str]:
    if os.environ.get("QAEMBED_TEST_REGISTRY"):
        return Path(os.environ["QAEMBED_TEST_REGISTRY"]), os.environ.get("QAEMBED_TEST_NAME", "minilm")
    registry, name = request.getfixturevalue("exported_bundle")
    return Path(registry), name


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServiceProcess:
    def __init__(self, registry: Path, name: str, data_dir: Path, *extra: str, env: dict | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = data_dir.parent / f"service-{self.port}.log"
        cmd = [sys.executable, "-m", "service", "--registry", str(registry), "--name", name,
               "--data_dir", str(data_dir), "--host", "127.0.0.1", "--port", str(self.port), *extra]
        environment = {**os.environ, "PYTHONPATH": str(ROOT), "QAEMBED_INTRA_OP_THREADS": "1",
                       "QAEMBED_LOG_LEVEL": "info", **(env or {})}
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=environment, stdout=open(self.log, "wb"),
                                     stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 120) -> httpx.Client:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"service exited {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                if httpx.get(self.url + "/ready", timeout=2).status_code == 200:
                    return httpx.Client(base_url=self.url, timeout=60)
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise TimeoutError(self.log.read_text()[-3000:])

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def test_kill9_after_acknowledged_writes_loses_nothing(bundle, tmp_path):
    registry, name = bundle
    data = tmp_path / "data"
    svc = ServiceProcess(registry, name, data, "--snapshot_every", "7")
    acked: dict[str, str] = {}
    deleted: set[str] = set()
    try:
        c = svc.wait_ready()
        for batch in range(6):  # 6 acknowledged writes of 5 docs; the store's upkeep every 7 writes
            docs = [{"id": f"b{batch}-{i}", "text": f"Kayıt {batch}-{i}: {'ağaç deniz güneş yağmur rüzgar'.split()[i]}"
                     f" ve sayı {batch * 10 + i}", "metadata": {"batch": batch}} for i in range(5)]
            assert c.post("/documents", json={"documents": docs}).status_code == 200
            acked.update({d["id"]: d["text"] for d in docs})
        for doc_id in ("b0-0", "b3-2"):
            assert c.delete(f"/documents/{doc_id}").status_code == 200
            deleted.add(doc_id)

        # a stream of concurrent writers, killed at an arbitrary moment
        stop = threading.Event()

        def writer(w: int) -> None:
            with httpx.Client(base_url=svc.url, timeout=30) as wc:
                n = 0
                while not stop.is_set():
                    doc = {"id": f"w{w}-{n}", "text": f"yazar {w} belge {n} rastgele içerik {n * 7919 % 1000}"}
                    try:
                        r = wc.post("/documents", json={"documents": [doc]})
                    except httpx.TransportError:
                        return
                    if r.status_code == 200:
                        acked[doc["id"]] = doc["text"]
                    n += 1

        threads = [threading.Thread(target=writer, args=(w,)) for w in range(3)]
        for t in threads:
            t.start()
        deadline = time.time() + 60  # a few writes acknowledged, however busy the machine is
        while len(acked) < 45 and time.time() < deadline:
            time.sleep(0.05)
        svc.kill9()
        stop.set()
        for t in threads:
            t.join(30)
    finally:
        svc.close()
    assert len(acked) > 35

    again = ServiceProcess(registry, name, data)
    try:
        c = again.wait_ready()
        expected = {k: v for k, v in acked.items() if k not in deleted}
        # a write cut by the kill after its fsync but before its answer may be there too (3 writers)
        recovered = c.get("/ready").json()["documents"]
        assert len(expected) <= recovered <= len(expected) + 3
        for doc_id, text in expected.items():
            r = c.get(f"/documents/{doc_id}")
            assert r.status_code == 200 and r.json()["text"] == text, doc_id
        for doc_id in deleted:
            assert c.get(f"/documents/{doc_id}").status_code == 404
        sample = list(expected.items())[::5]
        for start in range(0, len(sample), 32):
            chunk = sample[start:start + 32]
            r = c.post("/search", json={"queries": [t for _, t in chunk], "top_k": 1})
            assert [hits[0]["id"] for hits in r.json()["results"]] == [k for k, _ in chunk]
        assert c.post("/search", json={"query": "deniz", "filter": {"batch": 2}}).json()["results"]

        # SIGTERM: graceful exit, the database closed; the next start finds everything
        again.proc.send_signal(signal.SIGTERM)
        # uvicorn finishes in-flight work, runs the shutdown, then re-raises the signal it caught
        assert again.proc.wait(60) in (0, -signal.SIGTERM)
        assert "stopped" in again.log.read_text()
    finally:
        again.close()
    third = ServiceProcess(registry, name, data)
    try:
        c = third.wait_ready()
        assert c.get("/ready").json()["documents"] == recovered
        assert f"recovered {recovered} documents (0 to re-embed)" in third.log.read_text()
        durability = c.get("/info").json()["durability"]
        assert durability["store"] == "sqlite" and durability["analyzer"] == "tr"
    finally:
        third.close()


def test_restart_with_another_model_version_reembeds(bundle, tmp_path):
    registry_src, name = bundle
    registry = tmp_path / "registry"
    shutil.copytree(registry_src / name, registry / name)
    first = (registry / name / "LATEST").read_text().strip()
    data = tmp_path / "data"
    svc = ServiceProcess(registry, name, data, "--version", first)
    try:
        c = svc.wait_ready()
        docs = [{"id": f"d{i}", "text": f"metin {i} hakkında {i * 3} bilgi"} for i in range(12)]
        assert c.post("/documents", json={"documents": docs}).status_code == 200
        svc.kill9()
    finally:
        svc.close()
    second = f"v{int(first[1:]) + 1:04d}"
    shutil.copytree(registry / name / first, registry / name / second)
    manifest = json.loads((registry / name / second / "manifest.json").read_text())
    manifest["version"] = second
    (registry / name / second / "manifest.json").write_text(json.dumps(manifest))
    (registry / name / "LATEST").write_text(second + "\n")
    svc = ServiceProcess(registry, name, data)
    try:
        c = svc.wait_ready()
        info = c.get("/info").json()
        assert info["model"]["version"] == second and info["index"]["model_version"] == second
        assert "12 to re-embed" in svc.log.read_text()
        top = c.post("/search", json={"query": docs[5]["text"], "top_k": 1}).json()["results"][0]
        assert top["id"] == "d5"
    finally:
        svc.close()


def test_bad_settings_exit_2_and_missing_bundle_exit_1(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-m", "service"], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 2 and "--registry" in r.stderr
    r = subprocess.run([sys.executable, "-m", "service", "--registry", str(tmp_path), "--name", "nothing",
                        "--port", str(free_port())], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 1 and "Traceback" not in r.stdout


def test_a_second_server_on_one_data_dir_is_refused_until_the_first_dies(bundle, tmp_path):
    """Two servers on one data directory both acknowledged writes, and a restart found half of them. The
    second one must exit at start, its log naming the lock and the first process; the first keeps serving;
    the lock dies with its holder (kill -9), so the lock file it leaves behind blocks no one."""
    registry, name = bundle
    data = tmp_path / "data"
    first = ServiceProcess(registry, name, data, "--api_key", "secret-key")
    try:
        c = first.wait_ready()
        c.headers["Authorization"] = "Bearer secret-key"
        assert c.post("/documents", json={"documents": [{"id": "a", "text": "birinci yazı"}]}).status_code == 200
        second = ServiceProcess(registry, name, data)
        try:
            assert second.proc.wait(120) == 1
        finally:
            second.close()
        log = second.log.read_text()
        assert "Traceback" not in log, log
        refusal = next(line for line in log.splitlines() if "start failed" in line)
        assert str(data / "LOCK") in refusal and f"pid {first.proc.pid} " in refusal, refusal
        assert f"--data_dir {data}" in refusal and "--api_key ***" in refusal and "secret-key" not in refusal
        assert c.post("/documents", json={"documents": [{"id": "b", "text": "ikinci yazı"}]}).status_code == 200
        assert c.get("/ready").json()["documents"] == 2
        first.kill9()
    finally:
        first.close()
    assert json.loads((data / "LOCK").read_text())["pid"] == first.proc.pid  # stale, left by the dead one
    again = ServiceProcess(registry, name, data)
    try:
        c = again.wait_ready()
        assert [c.get(f"/documents/{i}").status_code for i in "ab"] == [200, 200]
        assert json.loads((data / "LOCK").read_text())["pid"] == again.proc.pid
    finally:
        again.close()


def test_a_data_directory_of_the_previous_release_is_migrated_at_start(bundle, tmp_path):
    """tests/data/wal_datadir was written by the write-ahead-log store (3 documents live, 2 feedback records,
    vectors of a 2-dimensional test model): the first start brings it into SQLite, re-embeds, and keeps the old
    files aside; a restart finds the same without migrating again."""
    registry, name = bundle
    data = tmp_path / "data"
    shutil.copytree(ROOT / "tests" / "data" / "wal_datadir", data)
    for attempt in range(2):
        svc = ServiceProcess(registry, name, data)
        try:
            c = svc.wait_ready()
            assert c.get("/ready").json()["documents"] == 3
            assert c.get("/documents/a").json()["metadata"] == {"lang": "tr", "v": 2}
            assert c.get("/documents/b").status_code == 404
            top = c.post("/search", json={"query": "Kahve nasıl yapılır?", "top_k": 1}).json()["results"][0]
            assert top["id"] == "d"
            assert c.get("/feedback/export").text.count("başkent?") == 1
        finally:
            svc.close()
        log = svc.log.read_text()
        assert ("migrated the write-ahead log store" in log) == (attempt == 0), log[-3000:]
        assert ("3 to re-embed" if attempt == 0 else "(0 to re-embed)") in log, log[-3000:]
    assert [p.name for p in data.glob("wal-store.migrated-*/*")] and not (data / "wal").exists()
