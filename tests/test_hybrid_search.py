"""Hybrid search through the real /search: a real server on loopback over the exported MiniLM bundle, real FAISS,
real SQLite FTS5 (in memory, and in a data directory across a restart), a real reload to another model version.

Modes (hybrid, dense, lexical), α at both ends, RRF, component scores, FTS5 syntax in user text never interpreted,
a query with no words left after analysis, filters on the lexical side, 422s, and where α comes from (/info).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import threading
import time

import httpx
import pytest

from service.model import open_serving_model
from tests.test_service_api import ServerThread, assert_error, settings_for
from training.analyzer import Analyzer
from training.fusion import rrf_fusion, weighted_fusion

DOCS = [
    {"id": "ankara", "text": "Ankara, Türkiye Cumhuriyeti'nin başkentidir ve ikinci büyük şehridir.",
     "metadata": {"lang": "tr", "topic": "city"}},
    {"id": "capital-en", "text": "Ankara is the capital of Turkey.", "metadata": {"lang": "en", "topic": "city"}},
    {"id": "istanbul", "text": "İstanbul Boğazı Karadeniz'i Marmara Denizi'ne bağlar.",
     "metadata": {"lang": "tr", "topic": "city"}},
    {"id": "kizilcahamam", "text": "Kızılcahamam, kaplıcaları ve Soğuksu Milli Parkı ile bilinen bir ilçedir.",
     "metadata": {"lang": "tr", "topic": "nature"}},
    {"id": "kedi", "text": "Bir kedi günde on altı saate kadar uyuyabilir.",
     "metadata": {"lang": "tr", "topic": "pets"}},
    {"id": "kopek", "text": "Köpekler insanın en eski evcil hayvan dostudur.",
     "metadata": {"lang": "tr", "topic": "pets", "tags": ["dog", "pet"]}},
    {"id": "near", "text": "The word NEAR is a proximity operator in some search engines.",
     "metadata": {"lang": "en", "topic": "search"}},
    {"id": "kahve", "text": "Türk kahvesi cezvede, köpüklü ve yavaş pişirilir.",
     "metadata": {"lang": "tr", "topic": "food"}},
    {"id": "cay", "text": "Çay Rize'de yetişir ve demlikte demlenir.", "metadata": {"lang": "tr", "topic": "food"}},
]


def ids(hits: list[dict]) -> list[str]:
    return [h["id"] for h in hits]


@pytest.fixture(scope="module")
def server(exported_bundle, example_data):
    """In memory (no --data_dir): the example corpus plus DOCS; top_k up to the fusion's candidate depth."""
    srv = ServerThread(settings_for(exported_bundle, corpus=[example_data], max_top_k=100)).start()
    with httpx.Client(base_url=srv.url, timeout=60) as c:
        assert c.post("/documents", json={"documents": DOCS}).status_code == 200
    yield srv
    srv.stop()


@pytest.fixture()
def client(server):
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


def search(c: httpx.Client, query: str, **body) -> dict:
    r = c.post("/search", json={"query": query, **body})
    assert r.status_code == 200, r.text
    return r.json()


def test_lexical_finds_an_exact_turkish_word_without_the_model(client, server):
    inference = server.metrics.inference_duration.collect()[0].samples
    before = next(s.value for s in inference if s.name.endswith("_count"))
    found = search(client, "KIZILCAHAMAM nerede?", mode="lexical", top_k=3)
    after = next(s.value for s in server.metrics.inference_duration.collect()[0].samples if s.name.endswith("_count"))
    assert after == before  # the model did not run
    top = found["results"][0]
    assert top["id"] == "kizilcahamam" and top["dense_score"] is None and top["lexical_score"] == top["score"] > 0
    assert found["mode"] == "lexical" and found["fusion"] is None
    assert found["searched"] == {"mode": "lexical", "terms": ["kızıl", "nered"], "note": None}
    # the same word through hybrid search, any α that gives the lexical side weight
    assert ids(search(client, "Kızılcahamam nerede?", alpha=0.3)["results"])[0] == "kizilcahamam"


def test_alpha_one_is_the_dense_order_and_zero_the_lexical_order(client):
    q = "Ankara Türkiye'nin başkenti mi?"
    dense = search(client, q, mode="dense", top_k=10)["results"]
    lexical = search(client, q, mode="lexical", top_k=10)["results"]
    assert len(lexical) >= 2 and all(h["lexical_score"] is None and h["dense_score"] == h["score"] for h in dense)
    assert ids(search(client, q, alpha=1.0, top_k=10)["results"]) == ids(dense)
    at_zero = search(client, q, alpha=0.0, top_k=10)
    assert ids(at_zero["results"])[:len(lexical)] == ids(lexical)
    assert at_zero["fusion"] == {"method": "weighted", "alpha": 0.0, "alpha_source": "request", "candidates": 100,
                                 "k": None}


def test_fused_scores_are_training_fusion_of_the_component_scores(client):
    """The service fuses exactly as training.fusion does over each side's best 100 (what α was chosen with)."""
    q = "Türk kahvesi nasıl pişirilir?"
    dense = search(client, q, mode="dense", top_k=100)["results"]
    lexical = search(client, q, mode="lexical", top_k=100)["results"]
    ranked_dense = [(h["id"], h["score"]) for h in dense]
    ranked_lexical = [(h["id"], h["score"]) for h in lexical]
    for body, expected in (({"alpha": 0.3}, weighted_fusion(ranked_dense, ranked_lexical, 0.3, limit=10)),
                           ({"fusion": "rrf"}, rrf_fusion(ranked_dense, ranked_lexical, limit=10))):
        found = search(client, q, top_k=10, **body)
        hits = found["results"]
        assert ids(hits) == [f.key for f in expected], body
        for hit, fused in zip(hits, expected, strict=True):
            assert hit["score"] == pytest.approx(fused.score, abs=1e-6)
            assert hit["lexical_score"] == fused.lexical_score  # the same BM25, bit for bit
            assert (hit["dense_score"] is None) == (fused.dense_score is None)
            if fused.dense_score is not None:
                assert hit["dense_score"] == pytest.approx(fused.dense_score, abs=1e-5)
            assert hit["span"] is None  # short documents: one window
        assert found["searched"]["mode"] == "hybrid" and found["searched"]["terms"]
    assert search(client, q, fusion="rrf")["fusion"] == {"method": "rrf", "k": 60, "candidates": 100, "alpha": None,
                                                         "alpha_source": None}
    assert ids(search(client, q, top_k=3)["results"])[0] == "kahve"


@pytest.mark.parametrize("query", ['"kedi', "kedi*", "NEAR(kedi köpek)", "kedi AND köpek", "-kedi", "kedi NOT köpek",
                                   "topic:pets kedi", "(kedi OR", "kedi) \"\" ((", "^kedi", "kedi + köpek:"])
def test_fts5_syntax_in_the_query_is_only_words(client, query):
    for mode in ("lexical", "hybrid"):
        found = search(client, query, mode=mode, top_k=20)
        assert found["searched"]["mode"] == mode and "kedi" in found["searched"]["terms"]
        assert "kedi" in ids(found["results"])  # never excluded, prefixed or column-filtered
    if "köpek" in query:  # NOT / AND / NEAR are no operators: the other word is looked up too
        assert "kopek" in ids(search(client, query, mode="lexical", top_k=20)["results"])


def test_a_literal_operator_word_is_found_as_a_word(client):
    assert ids(search(client, "NEAR", mode="lexical")["results"]) == ["near"]
    assert ids(search(client, "AND OR NOT NEAR", mode="lexical")["results"])[0] == "near"


def test_a_query_without_words_searches_dense_only_and_says_so(client):
    found = search(client, "?!", top_k=4)
    assert len(found["results"]) == 4 and found["searched"]["mode"] == "dense"
    assert found["searched"]["terms"] == [] and "dense search only" in found["searched"]["note"]
    assert all(h["lexical_score"] is None and h["score"] == h["dense_score"] for h in found["results"])
    lexical = search(client, "?!", mode="lexical")
    assert lexical["results"] == [] and "no hits" in lexical["searched"]["note"]
    both = client.post("/search", json={"queries": ["?!", "kedi"], "top_k": 2}).json()
    assert [s["mode"] for s in both["searched"]] == ["dense", "hybrid"] and len(both["results"]) == 2


@pytest.mark.parametrize("body, field", [({"mode": "fuzzy"}, "mode"), ({"alpha": 1.5}, "alpha"),
                                         ({"alpha": -0.1}, "alpha"), ({"alpha": "0.5"}, "alpha"),
                                         ({"alpha": True}, "alpha"), ({"alpha": [0.5]}, "alpha"),
                                         ({"fusion": "max"}, "fusion"), ({"mode": None}, "mode")])
def test_bad_mode_alpha_or_fusion_is_a_422_naming_the_field(client, body, field):
    err = assert_error(client.post("/search", json={"query": "kedi", **body}), 422)
    assert err["type"] == "validation_error" and err["message"].startswith(field), err


def test_nan_alpha_is_a_422(client):
    r = client.post("/search", content=b'{"query": "kedi", "alpha": NaN}', headers={"content-type": "application/json"})
    assert r.status_code in (400, 422) and "Traceback" not in r.text


def test_filters_apply_to_the_lexical_side(client):
    q = "Ankara başkent kedi köpek"
    unfiltered = ids(search(client, q, mode="lexical", top_k=20)["results"])
    assert {"ankara", "capital-en", "kedi", "kopek"} <= set(unfiltered)
    en = search(client, q, mode="lexical", top_k=20, filter={"lang": "en"})["results"]
    assert ids(en) == ["capital-en"]
    pets = search(client, q, top_k=20, filter={"topic": ["pets"]})["results"]
    assert set(ids(pets)) == {"kedi", "kopek"} and all(h["metadata"]["topic"] == "pets" for h in pets)
    assert [h["lexical_score"] is not None for h in pets] == [True, True]
    assert ids(search(client, "köpek kedi", mode="lexical", filter={"tags": "dog"})["results"]) == ["kopek"]
    assert search(client, q, mode="lexical", filter={"lang": "xx"})["results"] == []


def test_in_memory_lexical_index_follows_replacements_and_deletes(client):
    assert client.post("/documents", json={"documents": [{"id": "tmp", "text": "Zürafalar uzun boyunludur."}]}
                       ).status_code == 200
    assert ids(search(client, "zürafa", mode="lexical")["results"]) == ["tmp"]
    assert client.post("/documents", json={"documents": [{"id": "tmp", "text": "Penguenler uçamaz."}]}
                       ).status_code == 200
    assert search(client, "zürafa", mode="lexical")["results"] == []
    assert ids(search(client, "penguen", mode="lexical")["results"]) == ["tmp"]
    assert client.delete("/documents/tmp").status_code == 200
    assert search(client, "penguen", mode="lexical")["results"] == []
    assert "tmp" not in ids(search(client, "penguen", top_k=50)["results"])


def test_a_long_document_is_one_hit_with_its_best_window(client):
    """Chunked on ingest (~1,800 characters: over max_seq_length, under max_input_chars): hybrid returns the
    document once, with the span of its best window (from the dense side)."""
    filler = " ".join(f"Anadolu'nun {i}. köyünde buğday, arpa ve mercimek ekilir." for i in range(30))
    text = filler + " En sonda Zeytindağı'nın yamaçlarında eski bir zeytinlik vardır."
    assert client.post("/documents", json={"documents": [{"id": "long", "text": text}]}).status_code == 200
    try:
        hits = search(client, "Zeytindağı yamaçlarında zeytinlik", top_k=50)["results"]
        assert ids(hits).count("long") == 1
        hit = next(h for h in hits if h["id"] == "long")
        assert hit["lexical_score"] is not None and hit["dense_score"] is not None
        start, end = hit["span"]
        assert 0 <= start < end <= len(text) and end - start < len(text)  # a window, not the whole text
        assert search(client, "Zeytindağı", mode="lexical")["results"][0]["span"] is None  # no vectors there
    finally:
        client.delete("/documents/long")


def test_a_long_document_only_the_lexical_side_found_still_has_its_best_window(client, monkeypatch):
    """Each side lists only ``top_k`` here (candidate depth 1), so the dense side leaves the long document out;
    fused in by its lexical score, it carries the span of the window nearest the query, the one dense mode
    returns it with."""
    import service.search

    filler = " ".join(f"Anadolu'nun {i}. köyünde buğday, arpa ve mercimek ekilir." for i in range(30))
    text = filler + " En sonda Zeytindağı'nın yamaçlarında eski bir zeytinlik vardır."
    assert client.post("/documents", json={"documents": [{"id": "long", "text": text}]}).status_code == 200
    query = "Zeytindağı kedisi köpeği"  # lexically only "zeyti" matches, in the long document alone
    try:
        dense_span = next(h["span"] for h in search(client, query, mode="dense", top_k=100)["results"]
                          if h["id"] == "long")
        monkeypatch.setattr(service.search, "CANDIDATES", 1)
        assert "long" not in ids(search(client, query, mode="dense", top_k=3)["results"])
        hit = next(h for h in search(client, query, top_k=3, alpha=0.3)["results"] if h["id"] == "long")
        assert hit["dense_score"] is None and hit["lexical_score"] is not None  # only the lexical side listed it
        start, end = hit["span"]
        assert hit["span"] == dense_span and 0 <= start < end <= len(text) and end - start < len(text)
    finally:
        client.delete("/documents/long")


def test_info_says_where_alpha_comes_from(client):
    info = client.get("/info").json()["search"]
    assert info["alpha"] == 0.5 and info["alpha_source"] == "default" and info["warning"] is None
    assert info["default_mode"] == "hybrid" and info["candidates"] == 100 and info["fusion"] == "weighted"
    assert info["lexical"]["engine"] == "bm25 postings" and info["lexical"]["documents"] >= 1
    assert info["lexical"]["analyzer"] == Analyzer.named("tr").describe()


def test_local_lexical_index_survives_a_restart(exported_bundle, tmp_path):
    settings = settings_for(exported_bundle, data_dir=tmp_path / "data", hybrid_alpha=0.8)
    srv = ServerThread(settings).start()
    try:
        with httpx.Client(base_url=srv.url, timeout=60) as c:
            assert c.post("/documents", json={"documents": DOCS}).status_code == 200
            # read-your-writes: the postings take a write once its transaction committed
            assert ids(search(c, "Kızılcahamam", mode="lexical")["results"]) == ["kizilcahamam"]
            assert c.delete("/documents/kedi").status_code == 200
            replaced = {"id": "cay", "text": "Zeytinyağı Ege'de üretilir."}
            assert c.post("/documents", json={"documents": [replaced]}).status_code == 200
            assert search(c, "Rize çay", mode="lexical")["results"] == []
            info = c.get("/info").json()["search"]
            assert (info["alpha"], info["alpha_source"]) == (0.8, "setting") and info["lexical"]["terms_kept"].endswith(
                "qaembed.sqlite3")
    finally:
        srv.stop()
    srv = ServerThread(settings).start()
    try:
        with httpx.Client(base_url=srv.url, timeout=60) as c:
            assert ids(search(c, "Kızılcahamam", mode="lexical")["results"]) == ["kizilcahamam"]
            assert ids(search(c, "zeytinyağı", mode="lexical")["results"]) == ["cay"]
            assert "kedi" not in ids(search(c, "kedi", mode="lexical", top_k=20)["results"])
            hybrid = search(c, "Kızılcahamam kaplıca")
            assert hybrid["fusion"]["alpha"] == 0.8 and hybrid["fusion"]["alpha_source"] == "setting"
    finally:
        srv.stop()


def test_reload_to_another_model_keeps_the_lexical_index(exported_bundle, tmp_path):
    """The next version's bundle records an α chosen with another analyzer; a document written while the reload
    re-embeds is found lexically after the swap."""
    source, name = exported_bundle
    registry = tmp_path / "registry"
    shutil.copytree(source / name, registry / name)
    first = (registry / name / "LATEST").read_text().strip()
    second = f"v{int(first[1:]) + 1:04d}"
    shutil.copytree(registry / name / first, registry / name / second)
    manifest = json.loads((registry / name / second / "manifest.json").read_text())
    manifest["version"] = second
    manifest["fusion"] = {"alpha": 0.3, "method": "weighted", "chosen_on": "training held-out split",
                          "analyzer": Analyzer.named("en").describe(), "mrr@10_by_alpha": {"0.3": 0.9}}
    (registry / name / second / "manifest.json").write_text(json.dumps(manifest))
    hold = threading.Event()

    def loader(settings, metrics, version):
        model = open_serving_model(settings, metrics, version=version)
        if model.spec.version == second:  # re-embedding waits until the test has written during it
            embed_bulk = model.embed_bulk

            async def held(*args, **kwargs):
                while not hold.is_set():
                    await asyncio.sleep(0.02)
                return await embed_bulk(*args, **kwargs)

            model.embed_bulk = held
        return model

    srv = ServerThread(settings_for((registry, name)), model_loader=loader).start()
    try:
        with httpx.Client(base_url=srv.url, timeout=60) as c:
            assert c.post("/documents", json={"documents": DOCS}).status_code == 200
            assert c.get("/info").json()["search"]["alpha_source"] == "default"
            (registry / name / "LATEST").write_text(second + "\n")
            assert c.post("/admin/reload", json={}).status_code == 202
            deadline = time.time() + 120
            while c.get("/admin/reload").json()["state"] != "re-embedding":
                assert time.time() < deadline
                time.sleep(0.02)
            late = {"id": "late", "text": "Pamukkale travertenleri Denizli'dedir.", "metadata": {"lang": "tr"}}
            assert c.post("/documents", json={"documents": [late]}).status_code == 200
            # the old generation still serves meanwhile, and finds it
            assert ids(search(c, "Pamukkale", mode="lexical")["results"]) == ["late"]
            hold.set()
            while c.get("/admin/reload").json()["state"] not in ("done", "failed"):
                assert time.time() < deadline
                time.sleep(0.05)
            assert c.get("/admin/reload").json()["state"] == "done"
            assert c.get("/info").json()["model"]["version"] == second
            assert ids(search(c, "Pamukkale travertenleri", mode="lexical")["results"]) == ["late"]
            assert ids(search(c, "Kızılcahamam", mode="lexical")["results"]) == ["kizilcahamam"]
            info = c.get("/info").json()["search"]
            assert (info["alpha"], info["alpha_source"], info["alpha_chosen_on"]) == (0.3, "bundle",
                                                                                      "training held-out split")
            assert info["alpha_analyzer"]["name"] == "en" and "analyzer" in info["warning"]
            hybrid = search(c, "Pamukkale nerede?")
            assert hybrid["fusion"]["alpha"] == 0.3 and hybrid["fusion"]["alpha_source"] == "bundle"
            assert ids(hybrid["results"])[0] == "late"
    finally:
        hold.set()
        srv.stop()
