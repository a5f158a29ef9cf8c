"""Lexical search on the backends without a local SQLite store (issue 15, item 6): Milvus's own BM25 function
(a real Milvus Lite engine, one per module: it is slow to start) and the read-only index bundle's
``lexical.sqlite3`` (real SQLite, read-only)."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest

from service.documents import Document
from service.settings import Settings
from tests.milvus_schemas import release_one_schema
from training.analyzer import Analyzer, AnalyzerError
from training.lexical import LexicalIndex

pytest.importorskip("pymilvus")
pytest.importorskip("milvus_lite")

DIM = 8
DOCS = [Document("istanbul", "İSTANBUL'daki Işıklar gece yanar.", {"lang": "tr"}),
        Document("ankara", "Ankara, Türkiye'nin başkentidir.", {"lang": "tr"}),
        Document("kahve", "Türk kahvesi cezvede pişirilir; kahve köpüklü olur.", {"lang": "tr"}),
        Document("scripts", "漢字 ไทยภาษา العربية x2a 2024", {"lang": "xx"}),
        Document("syntax", 'Bir "alıntı" AND NEAR * - içeren belge.', {"lang": "tr"})]
# longer than the model's max_seq_length: chunked into windows; the last one holds the answer
LONG = " ".join(f"Bölüm {i}: tarım, sanayi ve ticaret üzerine genel bir paragraf." for i in range(120)) + \
    " Polar bears hunt seals at the edge of the Arctic sea ice."
# user text that is query syntax to FTS5 or looks like a Milvus filter expression
SYNTAX = ['"', '"*', 'kahve" OR "x', "NEAR(kahve ankara)", "AND", "-kahve", 'id in ["ankara"]',
          "text like '%'", "kahve) or (1 == 1", "\\", "*", ""]


def unit(rng, n: int) -> np.ndarray:
    x = rng.standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def settings(path, **overrides) -> Settings:
    return Settings.build(index="milvus", milvus_uri=str(path / "milvus.db"), name="hybrid-test",
                          milvus_index_type="FLAT", **overrides)


@pytest.fixture(scope="module")
def milvus_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("milvus")


@pytest.fixture(scope="module")
def store(milvus_dir):
    from service.milvus import MilvusStore

    store = MilvusStore(settings(milvus_dir))
    yield store
    store.close()


def fts_ids(query: str, docs=DOCS, k: int = 10) -> list[str]:
    index = LexicalIndex.open(analyzer=Analyzer.named("tr"))
    index.add_many((i, d.text) for i, d in enumerate(docs))
    return [docs[key].id for key in index.search(query, k).keys]


# ------------------------------------------------------------------------------------------------ Milvus BM25
def test_milvus_bm25_sees_the_analyzer_terms_exactly(store):
    collection = store.open("v0001", DIM)
    collection.upsert(DOCS, unit(np.random.default_rng(0), len(DOCS)))
    lexical = collection.lexical()
    # Turkish lowercasing and stems: "ışıklar" finds İSTANBUL'daki Işıklar (Milvus's lowercase filter would not)
    found = lexical.search("ışıklar istanbul", k=5)
    assert found.terms == ("ışıkl", "istan") and [i for i, _ in found.hits] == ["istanbul"]
    assert found.hits[0][1] > 0  # a BM25 score, higher is better (Milvus Lite returns it negated)
    two = lexical.search("kahve ankara", k=5).hits  # "kahve" twice in its document: ranked first
    assert [i for i, _ in two] == ["kahve", "ankara"] and two[0][1] > two[1][1]
    # the same documents match as in the SQLite FTS5 index (each term one Milvus token, in every script)
    for query in ("kahve", "Türkiye başkent", "漢字", "ไทยภาษา", "العربية", "x2a", "2024", "gece köpük",
                  "İstanbul Ankara kahve"):
        assert sorted(i for i, _ in lexical.search(query, k=10).hits) == sorted(fts_ids(query)), query
    assert lexical.search("漢", k=5).hits == [] and lexical.search("ışı", k=5).hits == []  # whole terms only
    assert lexical.info()["analyzer"] == Analyzer.named("tr").describe()
    assert collection.get_many(["kahve", "nope", "ankara"]) == {"kahve": DOCS[2], "ankara": DOCS[1]}
    props = collection.properties()
    assert json.loads(props["qaembed.analyzer"]) == Analyzer.named("tr").describe()


def test_query_syntax_in_text_is_only_words(store):
    lexical = store.open("v0001", DIM).lexical()
    for query in SYNTAX:
        result = lexical.search(query, k=10)
        assert sorted(i for i, _ in result.hits) == sorted(fts_ids(query)), query
    assert lexical.search('"*', k=5).empty_query and lexical.search('"*', k=5).hits == []
    assert [i for i, _ in lexical.search('NEAR "alıntı"', k=5).hits] == ["syntax"]


def test_upsert_and_delete_keep_the_lexical_index_in_step(store):
    collection = store.open("v0001", DIM)
    rng = np.random.default_rng(1)
    collection.upsert([Document("gone", "Zürafa uzun boyludur.", {})], unit(rng, 1))
    assert [i for i, _ in collection.lexical().search("zürafa", k=5).hits] == ["gone"]
    collection.upsert([Document("gone", "Fil büyüktür.", {})], unit(rng, 1))  # replaced: old words gone
    assert collection.lexical().search("zürafa", k=5).hits == []
    assert [i for i, _ in collection.lexical().search("fil", k=5).hits] == ["gone"]
    assert collection.delete(["gone"]) == ["gone"]
    assert collection.lexical().search("fil büyük", k=5).hits == []
    # a chunked write (several windows per document): every window is searchable, BM25 has the document once
    windows = unit(rng, 3)
    collection.upsert([Document("long", "Uzun belge.", {}), Document("short", "Kısa.", {})], windows,
                      owners=np.array([0, 0, 1]), spans=[(0, 4), (3, 11), None])
    hit = collection.search(windows[1:2], k=1)[0][0]
    assert (hit.doc.id, hit.span) == ("long", (3, 11)) and hit.score == pytest.approx(1.0, abs=1e-5)
    assert (collection.search(windows[2:3], k=1)[0][0].doc.id, collection.search(windows[2:3], k=1)[0][0].span) == (
        "short", None)
    assert collection.lexical().search("uzun belge", k=5).hits[0][0] == "long"
    assert [i for i, _ in collection.lexical().search("uzun belge", k=5).hits].count("long") == 1
    assert collection.delete(["long", "short"]) == ["long", "short"]


def test_another_analyzer_on_an_existing_collection_is_refused(milvus_dir, store):
    from service.milvus import MilvusStore

    store.open("v0001", DIM)
    other = MilvusStore(settings(milvus_dir, analyzer="en"))
    try:
        with pytest.raises(AnalyzerError, match="analyzer"):
            other.open("v0001", DIM)
        newer = other.open("v0009", DIM)  # a new collection: fine
        assert newer.lexical().info()["analyzer"]["name"] == "en"
        # a collection another release's analyzer built: readable as a fill source, refused as this one's
        future = json.dumps({**Analyzer.named("en").describe(), "version": 99})
        other.client.alter_collection_properties(newer.name, properties={"qaembed.analyzer": future})
        assert other.attach(newer.name).analyzer is None
        with pytest.raises(AnalyzerError, match="another release"):
            other.open("v0009", DIM)
    finally:
        other.close()


def test_previous_release_collection_is_refilled_with_bm25(milvus_dir, store):
    """A collection made by the previous release (no BM25 field) keeps serving until a new collection of the
    same version, with BM25, is filled from it; then the alias moves and lexical search works."""
    from service.milvus import MilvusStore
    from service.storage.milvus import fill

    old_settings = Settings.build(index="milvus", milvus_uri=str(milvus_dir / "milvus.db"), name="old-model",
                                  milvus_index_type="FLAT")
    legacy = MilvusStore(old_settings)
    name = legacy.collection_name("v0003")
    schema, index = release_one_schema(legacy.client, DIM)
    legacy.client.create_collection(name, schema=schema, index_params=index, consistency_level="Strong",
                                    properties={"qaembed.model_version": "v0003", "qaembed.state": "building"})
    rng = np.random.default_rng(2)
    vectors = unit(rng, len(DOCS))
    legacy.client.insert(name, [{"id": d.id, "text": d.text, "metadata": d.metadata, "updated_at": 1,
                                 "vector": v.tolist()} for d, v in zip(DOCS, vectors)])
    old = legacy.attach(name)
    legacy.switch(old)
    assert old.analyzer is None
    with pytest.raises(ValueError, match="no BM25 field"):
        old.lexical()

    new = legacy.open("v0003", DIM)  # same model version: a new collection beside the old one
    assert new.name == name + "_bm25" and new.analyzer == Analyzer.named("tr")
    by_text = {d.text: v for d, v in zip(DOCS, vectors)}

    async def embed(texts):  # the same model: the same vectors
        return np.stack([by_text[t] for t in texts])

    assert asyncio.run(fill(old, new, embed)) == len(DOCS)
    legacy.switch(new)
    assert legacy.serving() == new.name and len(new) == len(DOCS)
    assert [i for i, _ in new.lexical().search("ışıklar", k=3).hits] == ["istanbul"]
    hits = new.search(vectors[1:2], k=1)[0]
    assert hits[0].doc.id == "ankara" and hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert legacy.open("v0003", DIM).name == new.name  # the next start finds it again
    legacy.close()


# ------------------------------------------------------------------------------------------------ index bundles
@pytest.fixture(scope="module")
def bundles(exported_bundle, example_data, tmp_path_factory):
    """A registry with a model, an index bundle built by this release (v0001) and the same bundle as the
    previous release published it, without ``lexical.sqlite3`` (v0002)."""
    import shutil

    from export.bundle import open_bundle
    from export.registry import new_staging_dir, publish
    from service.index_bundle import build

    source, model = exported_bundle
    registry = tmp_path_factory.mktemp("bundles") / "registry"
    shutil.copytree(source / model, registry / model)
    long_file = registry.parent / "long.json"
    long_file.write_text(json.dumps([{"question": "Kutup ayıları ne avlar?", "answer": LONG}], ensure_ascii=False))
    build(registry, model, "faq", [example_data, long_file])
    first = open_bundle(registry, "faq")
    staging = new_staging_dir(registry, "faq")
    for relative in first.manifest["files"]:
        if relative != "lexical.sqlite3":
            shutil.copy2(first.path / relative, staging / relative)
    facts = {k: v for k, v in first.manifest.items() if k not in ("format", "name", "version", "created_at", "files")}
    facts["index"] = {k: v for k, v in facts["index"].items() if k != "lexical"}
    publish(staging, facts, promote=False)
    return registry, first


def test_bundle_carries_a_hashed_read_only_lexical_index(bundles, example_data):
    from export.bundle import verify_bundle
    from service.storage.bundle_lexical import BundleLexical

    registry, first = bundles
    bundle = verify_bundle(first.path)  # lexical.sqlite3 checksummed with the rest
    facts = bundle.manifest["index"]["lexical"]
    assert facts["file"] in bundle.manifest["files"] and facts["analyzer"] == Analyzer.named("tr").describe()
    pairs = json.loads(example_data.read_text())
    assert facts["documents"] == bundle.manifest["index"]["documents"] == len({p["answer"] for p in pairs}) + 1
    index = bundle.manifest["index"]
    assert index["rows"] > index["documents"] and "windows.json" in bundle.manifest["files"]  # LONG is chunked
    assert index["chunking"]["stride"] > 0
    before = (first.path / "lexical.sqlite3").read_bytes()
    lexical = BundleLexical(first.path / facts["file"], facts)
    try:
        docs = {json.loads(line)["text"]: json.loads(line)["id"]
                for line in (first.path / "documents.jsonl").read_text().splitlines()}
        answer = pairs[0]["answer"]
        hits = lexical.search(answer, k=3).hits
        assert hits[0][0] == docs[answer] and hits[0][1] > 0
        for query in SYNTAX:
            assert lexical.search(query, k=5).hits is not None
        assert lexical.search('"*', k=5).empty_query
    finally:
        lexical.close()
    assert (first.path / "lexical.sqlite3").read_bytes() == before  # read-only: nothing written
    assert sorted(p.name for p in first.path.iterdir() if p.name.startswith("lexical")) == ["lexical.sqlite3"]


def test_bundle_modes_through_the_service_and_an_older_bundle(bundles, example_data):
    """A replica serving the bundle answers lexical and hybrid search from lexical.sqlite3; reloaded onto the
    previous release's bundle (no lexical index) it serves dense, says why in /info, refuses lexical mode (422)
    and answers hybrid with dense only, saying so per query."""
    import httpx

    from tests.test_distributed import wait_reload
    from tests.test_service_api import ServerThread, assert_error, settings_for

    registry, first = bundles
    pairs = json.loads(example_data.read_text())
    srv = ServerThread(settings_for((registry, "faq"))).start()
    try:
        c = httpx.Client(base_url=srv.url, timeout=60)
        assert c.get("/info").json()["search"]["lexical"]["analyzer"] == Analyzer.named("tr").describe()
        answer = pairs[0]["answer"]
        r = c.post("/search", json={"query": answer, "top_k": 3, "mode": "lexical"})
        assert r.status_code == 200, r.text
        top = r.json()["results"][0]
        assert top["text"] == answer and top["lexical_score"] > 0 and top["dense_score"] is None
        hybrid = c.post("/search", json={"query": pairs[1]["question"], "top_k": 5}).json()
        assert hybrid["searched"]["mode"] == "hybrid" and hybrid["searched"]["terms"]
        assert any(h["lexical_score"] is not None for h in hybrid["results"])
        found = c.post("/search", json={"query": "What do polar bears hunt on the Arctic sea ice?", "top_k": 20,
                                        "mode": "dense"}).json()["results"]
        long_hit = next(h for h in found if h["text"] == LONG)  # scored by its best window: the last one
        assert long_hit["span"][1] == len(LONG) and long_hit["span"][0] > 0
        for query in SYNTAX:
            assert c.post("/search", json={"query": query or ".", "mode": "lexical"}).status_code == 200, query

        assert c.post("/admin/reload", json={"version": "v0002"}).status_code == 202  # the older bundle
        assert wait_reload(c)["state"] == "done"
        info = c.get("/info").json()
        assert info["model"]["version"] == "v0002" and info["search"]["lexical"]["available"] is False
        assert "no lexical index" in info["search"]["lexical"]["note"]
        err = assert_error(c.post("/search", json={"query": answer, "mode": "lexical"}), 422)
        assert "build-index" in err["message"]
        dense = c.post("/search", json={"query": answer, "top_k": 3})
        assert dense.status_code == 200 and dense.json()["results"][0]["text"] == answer
        searched = dense.json()["searched"]
        assert searched["mode"] == "dense" and "no lexical index" in searched["note"]
    finally:
        srv.stop()


def test_hybrid_and_lexical_modes_through_the_service_on_milvus(exported_bundle, example_data, tmp_path):
    import shutil

    import httpx

    from tests.test_distributed import wait_reload
    from tests.test_service_api import ServerThread, _add_version, assert_error, settings_for

    source, model = exported_bundle
    shutil.copytree(source / model, tmp_path / "registry" / model)  # private: a new version is published below
    srv = ServerThread(settings_for((tmp_path / "registry", model), corpus=[example_data], index="milvus",
                                    milvus_uri=str(tmp_path / "milvus.db"), milvus_index_type="FLAT")).start()
    try:
        c = httpx.Client(base_url=srv.url, timeout=60)
        assert c.get("/info").json()["search"]["lexical"]["engine"] == "milvus bm25"
        docs = [{"id": d.id, "text": d.text, "metadata": d.metadata} for d in DOCS]
        assert c.post("/documents", json={"documents": docs}).status_code == 200
        r = c.post("/search", json={"query": "IŞIKLAR", "mode": "lexical", "top_k": 3})
        assert r.status_code == 200, r.text
        assert [h["id"] for h in r.json()["results"]] == ["istanbul"] and r.json()["searched"]["terms"] == ["ışıkl"]
        hybrid = c.post("/search", json={"query": "İstanbul'un ışıkları", "top_k": 3, "alpha": 0.3}).json()
        assert hybrid["results"][0]["id"] == "istanbul" and hybrid["fusion"]["alpha"] == 0.3
        assert hybrid["results"][0]["lexical_score"] > 0 and hybrid["results"][0]["dense_score"] is not None
        filtered = c.post("/search", json={"query": "kahve ankara", "mode": "lexical", "filter": {"lang": "xx"}})
        assert filtered.json()["results"] == []
        for query in SYNTAX:
            for mode in ("lexical", "hybrid"):
                assert c.post("/search", json={"query": query or ".", "mode": mode}).status_code == 200, query
        assert c.delete("/documents/istanbul").status_code == 200
        assert c.post("/search", json={"query": "ışıklar", "mode": "lexical"}).json()["results"] == []
        assert_error(c.post("/search", json={"query": "x", "mode": "bm25"}), 422)

        # a model change re-embeds into a new collection: its BM25 index is filled with the documents too
        second = _add_version(tmp_path / "registry", model)
        assert c.post("/admin/reload", json={}).status_code == 202
        assert wait_reload(c)["state"] == "done"
        info = c.get("/info").json()
        assert info["index"]["collection"].endswith(second) and info["search"]["lexical"]["collection"].endswith(second)
        found = c.post("/search", json={"query": "köpüklü kahve", "mode": "lexical", "top_k": 1}).json()["results"]
        assert [h["id"] for h in found] == ["kahve"]
        assert c.post("/search", json={"query": "ışıklar", "mode": "lexical"}).json()["results"] == []
    finally:
        srv.stop()
