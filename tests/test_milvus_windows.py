"""Every window of a long document in Milvus (``service/milvus_windows.py``), on a real Milvus Lite engine: a
search returns a document once, at its best window, with that window's span; rewrites and deletes leave no
ghost windows; BM25 still sees one row per document; a re-embed carries the windows; a collection written by
the previous release (one row per document) keeps serving; and the service finds the end of a long document
through the real (exported MiniLM) model, in dense and hybrid mode, before and after a model change."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest

from service.documents import Document
from service.settings import Settings
from tests.milvus_schemas import release_one_schema
from tests.test_chunking import short_registry  # noqa: F401 - the MiniLM of max_seq_length 32 (windows of 30)
from training.chunking import WindowVectors

pytest.importorskip("pymilvus")
pytest.importorskip("milvus_lite")

DIM = 8
E = np.eye(DIM, dtype=np.float32)


def mix(*parts: tuple[float, int]) -> np.ndarray:
    v = sum(w * E[i] for w, i in parts)
    return (v / np.linalg.norm(v)).astype(np.float32)


def unit(rng) -> np.ndarray:
    v = rng.standard_normal(DIM).astype(np.float32)
    return v / np.linalg.norm(v)


# "long": five windows; only the third (k = 2) points along E[0]; "kahve", "ankara": one window each
LONG_TEXT = "Birinci kısım. İkinci kısım. Zürafa boyu üçüncü kısımda. Dördüncü kısım. Beşinci kısım."
LONG_SPANS = [(0, 14), (15, 28), (29, 55), (56, 71), (72, 86)]
LONG_VECTORS = np.stack([mix((1, 1)), mix((1, 2)), mix((0.95, 0), (0.3, 3)), mix((1, 4)), mix((1, 5))])
DOCS = [Document("long", LONG_TEXT, {"lang": "tr", "kind": "long"}),
        Document("kahve", "Türk kahvesi cezvede pişirilir.", {"lang": "tr", "kind": "short"}),
        Document("ankara", "Ankara Türkiye'nin başkentidir.", {"lang": "en", "kind": "short"})]
SHORT_VECTORS = np.stack([mix((0.6, 0), (0.8, 6)), mix((0.5, 0), (0.85, 7))])


def rows() -> tuple[np.ndarray, np.ndarray, list]:
    return (np.concatenate([LONG_VECTORS, SHORT_VECTORS]), np.array([0, 0, 0, 0, 0, 1, 2]),
            [*LONG_SPANS, None, None])


@pytest.fixture()
def store(tmp_path):
    from service.milvus import MilvusStore

    store = MilvusStore(Settings.build(index="milvus", milvus_uri=str(tmp_path / "milvus.db"), name="windows-test",
                                       milvus_index_type="FLAT"))
    yield store
    store.close()


def window_rows(collection, doc_id: str) -> list[tuple[str, int, int, int]]:
    found = collection.client.query(collection.windows.name, filter=f'doc_id == "{doc_id}"',
                                    output_fields=["window", "span_start", "span_end"])
    return sorted((r["id"], r["window"], r["span_start"], r["span_end"]) for r in found)


def test_a_long_document_is_found_once_at_its_third_window(store):
    c = store.open("v0001", DIM)
    vectors, owners, spans = rows()
    c.upsert(DOCS, vectors, owners=owners, spans=spans)
    assert len(c) == 3 and c.info()["windows"] == 7 and "best window" in c.info()["chunking"]
    assert window_rows(c, "long") == [(f"long/{k}", k, s, e) for k, (s, e) in enumerate(LONG_SPANS)]
    assert window_rows(c, "kahve") == []  # one window: its document row is all there is
    hits = c.search(E[:1], k=3)[0]
    assert [(h.doc.id, h.span) for h in hits] == [("long", (29, 55)), ("kahve", None), ("ankara", None)]
    assert hits[0].score == pytest.approx(0.95 / np.hypot(0.95, 0.3), abs=1e-5)
    assert hits[0].doc == DOCS[0] and LONG_TEXT[29:55] == "Zürafa boyu üçüncü kısımda"
    # k distinct documents although "long" has the best rows; the first window wins when it is best
    assert [(h.doc.id, h.span) for h in c.search(E[1:2], k=2)[0]][0] == ("long", (0, 14))
    assert len(c.search(E[1:2], k=2)[0]) == 2
    # filters apply to windows as to documents
    assert [h.doc.id for h in c.search(E[:1], k=3, where={"kind": "short"})[0]] == ["kahve", "ankara"]
    assert [(h.doc.id, h.span) for h in c.search(E[:1], k=3, where={"lang": "tr"})[0]] == [
        ("long", (29, 55)), ("kahve", None)]
    assert c.get("long") == DOCS[0] and sorted(d.id for b in c.documents(10) for d in b) == ["ankara", "kahve", "long"]


def test_rewrites_and_deletes_leave_no_ghost_windows(store):
    c = store.open("v0001", DIM)
    other = store.open("v0002", DIM)  # a collection being re-embedded: deletes reach it too
    vectors, owners, spans = rows()
    c.upsert(DOCS, vectors, owners=owners, spans=spans)
    other.upsert(DOCS, vectors, owners=owners, spans=spans)
    shorter = Document("long", "Yeni metin. Zürafa yok.", {"lang": "tr", "kind": "long"})
    c.upsert([shorter], np.stack([mix((1, 3)), mix((1, 4))]), owners=np.array([0, 0]), spans=[(0, 11), (12, 23)])
    assert window_rows(c, "long") == [("long/0", 0, 0, 11), ("long/1", 1, 12, 23)]
    assert c.info()["windows"] == 4 and c.get("long") == shorter
    assert "long" not in [h.doc.id for h in c.search(E[:1], k=2)[0]]  # the old third window is gone
    assert [(h.doc.id, h.span) for h in c.search(E[4:5], k=1)[0]] == [("long", (12, 23))]
    c.upsert([Document("long", "Kısa.", {})], E[5:6])  # one window now: no windows left, span None
    assert window_rows(c, "long") == [] and c.info()["windows"] == 3
    assert [(h.doc.id, h.span) for h in c.search(E[5:6], k=1)[0]] == [("long", None)]
    # a repeated id in one batch: the last one and its windows win
    c.upsert([DOCS[0], shorter], np.concatenate([LONG_VECTORS, np.stack([mix((1, 3)), mix((1, 4))])]),
             owners=np.array([0, 0, 0, 0, 0, 1, 1]), spans=[*LONG_SPANS, (0, 11), (12, 23)])
    assert [w[0] for w in window_rows(c, "long")] == ["long/0", "long/1"] and c.get("long") == shorter
    assert c.delete(["long", "nope"]) == ["long"]
    assert window_rows(c, "long") == [] and window_rows(other, "long") == [] and other.get("long") is None
    assert c.info()["windows"] == len(c) == 2 and "long" not in [h.doc.id for h in c.search(E[:1], k=5)[0]]


def test_bm25_still_sees_one_row_per_document(store):
    """The windows live apart from the BM25 rows: scores are those of the same documents stored unchunked."""
    chunked, plain = store.open("v0001", DIM), store.open("v0002", DIM)
    vectors, owners, spans = rows()
    chunked.upsert(DOCS, vectors, owners=owners, spans=spans)
    plain.upsert(DOCS, np.stack([LONG_VECTORS[0], *SHORT_VECTORS]))
    for query in ("zürafa boyu", "kahve cezve", "kısım türkiye"):
        assert chunked.lexical().search(query, 10).hits == plain.lexical().search(query, 10).hits, query
    hits = chunked.lexical().search("zürafa", 10).hits
    assert [i for i, _ in hits] == ["long"] and hits[0][1] > 0


def test_a_model_change_carries_the_windows(store):
    """``fill`` re-embeds documents through an embedder that cuts windows again: the new collection gets them
    (here the "new model" is a fake that cuts at sentence ends); reconciled deletes take the windows too."""
    from service.storage.milvus import fill

    old = store.open("v0001", DIM)
    store.switch(old)
    vectors, owners, spans = rows()
    old.upsert(DOCS, vectors, owners=owners, spans=spans)
    table: dict[str, np.ndarray] = {}
    rng = np.random.default_rng(0)

    async def embed(texts: list[str]) -> WindowVectors:
        cut = [[(s, e) for s, e in LONG_SPANS] if t == LONG_TEXT else [None] for t in texts]
        owners = np.array([i for i, spans in enumerate(cut) for _ in spans], dtype=np.int64)
        spans = [s for spans in cut for s in spans]
        pieces = [t[s[0]:s[1]] if s else t for t, s in zip([texts[o] for o in owners], spans, strict=True)]
        vectors = np.stack([table.setdefault(p, unit(rng)) for p in pieces])
        return WindowVectors(vectors, owners, spans, len(texts))

    new = store.open("v0002", DIM)
    assert asyncio.run(fill(old, new, embed)) == 3
    assert new.info()["windows"] == 7 and len(window_rows(new, "long")) == 5
    third = table[LONG_TEXT[29:55]]
    hits = new.search(third[None, :], k=1)[0]
    assert (hits[0].doc.id, hits[0].span) == ("long", (29, 55)) and hits[0].score == pytest.approx(1.0, abs=1e-5)
    store.switch(new)
    new.delete(["kahve"])  # the old model's collection loses it too; then roll back: a full fill from new
    old.client.upsert(old.name, [{"id": "stray", "text": "x", "metadata": {}, "updated_at": 1,
                                  "vector": E[0].tolist(), "terms": "x"}])
    old.windows.write([Document("stray", "x y")], WindowVectors(np.stack([E[0], E[1]]), np.array([0, 0]),
                                                                [(0, 1), (2, 3)], 1))
    store.client.alter_collection_properties(old.name, properties={"qaembed.state": "retired"})
    asyncio.run(fill(new, old, embed))
    assert old.get("stray") is None and window_rows(old, "stray") == [] and len(old) == 2


def test_a_previous_release_collection_keeps_serving(store):
    """A collection the previous release wrote (one row per document, BM25 field, no windows collection) is
    served as it is: its documents are one window each until written again, then they get their windows."""
    from pymilvus import DataType, Function, FunctionType

    from service import milvus_lexical as bm25
    from training.analyzer import Analyzer

    name = store.collection_name("v0001")
    schema, index = release_one_schema(store.client, DIM)  # + BM25: the previous release's
    schema.add_field("terms", DataType.VARCHAR, max_length=65535, enable_analyzer=True,
                     analyzer_params={"tokenizer": "standard"})
    schema.add_field("sparse", DataType.SPARSE_FLOAT_VECTOR)
    schema.add_function(Function(name="bm25", function_type=FunctionType.BM25, input_field_names=["terms"],
                                 output_field_names=["sparse"]))
    index.add_index("sparse", index_type="SPARSE_INVERTED_INDEX", metric_type="BM25")
    tr = Analyzer.named("tr")
    store.client.create_collection(name, schema=schema, index_params=index, consistency_level="Strong",
                                   properties={"qaembed.model_version": "v0001", "qaembed.state": "building",
                                               "qaembed.analyzer": json.dumps(tr.describe(), sort_keys=True)})
    firsts = np.stack([LONG_VECTORS[0], *SHORT_VECTORS])
    store.client.insert(name, [{"id": d.id, "text": d.text, "metadata": d.metadata, "updated_at": 1,
                                "vector": v.tolist(), "terms": bm25.terms_text(tr, d.text)}
                               for d, v in zip(DOCS, firsts, strict=True)])
    store.client.load_collection(name)
    store.switch(store.attach(name))
    assert store.attach(name).windows is None

    c = store.open("v0001", DIM)  # no refill: the same collection, a windows collection added beside it
    assert c.name == name and store.serving() == name and c.windows is not None
    assert len(c) == 3 and c.info()["windows"] == 3 and store.versions() == [name]
    assert [(h.doc.id, h.span) for h in c.search(E[1:2], k=1)[0]] == [("long", None)]  # its first window only
    assert [h.doc.id for h in c.search(E[:1], k=2)[0]] == ["kahve", "ankara"]
    assert [i for i, _ in c.lexical().search("zürafa", 5).hits] == ["long"]
    vectors, owners, spans = rows()
    c.upsert(DOCS[:1], LONG_VECTORS, owners=owners[:5], spans=spans[:5])  # written again: now with windows
    assert c.info()["windows"] == 7 and [(h.doc.id, h.span) for h in c.search(E[:1], k=1)[0]] == [
        ("long", (29, 55))]
    assert c.delete(["long"]) == ["long"] and window_rows(c, "long") == []


# ------------------------------------------------------------------------------------------------ the service
def test_the_service_finds_the_end_of_a_long_document_in_milvus(short_registry, tmp_path):  # noqa: F811
    import shutil

    import httpx

    from tests.test_chunking import DOCS as CHUNKED
    from tests.test_chunking import LONG, QUERY, SHORT
    from tests.test_distributed import wait_reload
    from tests.test_service_api import ServerThread, _add_version, settings_for

    registry, name = short_registry
    shutil.copytree(registry / name, tmp_path / "registry" / name)  # private: a new version is published below
    srv = ServerThread(settings_for((tmp_path / "registry", name), index="milvus",
                                    milvus_uri=str(tmp_path / "milvus.db"), milvus_index_type="FLAT")).start()

    def found(c, mode: str) -> list[dict]:
        r = c.post("/search", json={"query": QUERY, "top_k": 4, "mode": mode})
        assert r.status_code == 200, r.text
        return r.json()["results"]

    try:
        c = httpx.Client(base_url=srv.url, timeout=60)
        assert c.post("/documents", json={"documents": CHUNKED}).status_code == 200
        index = c.get("/info").json()["index"]
        windows = index["windows"]
        assert index["documents"] == len(CHUNKED) and windows > 10 + len(SHORT) and "best window" in index["chunking"]
        for mode in ("dense", "hybrid"):
            results = found(c, mode)
            assert results[0]["id"] == "long" and len({r["id"] for r in results}) == len(results) == 4, mode
            start, end = results[0]["span"]
            assert "Zürafaların boyu" in LONG[start:end] and start > 0, mode  # a late window, not the first
            assert all(r["span"] is None for r in results[1:]), mode
        span = found(c, "dense")[0]["span"]
        lexical = c.post("/search", json={"query": QUERY, "mode": "lexical", "top_k": 4}).json()["results"]
        assert [r["id"] for r in lexical].count("long") == 1

        # a model change re-embeds every document into the new collection, cut into windows again
        second = _add_version(tmp_path / "registry", name)
        assert c.post("/admin/reload", json={}).status_code == 202
        assert wait_reload(c)["state"] == "done"
        index = c.get("/info").json()["index"]
        assert index["collection"].endswith(second) and index["windows"] == windows
        assert found(c, "dense")[0]["id"] == "long" and found(c, "dense")[0]["span"] == span
        assert c.delete("/documents/long").status_code in (200, 204)
        assert c.get("/info").json()["index"]["windows"] == len(SHORT)
        assert "long" not in {r["id"] for r in found(c, "dense")}
    finally:
        srv.stop()
