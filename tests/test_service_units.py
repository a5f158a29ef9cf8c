"""Unit tests of service/ parts that need no server: settings, auth, batching, index, store, imports."""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import faiss
import numpy as np
import pytest

from service.auth import KeyChecker, is_loopback
from service.backends.base import Backend
from service.batching import BatchQueue
from service.errors import Overloaded, TooLarge
from service.index import Collection, Document, IndexConfig
from service.metrics import ServiceMetrics
from service.settings import Settings, SettingsError
from service.store import DurableStore, StoreError
from service.tokenization import Encoded
from tests.conftest import FailingLog

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------- settings
def test_settings_flags_over_env_over_defaults():
    env = {"QAEMBED_PORT": "9001", "QAEMBED_API_KEY": "k-secret1, k-secret2", "QAEMBED_MAX_WAIT_MS": "5",
           "QAEMBED_REGISTRY": "/r", "QAEMBED_NAME": "qa"}
    s = Settings.from_sources(["--port", "9002"], env={**env, "QAEMBED_INFERENCE_WORKERS": "3"})
    assert s.inference_workers == 3
    assert s.port == 9002 and s.max_wait_ms == 5.0 and s.api_key == ("k-secret1", "k-secret2")
    assert s.registry == Path("/r") and s.name == "qa" and s.host == "127.0.0.1"
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.port = 1  # type: ignore[misc]
    assert "k-secret" not in repr(s) and s.public()["api_key"] is True


@pytest.mark.parametrize("env", [{"QAEMBED_PORT": "x"}, {"QAEMBED_MAX_INPUTS": "0"},
                                 {"QAEMBED_INDEX": "nope"}, {"QAEMBED_MAX_INPUTS": "5000"},
                                 {"QAEMBED_INFERENCE_WORKERS": "-1"}])
def test_settings_reject_bad_values(env):
    with pytest.raises(SettingsError):
        Settings.from_sources([], env=env)


def test_settings_require_model():
    with pytest.raises(SettingsError, match="--registry"):
        Settings.from_sources([], env={}).require_model()


# ------------------------------------------------------------------------------------------- auth
def test_auth_rules():
    # no keys: data routes open; admin routes only when the server listens on loopback alone
    local = KeyChecker((), (), loopback_only=True)
    assert local.check("/embed", None) is None and local.check("/admin/reload", None) is None
    exposed = KeyChecker((), (), loopback_only=False)
    assert exposed.check("/embed", None) is None
    assert exposed.check("/admin/reload", None).status == 403 and exposed.check("/feedback/export", None).status == 403
    assert [is_loopback(h) for h in ("127.0.0.1", "::1", "localhost", "0.0.0.0", "::", "10.0.0.7", "qaembed")] == \
        [True, True, True, False, False, False, False]
    c = KeyChecker(("data",), ("admin",))
    assert c.check("/health", None) is None and c.check("/metrics", None) is None
    assert c.check("/embed", None).status == 401
    assert c.check("/embed", "Bearer wrong").status == 401
    assert c.check("/embed", "Basic data").status == 401
    assert c.check("/embed", "Bearer data") is None
    assert c.check("/embed", "bearer admin") is None  # admin key is a superset
    assert c.check("/admin/reload", "Bearer data").status == 401
    assert c.check("/admin/reload", "Bearer admin") is None
    assert KeyChecker(("data",), ()).check("/admin/reload", "Bearer data").status == 403


# ------------------------------------------------------------------------------------------- batching
class RecordingBackend(Backend):
    """Deterministic fake model: the embedding encodes the first token id; records batch shapes."""

    dimension = 4

    def __init__(self, delay: float = 0.0):
        self.delay = delay
        self.shapes: list[tuple[int, int]] = []
        self.gate = threading.Event()
        self.gate.set()

    def embed(self, ids, mask, types):
        self.gate.wait(10)
        self.shapes.append(ids.shape)
        time.sleep(self.delay)
        out = np.zeros((len(ids), 4), np.float32)
        out[:, 0] = ids[:, 0]
        out[:, 1] = 1
        return out


def enc(first: int, length: int) -> Encoded:
    ids = np.full(length, 7, np.int64)
    ids[0] = first
    return Encoded(ids, np.zeros(length, np.int64))


def test_queue_batches_concurrent_requests_within_token_budget():
    backend = RecordingBackend(delay=0.01)
    metrics = ServiceMetrics(process=False)

    async def main():
        q = BatchQueue(backend, max_batch_tokens=64, max_batch_size=16, max_wait_s=0.005, capacity=100,
                       metrics=metrics)
        jobs = [q.submit([enc(i, 8)]) for i in range(20)]
        results = [await j.wait() for j in jobs]
        q.close()
        return results

    results = asyncio.run(main())
    for i, r in enumerate(results):  # every request gets its own vector back
        assert r.vectors[0, 0] == pytest.approx(i / np.sqrt(i * i + 1))
    assert max(b for b, _ in backend.shapes) > 1
    assert all(b * s <= 64 for b, s in backend.shapes)  # padded tokens within budget
    assert sum(b for b, _ in backend.shapes) == 20


def test_queue_full_is_refused_at_once_and_cancelled_jobs_are_dropped():
    backend = RecordingBackend()
    backend.gate.clear()  # hold the first batch inside the "model"

    async def main():
        q = BatchQueue(backend, max_batch_tokens=1000, max_batch_size=1, max_wait_s=0, capacity=3)
        first = q.submit([enc(1, 4)])
        while not q.size == 0:
            await asyncio.sleep(0.001)
        keep = q.submit([enc(2, 4), enc(3, 4)])
        gone = q.submit([enc(4, 4)])
        t0 = time.perf_counter()
        with pytest.raises(Overloaded):
            q.submit([enc(5, 4)])
        assert time.perf_counter() - t0 < 0.05
        gone.cancel()  # the client went away
        backend.gate.set()
        await first.wait()
        r = await keep.wait()
        q.close()
        return r

    r = asyncio.run(main())
    assert r.vectors.shape == (2, 4)
    assert len(backend.shapes) == 3  # 1 + 2; the cancelled text never reached the model


def test_two_workers_run_forward_passes_at_once_and_reassemble_split_requests():
    class Overlapping(RecordingBackend):
        """Each pass waits (bounded) for a second one to be inside the model at the same time."""

        def __init__(self):
            super().__init__()
            self.inside = 0
            self.most_inside = 0
            self.lock = threading.Lock()
            self.both = threading.Event()

        def embed(self, ids, mask, types):
            with self.lock:
                self.inside += 1
                self.most_inside = max(self.most_inside, self.inside)
                if self.inside == 2:
                    self.both.set()
            self.both.wait(2)
            try:
                return super().embed(ids, mask, types)
            finally:
                with self.lock:
                    self.inside -= 1

    backend = Overlapping()

    async def main():
        q = BatchQueue(backend, max_batch_size=1, max_wait_s=0, capacity=100, workers=2)
        many = q.submit([enc(i, 3) for i in range(1, 21)])  # one request, twenty single-text passes
        other = q.submit([enc(99, 3)])
        results = await many.wait(), await other.wait()
        q.close()
        return results

    many, other = asyncio.run(main())
    assert backend.most_inside == 2 and backend.both.is_set()
    expected = np.array([i / np.sqrt(i * i + 1) for i in range(1, 21)], np.float32)
    np.testing.assert_allclose(many.vectors[:, 0], expected, rtol=1e-6)  # every row back in its place
    assert other.vectors[0, 0] == pytest.approx(99 / np.sqrt(99 * 99 + 1))
    assert len(backend.shapes) == 21


def test_queue_failure_fails_requests_not_the_worker():
    class Flaky(RecordingBackend):
        def embed(self, ids, mask, types):
            if ids[0, 0] == 13:
                raise RuntimeError("boom")
            return super().embed(ids, mask, types)

    async def main():
        q = BatchQueue(Flaky(), max_batch_size=1, max_wait_s=0, capacity=10)
        with pytest.raises(Exception, match="inference failed"):
            await q.submit([enc(13, 3)]).wait()
        ok = await q.submit([enc(2, 3)]).wait()
        q.close()
        return ok

    assert asyncio.run(main()).vectors.shape == (1, 4)


def test_tokenizer_truncates_and_refuses_when_asked(minilm_path):
    from service.tokenization import TextTokenizer

    tok = TextTokenizer(minilm_path / "tokenizer.json", max_seq_length=8, query_prompt="query: ")
    long = "one two three four five six seven eight nine ten"
    assert [len(e) for e in tok.encode(["hi", long])] == [3, 8]
    assert len(tok.encode(["hi"], is_query=True)[0]) > 3  # prompt only for queries
    with pytest.raises(TooLarge):
        tok.encode([long], truncate=False)
    with pytest.raises(TooLarge):
        tok.encode([long], truncate=False, truncation_direction="left")


def test_left_truncation_keeps_the_end_of_the_text_and_the_query_instruction(minilm_path):
    from tokenizers import Tokenizer

    from service.tokenization import TextTokenizer

    path = minilm_path / "tokenizer.json"
    tok = TextTokenizer(path, max_seq_length=8, query_prompt="query: ")
    words = Tokenizer.from_file(str(path))
    long = "one two three four five six seven eight nine ten"

    def tokens(encoded):
        return [words.id_to_token(int(i)) for i in encoded.ids]

    # as the tokenizers library truncates on the left
    words.no_padding()
    words.enable_truncation(8, direction="left")
    assert tok.encode([long], truncation_direction="left")[0].ids.tolist() == words.encode(long).ids
    assert tokens(tok.encode([long], truncation_direction="left")[0]) == \
        ["[CLS]", "five", "six", "seven", "eight", "nine", "ten", "[SEP]"]
    # a query: the instruction stays, the start of the text goes
    assert tokens(tok.encode([long], is_query=True, truncation_direction="left")[0]) == \
        ["[CLS]", "query", ":", "seven", "eight", "nine", "ten", "[SEP]"]
    assert tokens(tok.encode([long], is_query=True)[0]) == \
        ["[CLS]", "query", ":", "one", "two", "three", "four", "[SEP]"]
    short = tok.encode(["hi"], is_query=True, truncation_direction="left")[0]
    assert tokens(short) == ["[CLS]", "query", ":", "hi", "[SEP]"]


# ------------------------------------------------------------------------------------------- index
def _unit(rng, n, dim=32):
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("kind", ["flat", "ivf", "ivf-sq8", "ivf-pq", "hnsw", "hnsw-sq8"])
def test_index_types_find_neighbours_filter_and_delete(kind):
    rng = np.random.default_rng(0)
    vectors = _unit(rng, 600)
    docs = [Document(f"d{i}", f"text {i}", {"parity": i % 2, "tags": ["all", f"t{i % 3}"]}) for i in range(600)]
    config = IndexConfig(kind=kind, nprobe=64, ef_search=128, pq_m=8)
    c = Collection.from_arrays(32, config, "v1", docs, vectors)
    assert c.index.kind == kind and len(c) == 600
    hits = c.search(vectors[:20], k=5)
    found = sum(h[0].doc.id == f"d{i}" for i, h in enumerate(hits))
    assert found >= (15 if kind == "ivf-pq" else 19)
    odd = c.search(vectors[:1], k=5, where={"parity": 1})[0]
    assert len(odd) == 5 and all(h.doc.metadata["parity"] == 1 for h in odd)
    assert all(h.doc.id.endswith(("1", "3", "5", "7", "9")) for h in odd)
    assert {h.doc.id for h in c.search(vectors[:1], k=3, where={"tags": ["t1", "t2"], "parity": 0})[0]} \
        <= {f"d{i}" for i in range(600) if i % 3 and i % 2 == 0}
    c.delete(["d0"])
    assert all(h.doc.id != "d0" for h in c.search(vectors[:1], k=10)[0])
    c.upsert([("d1", "replaced", {})], vectors[:1])  # d1 now sits where d0 was
    assert c.search(vectors[:1], k=1)[0][0].doc.text == "replaced"
    c.rebuild()
    assert c.rows == len(c) == 599 and c.search(vectors[:1], k=1)[0][0].doc.id == "d1"


@pytest.mark.parametrize("kind", ["ivf-sq8", "hnsw", "hnsw-sq8"])
def test_a_saved_index_searches_with_this_runs_settings(kind, tmp_path):
    """An index bundle is built once; QAEMBED_NPROBE / QAEMBED_EF_SEARCH of the serving pod must apply to it."""
    vectors = _unit(np.random.default_rng(1), 600)
    docs = [Document(f"d{i}", f"text {i}", {}) for i in range(600)]
    facts = Collection.from_arrays(32, IndexConfig(kind=kind, nprobe=4, ef_search=16), "v1", docs,
                                   vectors).save(tmp_path)
    loaded = Collection.load(tmp_path, facts, IndexConfig(kind=kind, nprobe=48, ef_search=512), "v1")
    index = loaded.index.index
    if kind.startswith("ivf"):
        assert faiss.extract_index_ivf(index).nprobe == 48
    else:
        assert faiss.downcast_index(index.index).hnsw.efSearch == 512
    assert loaded.search(vectors[:1], k=1)[0][0].doc.id == "d0"


def test_auto_index_choice():
    cfg = IndexConfig(kind="auto", flat_max=1000)
    assert cfg.resolve(10) == "flat" and cfg.resolve(1000) == "flat" and cfg.resolve(5000) == "ivf-sq8"
    assert IndexConfig(kind="ivf").resolve(10) == "flat"  # too few vectors to train


def test_ivf_list_count_follows_two_root_n_with_enough_training_points_per_list():
    assert IndexConfig().lists(1_000_000) == 2000 and IndexConfig().lists(100_000) == 632
    assert IndexConfig().lists(1000) == 25  # 2·√1000 = 63 lists would get < 39 points each
    assert IndexConfig(nlist=300).lists(1_000_000) == 300  # --nlist wins


# ------------------------------------------------------------------------------------------- store
def test_store_replays_wal_and_snapshots_atomically(tmp_path):
    store = DurableStore(tmp_path)
    assert store.recover().docs == {}
    store.open_log()
    v = np.eye(3, dtype=np.float32)
    store.append_upsert([("a", "A", {"k": 1}), ("b", "B", {})], v[:2], "v1")
    store.append_delete(["a"])
    store.append_upsert([("c", "C", {})], v[2:], "v1")
    seq = store.rotate()
    store.write_snapshot(seq, [Document("b", "B", {}), Document("c", "C", {})], v[1:], "m", "v1")
    store.append_upsert([("d", "D", {})], v[:1], "v2")
    store.close()
    (tmp_path / "snapshots" / ".tmp-leftover").mkdir()  # a snapshot cut by a crash
    state = DurableStore(tmp_path).recover()
    assert list(state.docs) == ["b", "c", "d"]
    assert state.docs["d"].model_version == "v2" and state.docs["b"].model_version == "v1"
    np.testing.assert_array_equal(state.docs["c"].vector, v[2])
    assert state.seq == 4 and state.snapshot_seq == 3 and state.replayed == 1
    assert not (tmp_path / "snapshots" / ".tmp-leftover").exists()
    assert len(list((tmp_path / "wal").glob("*.log"))) == 1  # covered segments removed


VECTOR = np.ones((1, 2), np.float32)


def store_holding_a(tmp_path) -> DurableStore:
    """An open store whose log holds one acknowledged upsert, document "a" (seq 1)."""
    store = DurableStore(tmp_path)
    store.recover()
    store.open_log()
    assert store.append_upsert([("a", "A", {})], VECTOR, "v1") == 1
    return store


def test_store_cuts_a_torn_tail_but_refuses_corruption_in_the_middle(tmp_path):
    store_holding_a(tmp_path).close()
    (segment,) = (tmp_path / "wal").glob("*.log")
    good = segment.stat().st_size
    with open(segment, "ab") as f:
        f.write(b"\x40\x00\x00\x00garbage")  # a frame cut by kill -9
    state = DurableStore(tmp_path).recover()
    assert list(state.docs) == ["a"] and state.truncated_bytes > 0 and segment.stat().st_size == good
    # damage inside a segment that is followed by another one: refuse rather than lose data silently
    data = bytearray(segment.read_bytes())
    data[10] ^= 0xFF
    segment.write_bytes(bytes(data))
    (tmp_path / "wal" / f"{99:020d}.log").write_bytes(b"")
    with pytest.raises(StoreError, match="corrupt"):
        DurableStore(tmp_path).recover()


def test_store_cuts_a_zero_filled_tail(tmp_path):
    """What a power cut can leave: zeros after the last frame (length 0 passes a CRC check)."""
    store_holding_a(tmp_path).close()
    (segment,) = (tmp_path / "wal").glob("*.log")
    with open(segment, "ab") as f:
        f.write(b"\x00" * 64)
    state = DurableStore(tmp_path).recover()
    assert list(state.docs) == ["a"] and state.truncated_bytes == 64


@pytest.mark.parametrize("error", [errno.ENOSPC, errno.EIO], ids=["disk_full", "io_error"])
def test_a_failed_append_loses_no_later_acknowledged_write(tmp_path, error):
    """A half-written frame left in the log would cut every later (acknowledged) record at the next
    start. Disk full: the frame is cut and later writes go on; an I/O error: writes are refused
    (and /health fails) until a restart recovers from the disk."""
    store = store_holding_a(tmp_path)
    store._file = FailingLog(store._file, error)
    with pytest.raises(StoreError, match=os.strerror(error)):
        store.append_upsert([("b", "B", {})], VECTOR, "v1")
    if error == errno.ENOSPC:
        assert store.broken is None
        assert store.append_upsert([("c", "C", {})], VECTOR, "v1") == 2
        acknowledged = ["a", "c"]
    else:
        assert store.broken
        with pytest.raises(StoreError, match="refuses writes until a restart"):
            store.append_upsert([("c", "C", {})], VECTOR, "v1")
        acknowledged = ["a"]
    store.close()
    state = DurableStore(tmp_path).recover()
    assert list(state.docs) == acknowledged and state.truncated_bytes == 0


def test_a_torn_frame_that_a_new_segment_follows_is_cut_not_fatal(tmp_path):
    """A failed append whose cut also failed leaves half a frame, then a snapshot's rotate starts a new
    segment: the torn record was never acknowledged (the next segment starts at its seq), so recovery and
    feedback reads cut it instead of refusing to start."""
    store = store_holding_a(tmp_path)
    (first,) = (tmp_path / "wal").glob("*.log")
    with open(first, "ab") as f:
        f.write(b"\x40\x00\x00\x00half a frame")
    store.rotate()
    store.append_upsert([("c", "C", {})], VECTOR, "v1")
    store.append_feedback({"query": "c?", "label": "positive"})
    store.close()
    assert [r["query"] for r in DurableStore(tmp_path).read_feedback()] == ["c?"]
    state = DurableStore(tmp_path).recover()
    assert list(state.docs) == ["a", "c"] and state.truncated_bytes > 0 and state.seq == 3


# ------------------------------------------------------------------------------------------- backends
def test_cuda_that_cannot_start_is_an_error_not_a_silent_cpu_fallback(exported_bundle, monkeypatch):
    """onnxruntime answers a CUDA provider it cannot start with a log line and a CPU session; asked for
    cuda, the backend must refuse instead (a pod holding a GPU would compute on its CPUs)."""
    import onnxruntime as ort

    from service.backends.base import BackendError
    from service.backends.onnx import OnnxBackend
    from service.model import spec_from_bundle

    registry, name = exported_bundle
    spec = spec_from_bundle(Settings.from_sources(["--registry", str(registry), "--name", name, "--device", "cpu"],
                                                  env={}))
    real = ort.get_available_providers()
    # a GPU build on a node whose CUDA libraries do not load: the provider is listed, the session lacks it
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", *real])
    with pytest.raises(BackendError, match="could not start its CUDA provider"):
        OnnxBackend(spec, device="cuda", threads=1)
    # auto keeps working on the CPU, and says so in /info (device)
    assert OnnxBackend(spec, device="auto", threads=1).device == "cpu"


# ------------------------------------------------------------------------------------------- imports
def test_serving_imports_no_torch():
    code = ("import sys, service.app, service.__main__, service.engine, service.model\n"
            "bad = [m for m in ('torch', 'sentence_transformers', 'transformers') if m in sys.modules]\n"
            "assert not bad, bad\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
