"""Long documents chunked the same way everywhere (training/chunking.py): windows from the real tokenizers cover
the text; the service embeds every window, finds a phrase at the end of a long document (which truncation,
``--chunk_stride 0``, does not), returns the document once with its best window's span, deletes all its windows
and keeps them across a restart; a data directory of the one-vector-per-document format migrates; training's
evaluation, the export quality gate and the retrain gate score a passage by its best window.

A tiny ``max_seq_length`` (32: windows of 30 tokens) makes long documents cheap: the exported MiniLM bundle is
copied with its manifest saying 32 (the graph takes any length)."""

from __future__ import annotations

import json
import shutil
import sqlite3

import numpy as np
import pytest

from export import gates
from export.bundle import open_bundle
from export.runtime import OnnxEncoder, TextTokenizer
from service.documents import Document
from service.index import Collection, IndexConfig
from service.store import DATABASE, FORMAT, DocumentStore
from tests.test_service_durability import ServiceProcess
from training.chunking import Chunking, WindowVectors, default_stride, split_windows
from training.data import QARecord
from training.metrics import RetrievalTask, evaluate

MSL = 32
FILLER = ("Kahve, kavrulmuş kahve çekirdeklerinden hazırlanan bir içecektir. Türk kahvesi cezvede pişirilir ve "
          "köpüğüyle servis edilir. Espresso basınçlı suyla hazırlanır. Filtre kahve ise kağıt filtreden süzülür. ")
END = "Zürafaların boyu altı metreye kadar ulaşır ve uzun boyunları vardır."
LONG = FILLER * 3 + END  # ~310 tokens: the phrase is only in the last window
QUERY = "Zürafaların boyu kaç metreye ulaşır?"
SHORT = [{"id": "giraffe", "text": "Zürafalar Afrika'da yaşayan hayvanlardır."},
         {"id": "ankara", "text": "Ankara Türkiye'nin başkentidir."},
         {"id": "football", "text": "Futbol on bir kişilik iki takımla oynanır."}]
DOCS = [{"id": "long", "text": LONG}, *SHORT]


@pytest.fixture(scope="module")
def short_registry(exported_bundle, tmp_path_factory):
    """The exported bundle with max_seq_length 32 in its manifest."""
    registry, name = exported_bundle
    target = tmp_path_factory.mktemp("short") / "registry"
    shutil.copytree(registry / name, target / name)
    version = (target / name / "LATEST").read_text().strip()
    manifest_path = target / name / version / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["max_seq_length"] = MSL
    manifest_path.write_text(json.dumps(manifest))
    return target, name


@pytest.fixture(scope="module")
def tokenizer(exported_bundle) -> TextTokenizer:
    return TextTokenizer(open_bundle(*exported_bundle).tokenizer_path, MSL)


# ---------------------------------------------------------------- windows
def test_windows_from_both_tokenizers_cover_the_whole_text(tokenizer, minilm_path):
    from training.encoding import SentenceEncoder
    from training.models import load_base_model

    chunking = tokenizer.chunking()
    assert chunking == Chunking(MSL - 2, default_stride(MSL - 2)) and tokenizer.special_tokens == 2
    offsets = tokenizer.content_offsets([LONG])[0]
    windows = split_windows([LONG], [offsets], chunking.window, chunking.stride)
    spans = windows.spans
    assert len(spans) > 10 and spans[0][0] == 0 and spans[-1][1] == len(LONG)
    for (_, end), (start, _) in zip(spans, spans[1:]):
        assert start < end  # overlapping: no text between windows is left out
    assert windows.texts == [LONG[s:e] for s, e in spans] and any(END[:40] in text for text in windows.texts)
    assert all(LONG[s - 1:s] in ("", " ") for s, _ in spans)  # no window starts inside a word
    # each window fits the model: re-tokenised it is at most max_seq_length tokens, nothing cut off
    assert max(len(e) for e in tokenizer.encode(windows.texts)) <= MSL
    assert not any(len(o) > MSL - 2 for o in tokenizer.content_offsets(windows.texts))
    # training's SentenceTransformer tokenizer cuts the same windows
    encoder = SentenceEncoder(load_base_model(str(minilm_path), "mean", MSL))
    assert encoder.chunking == chunking
    assert encoder.content_offsets([LONG]) == [offsets]
    # a short text is one window, whole (span None): embedded exactly as without chunking
    short = chunking.split([SHORT[0]["text"]], tokenizer.content_offsets)
    assert short.texts == [SHORT[0]["text"]] and short.spans == [None]
    assert Chunking(30, 0).split([LONG], tokenizer.content_offsets).spans == [None]  # stride 0: off


def test_collection_returns_each_document_once_at_its_best_window():
    c = Collection(dim=4, config=IndexConfig(kind="flat"))
    e = np.eye(4, dtype=np.float32)
    # "a": three windows, the best one matching query e[0]; "b", "c": one row each
    rows = np.stack([0.6 * e[0] + 0.8 * e[1], 0.9 * e[0] + np.sqrt(0.19) * e[1], e[1], 0.8 * e[0] + 0.6 * e[2],
                     0.7 * e[0] + np.sqrt(0.51) * e[3]])
    c.upsert([Document("a", "x" * 30), Document("b", "b"), Document("c", "c")], rows,
             owners=np.array([0, 0, 0, 1, 2]), spans=[(0, 10), (10, 20), (20, 30), None, None])
    hits = c.search(e[:1], k=3)[0]
    assert [(h.doc.id, h.span) for h in hits] == [("a", (10, 20)), ("b", None), ("c", None)]
    assert hits[0].score == pytest.approx(0.9)
    # top_k distinct documents although the best rows are all "a"'s (the search over-fetches rows)
    assert [h.doc.id for h in c.search(e[1:2], k=2)[0]][:1] == ["a"] and len(c.search(e[1:2], k=2)[0]) == 2
    assert c.info()["windows"] == 5
    c.upsert([Document("a", "short now")], e[3:4])  # replacing a document replaces all its windows
    assert c.info()["windows"] == 3 and [h.span for h in c.search(e[3:4], k=1)[0]] == [None]
    assert c.delete(["a"]) == ["a"] and c.info()["windows"] == 2
    assert {h.doc.id for h in c.search(e[:1], k=10)[0]} == {"b", "c"}
    docs, live = c.live_rows()
    assert [d.id for d in docs] == ["b", "c"] and live.owners.tolist() == [0, 1]


# ---------------------------------------------------------------- evaluation and gates
def long_records() -> list[QARecord]:
    """Passages that share their first 30 tokens; each answer is only at its end: truncation can't tell them apart."""
    facts = [("Zürafaların boyu kaç metreye ulaşır?", END),
             ("Ankara ne zaman başkent oldu?", "Ankara 1923 yılında Türkiye'nin başkenti oldu."),
             ("Futbol takımında kaç oyuncu vardır?", "Bir futbol takımında on bir oyuncu sahada yer alır."),
             ("Fotosentez için ne gerekir?", "Fotosentez için güneş ışığı, su ve karbondioksit gerekir.")]
    return [QARecord(question, FILLER * 2 + fact) for question, fact in facts]


def test_training_evaluation_scores_a_passage_by_its_best_window(minilm_path):
    from training.encoding import SentenceEncoder
    from training.models import load_base_model

    task = RetrievalTask.from_records(long_records())
    model = load_base_model(str(minilm_path), "mean", MSL)
    chunked, truncated = SentenceEncoder(model), SentenceEncoder(model, chunk_stride=0)
    windows = chunked.passages(task.corpus)
    assert isinstance(windows, WindowVectors) and len(windows.vectors) > 4 * len(task.corpus)
    good = evaluate(task, chunked.queries, chunked.passages)["mrr@10"]
    bad = evaluate(task, truncated.queries, truncated.passages)["mrr@10"]
    assert good == 1.0 and bad < 0.7, (good, bad)


def test_export_quality_gate_and_retrain_gate_score_by_best_window(exported_bundle, short_registry):
    from retrain.pipeline import _score

    bundle = open_bundle(*exported_bundle)
    encoder = OnnxEncoder.from_files(bundle.variant_path("onnx"), bundle.tokenizer_path, MSL, 2)
    chunked = gates.quality(long_records(), {"onnx": encoder.encode})["onnx"]["mrr@10"]
    truncated = gates.quality(long_records(), {"onnx": encoder.encode}, chunk_stride=0)["onnx"]["mrr@10"]
    assert chunked == 1.0 and truncated < 0.7, (chunked, truncated)
    assert gates.quality_chunking(encoder.encode) == {"window": MSL - 2, "stride": (MSL - 2) // 2}
    # the promotion gate scores a bundle (max_seq_length 32) the same way
    short = open_bundle(*short_registry)
    assert _score(short, "onnx", RetrievalTask.from_records(long_records()))["mrr@10"] == chunked


# ---------------------------------------------------------------- the service
def search(client, query: str = QUERY, top_k: int = 4) -> list[dict]:
    response = client.post("/search", json={"query": query, "top_k": top_k, "mode": "dense"})
    assert response.status_code == 200, response.text
    return response.json()["results"]


def test_service_finds_the_end_of_a_long_document_once_keeps_its_windows_and_deletes_them(short_registry, tmp_path):
    registry, name = short_registry
    data = tmp_path / "data"
    # a queue of 16 texts: the long document's ~20 windows are embedded in parts, not refused as too many
    svc = ServiceProcess(registry, name, data, "--max_queue_size", "16", "--max_inputs", "4")
    try:
        c = svc.wait_ready()
        info = c.get("/info").json()
        assert info["model"]["chunking"] == {"window": MSL - 2, "stride": (MSL - 2) // 2}
        assert c.post("/documents", json={"documents": DOCS}).status_code == 200
        windows = c.get("/info").json()["index"]["windows"]
        assert windows > 10 + len(SHORT)
        results = search(c)
        assert results[0]["id"] == "long" and len({r["id"] for r in results}) == len(results) == 4
        start, end = results[0]["span"]
        assert "Zürafaların boyu" in LONG[start:end]
        assert all(r["span"] is None for r in results[1:])  # one window: no span
        svc.kill9()
    finally:
        svc.close()
    svc = ServiceProcess(registry, name, data)  # the windows come back from the store, none embedded again
    try:
        c = svc.wait_ready()
        assert c.get("/info").json()["index"]["windows"] == windows
        assert search(c)[0]["span"] == [start, end]
        assert c.delete("/documents/long").status_code in (200, 204)
        assert c.get("/info").json()["index"]["windows"] == len(SHORT)
        assert "long" not in {r["id"] for r in search(c)}
    finally:
        svc.close()
    assert "(0 to re-embed)" in svc.log.read_text()


def test_chunk_stride_0_truncates_and_misses_the_end(short_registry, tmp_path):
    registry, name = short_registry
    svc = ServiceProcess(registry, name, tmp_path / "data", "--chunk_stride", "0")
    try:
        c = svc.wait_ready()
        assert c.get("/info").json()["model"]["chunking"]["stride"] == 0
        assert c.post("/documents", json={"documents": DOCS}).status_code == 200
        assert c.get("/info").json()["index"]["windows"] == len(DOCS)
        results = search(c)
        assert results[0]["id"] != "long" and all(r.get("span") is None for r in results)
    finally:
        svc.close()


def test_a_one_vector_per_document_store_migrates_and_reembeds_only_long_documents(short_registry, tmp_path):
    """A data directory of format 1 (one vector per document, no spans/layout columns): the columns are added;
    a short document's vector is still right and kept, a long one is embedded again as windows."""
    registry, name = short_registry
    bundle = open_bundle(registry, name)
    encoder = OnnxEncoder.from_bundle(bundle, "int8", threads=1)  # what the service runs, truncating at 32
    data = tmp_path / "data"
    store = DocumentStore(data)
    store.open()
    docs = [Document(d["id"], d["text"]) for d in DOCS]
    store.upsert(docs, encoder.encode([d.text for d in docs]), bundle.version)
    store.close()
    con = sqlite3.connect(data / DATABASE)  # back to format 1
    con.executescript("ALTER TABLE documents DROP COLUMN spans; ALTER TABLE documents DROP COLUMN layout; "
                      "UPDATE store_meta SET value = '1' WHERE key = 'format';")
    con.close()
    old = DocumentStore(data)
    state = old.open()
    old.close()
    assert state.windows["long"] == ("", None) and len(state.embedded["long"][0]) == encoder.encode(["x"]).shape[1]
    svc = ServiceProcess(registry, name, data)
    try:
        c = svc.wait_ready()
        assert search(c)[0]["id"] == "long"
        assert c.get("/info").json()["index"]["windows"] > len(DOCS)
    finally:
        svc.close()
    assert "(1 to re-embed)" in svc.log.read_text()
    con = sqlite3.connect(data / DATABASE)
    assert con.execute("SELECT value FROM store_meta WHERE key = 'format'").fetchone()[0] == str(FORMAT)
    layouts = dict(con.execute("SELECT id, layout FROM documents").fetchall())
    con.close()
    assert set(layouts.values()) == {f"dim=384 window={MSL - 2} stride={(MSL - 2) // 2}"}  # the upkeep stored them
