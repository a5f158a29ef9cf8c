"""The document-collection interface on both engines: the same checks on FAISS (in process) and on
Milvus (a real Milvus Lite engine in a local file), and Milvus' model switch (re-embed + alias)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from service.collection import DocumentCollection
from service.documents import Document
from service.errors import IndexUnavailable, Unprocessable
from service.index import Collection, IndexConfig
from service.settings import Settings

pytest.importorskip("pymilvus")
pytest.importorskip("milvus_lite")

DIM = 16
BACKENDS = ("faiss", "milvus")
ROOT = Path(__file__).resolve().parents[1]


def unit(rng, n: int, dim: int = DIM) -> np.ndarray:
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def milvus_settings(tmp_path, **overrides) -> Settings:
    return Settings.build(index="milvus", milvus_uri=str(tmp_path / "milvus.db"), name="test-model",
                          milvus_index_type="FLAT", **overrides)


@pytest.fixture(params=BACKENDS)
def make(request, tmp_path):
    """``make(version)`` → an empty collection of that model version on the backend under test."""
    stores = []

    def build(version: str = "v0001") -> DocumentCollection:
        if request.param == "faiss":
            return Collection(DIM, IndexConfig(kind="flat"), version)
        from service.milvus import MilvusStore

        if not stores:
            stores.append(MilvusStore(milvus_settings(tmp_path)))
        return stores[0].open(version, DIM)

    build.backend = request.param
    yield build
    for store in stores:
        store.close()


DOCS = [Document("a", "Ankara başkenttir.", {"lang": "tr", "n": 1, "tags": ["city", "capital"]}),
        Document("b", "Paris is a city.", {"lang": "en", "n": 2, "tags": ["city"]}),
        Document("c", 'Quote " and back\\slash', {"lang": "en", "odd": 'x"y\\z', "flag": True}),
        Document("d", "Kediler uyur.", {"lang": "tr", "tags": ["pets"], "ünï": "çöğ"})]


def test_upsert_get_delete_len(make):
    c = make()
    rng = np.random.default_rng(0)
    c.upsert(DOCS, unit(rng, 4))
    assert len(c) == 4 and c.get("zz") is None
    assert c.get("c") == DOCS[2]
    c.upsert([Document("b", "replaced", {}), Document("e", "first", {}), Document("e", "second", {"k": 1})],
             unit(rng, 3))
    assert len(c) == 5 and c.get("b").text == "replaced" and c.get("e") == Document("e", "second", {"k": 1})
    assert c.delete(["a", "nope", "a"]) == ["a"] and c.get("a") is None and len(c) == 4
    assert sorted(d.id for batch in c.documents(2) for d in batch) == ["b", "c", "d", "e"]
    info = c.info()
    assert info["documents"] == 4 and info["model_version"] == "v0001" and info["backend"] == make.backend


def test_search_equals_exact_faiss(make):
    """Same vectors, same queries: the same top-10 ids and scores as exact inner-product search."""
    import faiss

    rng = np.random.default_rng(1)
    n = 2000
    vectors = unit(rng, n)
    c = make()
    for start in range(0, n, 500):
        c.upsert([Document(f"d{i}", f"text {i}", {"shard": i % 4}) for i in range(start, start + 500)],
                 vectors[start:start + 500])
    c.delete([f"d{i}" for i in range(0, n, 50)])
    alive = np.array([i for i in range(n) if i % 50], dtype=np.int64)
    exact = faiss.IndexFlatIP(DIM)
    exact.add(vectors[alive])
    queries = unit(rng, 20)
    scores, rows = exact.search(queries, 10)
    hits = c.search(queries, 10)
    for q in range(len(queries)):
        assert [h.doc.id for h in hits[q]] == [f"d{alive[r]}" for r in rows[q]]
        np.testing.assert_allclose([h.score for h in hits[q]], scores[q], atol=1e-4)
    filtered = c.search(queries[:3], 5, where={"shard": [1, 3]})
    for q, row in enumerate(filtered):
        expect = [i for i in alive if i % 4 in (1, 3)]
        best = sorted(expect, key=lambda i: -float(vectors[i] @ queries[q]))[:5]
        assert [h.doc.id for h in row] == [f"d{i}" for i in best]


@pytest.mark.parametrize("where, expected", [
    ({"lang": "tr"}, {"a", "d"}),
    ({"lang": ["en", "xx"]}, {"b", "c"}),
    ({"tags": "city"}, {"a", "b"}),  # a list value contains it
    ({"tags": ["pets", "capital"]}, {"a", "d"}),
    ({"tags": "city", "lang": "en"}, {"b"}),  # every key must match
    ({"n": 2}, {"b"}),
    ({"odd": 'x"y\\z'}, {"c"}),  # quoting survives the Milvus expression
    ({"flag": True}, {"c"}),
    ({"ünï": "çöğ"}, {"d"}),
    ({"lang": "xx"}, set()),
    ({"lang": []}, set()),
    ({"missing": 1}, set()),
])
def test_metadata_filters(make, where, expected):
    c = make()
    c.upsert(DOCS, unit(np.random.default_rng(2), 4))
    query = unit(np.random.default_rng(3), 1)
    assert {h.doc.id for h in c.search(query, 10, where=where)[0]} == expected


def test_pymilvus_is_imported_only_for_the_milvus_backend():
    code = ("import sys, service.__main__, service.http, service.engine, service.index_bundle\n"
            "assert 'pymilvus' not in sys.modules and 'milvus_lite' not in sys.modules\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_index_settings():
    from service.settings import SettingsError

    assert Settings.from_sources([], env={"QAEMBED_INDEX": "faiss"}).index == "auto"
    s = Settings.from_sources([], env={"QAEMBED_INDEX": "milvus", "QAEMBED_MILVUS_URI": "http://m:19530",
                                       "QAEMBED_MILVUS_TOKEN": "user:secret-pw"})
    assert s.index == "milvus" and "secret-pw" not in repr(s) and s.public()["milvus_token"] is True
    for env in ({"QAEMBED_INDEX": "milvus"}, {"QAEMBED_MILVUS_PREFIX": "bad-name"},
                {"QAEMBED_MILVUS_INDEX_TYPE": "PQ"}):
        with pytest.raises(SettingsError):
            Settings.from_sources([], env=env)


def test_milvus_refuses_what_it_cannot_store_or_match(tmp_path):
    from service.errors import TooLarge
    from service.milvus import MilvusStore

    store = MilvusStore(milvus_settings(tmp_path))
    try:
        c = store.open("v0001", DIM)
        with pytest.raises(TooLarge, match="bytes"):
            c.upsert([Document("big", "ş" * 40_000, {})], unit(np.random.default_rng(0), 1))
        with pytest.raises(Unprocessable, match="null"):
            c.search(unit(np.random.default_rng(0), 1), 3, where={"k": None})
    finally:
        store.close()


def test_milvus_unreachable_is_a_clear_503():
    from service.milvus import MilvusStore

    settings = Settings.build(index="milvus", milvus_uri="http://127.0.0.1:9", name="m")
    with pytest.raises(IndexUnavailable, match="milvus at http://127.0.0.1:9"):
        MilvusStore(settings).ping()


def test_milvus_model_switch_reembeds_catches_up_and_moves_the_alias(tmp_path):
    """v1 serves; v2 is filled by "re-embedding" (here: a deterministic fake model); writes made on v1
    during and after the copy reach v2, deletes are reconciled, the alias switches, v1 refuses writes."""
    from service.milvus import MilvusStore
    from service.storage.milvus import fill

    store = MilvusStore(milvus_settings(tmp_path))
    rng = np.random.default_rng(4)
    table = {}

    async def embed_v2(texts):  # "model v2": a fixed random vector per text
        return np.stack([table.setdefault(t, unit(rng, 1)[0]) for t in texts])

    try:
        v1 = store.open("v0001", DIM)
        store.switch(v1)
        v1.upsert([Document(f"d{i}", f"text {i}", {"i": i}) for i in range(300)], unit(rng, 300))
        v2 = store.open("v0002", DIM)
        assert v2.properties()["qaembed.state"] == "building" and store.serving() == v1.name
        copied = asyncio.run(fill(v1, v2, embed_v2, batch_size=64))
        assert copied == 300 and len(v2) == 300
        # writes on v1 after the copy (a replica still on the old model), then the switch
        v1.upsert([Document("d5", "text 5 edited", {"i": 5}), Document("late", "late text", {})], unit(rng, 2))
        v1.delete(["d7"])  # deletes reach every version's collection at once
        assert v2.get("d7") is None
        store.switch(v2)
        assert store.serving() == v2.name and v1.properties()["qaembed.state"] == "retired"
        assert asyncio.run(fill(v1, v2, embed_v2)) == 2  # the catch-up: only what changed
        assert v2.get("d5").text == "text 5 edited" and v2.get("late") is not None and len(v2) == 300
        hit = v2.search(table["late text"][None, :], 1)[0][0]
        assert hit.doc.id == "late" and hit.score == pytest.approx(1.0, abs=1e-5)  # v2 holds v2's vectors
        with pytest.raises(IndexUnavailable, match="moved to"):
            v1.upsert([Document("x", "too late", {})], unit(rng, 1))
        # rolling back to v1: it was retired, so it is checked in full against v2 (deletes included)
        v2.delete(["d9"])
        v2.upsert([Document("new-in-v2", "only v2 has it", {})], unit(rng, 1))
        v1_vectors = {}

        async def embed_v1(texts):
            return np.stack([v1_vectors.setdefault(t, unit(rng, 1)[0]) for t in texts])

        asyncio.run(fill(v2, v1, embed_v1))
        store.switch(v1)
        assert v1.get("d9") is None and v1.get("new-in-v2") is not None and len(v1) == len(v2) == 300
    finally:
        store.close()


def test_milvus_feedback_round_trip_in_order(tmp_path):
    """Feedback records (any size: stored compressed, in parts) come back whole and oldest first."""
    from service.milvus import MilvusStore

    store = MilvusStore(milvus_settings(tmp_path))
    rng = np.random.default_rng(5)
    big = "".join(map(chr, rng.integers(0x41, 0x24F, 150_000)))  # incompressible: several parts
    records = [{"query": "q1", "label": "positive"}, {"query": big, "label": "negative"}, {"query": "ş3", "n": 3}]
    try:
        for record in records:
            store.add_feedback(record)
        assert store.read_feedback() == records
    finally:
        store.close()


def test_best_windows_names_the_window_nearest_a_query(make):
    """What hybrid search gives a long document only the lexical side found: the span of its best window, the
    one a dense search returns it with; documents of one window, and unknown ones, are left out."""
    rng = np.random.default_rng(3)
    windows = unit(rng, 4)
    c = make()
    c.upsert([Document("short", "Kısa.", {})], windows[3:])
    assert not c.chunked or make.backend == "milvus"  # Milvus keeps a windows collection from the start
    c.upsert([Document("long", "Birinci. İkinci. Üçüncü.", {}), Document("short", "Kısa.", {})],
             np.concatenate([windows[:3], windows[3:]]), owners=np.array([0, 0, 0, 1]),
             spans=[(0, 8), (9, 16), (17, 24), None])
    for k, span in enumerate([(0, 8), (9, 16), (17, 24)]):
        assert c.best_windows(windows[k], ["long", "short", "gone"]) == {"long": span}
        assert (c.search(windows[k:k + 1], 1)[0][0].doc.id, c.search(windows[k:k + 1], 1)[0][0].span) == (
            "long", span)
    assert c.best_windows(windows[0], []) == {} and c.chunked
    c.upsert([Document("long", "Tek pencere.", {})], windows[:1])  # one window now
    assert c.best_windows(windows[0], ["long"]) == {}
