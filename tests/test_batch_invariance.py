"""Same text, same vector (issue 17): the parity gate's batch-invariance check fails closed, old bundles stay
invariant, and through a real uvicorn server (the ONNX int8 and fp32 variants, and ``--backend torch``) a text's
vector and a query's ranking never depend on what else is in flight."""

from __future__ import annotations

import json
import shutil
import threading

import httpx
import numpy as np
import pytest

from export import gates
from export.bundle import open_bundle
from export.errors import ExportError
from export.runtime import OnnxEncoder, quantization_mode, runs_per_sequence
from service.model import spec_from_bundle
from service.settings import Settings

# several lengths: a few tokens, a sentence, a paragraph, one over max_seq_length (truncated)
TEXTS = ["Python nedir?", "ok",
         "Malazgirt Savaşı hangi yılda yapılmıştır ve sonuçları nelerdir?",
         "Fotosentez, bitkilerin güneş ışığını kullanarak karbondioksit ve sudan glikoz ve oksijen ürettiği "
         "süreçtir. Klorofil bu süreçte ışığı soğuran başlıca pigmenttir.",
         "How do I reset my password if I no longer have access to my e-mail account?",
         "İstanbul Boğazı, Karadeniz'i Marmara Denizi'ne bağlayan su yoludur. " * 12]
TOLERANCE = 1e-5


def _runner(bundle, variant: str, per_sequence: bool):
    encoder = OnnxEncoder.from_files(bundle.variant_path(variant), bundle.tokenizer_path, bundle.max_seq_length, 2,
                                     per_sequence=per_sequence)
    return lambda texts: encoder.run(encoder.tokenizer.encode(texts))


def test_gate_fails_dynamic_int8_in_padded_batches_and_passes_it_per_sequence(exported_bundle):
    bundle = open_bundle(*exported_bundle)
    padded = gates.batch_invariance(_runner(bundle, "int8", per_sequence=False), TEXTS)
    assert padded > 1e-3, padded  # one activation scale per padded batch moves every vector in it
    assert gates.invariance_failures({"int8": padded}) == [
        f"int8: not batch-invariant, a text's vector alone vs in a batch: max |Δ| {padded:.2e} > 1e-05"]
    per_sequence = gates.batch_invariance(_runner(bundle, "int8", per_sequence=True), TEXTS)
    fp32 = gates.batch_invariance(_runner(bundle, "onnx-optimized", per_sequence=False), TEXTS)
    assert per_sequence <= TOLERANCE and fp32 <= TOLERANCE, (per_sequence, fp32)
    assert gates.invariance_failures({"int8": per_sequence, "onnx-optimized": fp32}) == []
    assert gates.invariance_failures({"int8": None}) and gates.invariance_failures({"int8": float("nan")})


def test_published_manifest_records_the_mode_and_the_invariance_gate(exported_bundle):
    manifest = open_bundle(*exported_bundle).manifest
    quantization = manifest["variants"]["int8"]["quantization"]
    assert quantization["mode"] == "dynamic" and quantization["calibration"] is None
    invariance = manifest["batch_invariance"]
    assert set(invariance["max_abs_diff"]) == {"onnx", "onnx-optimized", "int8"}
    assert max(invariance["max_abs_diff"].values()) <= invariance["maximum"] == TOLERANCE
    assert invariance["runs"]["int8"] == "one sequence per pass" and invariance["runs"]["onnx"] == "padded batches"


def test_export_refuses_a_variant_that_is_not_invariant_as_it_would_be_served(exported_bundle):
    """The pipeline's gates on the published files, int8 labelled as if its scales were fixed (so it would be
    served in padded batches): the invariance gate refuses it; under --force it is recorded."""
    from export.pipeline import _run_gates

    bundle = open_bundle(*exported_bundle)
    facts = json.loads(json.dumps(bundle.manifest))
    facts["variants"]["int8"]["quantization"]["mode"] = "static"
    texts = gates.parity_texts()
    reference = OnnxEncoder.from_bundle(bundle, "onnx", threads=2).encode(texts)
    with pytest.raises(ExportError, match="int8: not batch-invariant"):
        _run_gates(bundle.path, ["onnx", "int8"], (), texts, reference, facts, 2, False, lambda m: None)
    forced = _run_gates(bundle.path, ["onnx", "int8"], (), texts, reference, facts, 2, True, lambda m: None)
    assert [f for f in forced["gate_failures_forced"] if "batch-invariant" in f] and \
        forced["batch_invariance"]["runs"]["int8"] == "padded batches"


def test_bundles_without_a_quantization_mode_are_dynamic_int8_and_run_per_sequence(exported_bundle, tmp_path):
    assert quantization_mode("int8", {"file": "model_int8.onnx", "quantization": {"target": "avx2"}}) == "dynamic"
    assert runs_per_sequence("int8", {"file": "model_int8.onnx"})
    assert not runs_per_sequence("onnx", {"file": "model.onnx"}) and quantization_mode("fp16", {}) == "none"
    assert runs_per_sequence("fp16", {"file": "model_fp16.onnx"})  # fp16 rounding follows the batch's shape
    assert not runs_per_sequence("int8", {"quantization": {"mode": "static"}})
    # a bundle published before the mode was recorded: the service runs its int8 one sequence per pass
    registry, name = exported_bundle
    old = tmp_path / "registry"
    shutil.copytree(registry, old)
    manifest_path = open_bundle(old, name).path / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    for key in ("mode", "activation_scales", "calibration"):
        del manifest["variants"]["int8"]["quantization"][key]
    manifest_path.write_text(json.dumps(manifest))
    spec = spec_from_bundle(Settings.build(registry=old, name=name, variant="int8"))
    assert spec.quantization == "dynamic" and spec.per_sequence


# ------------------------------------------------------------------------------ through the real service
@pytest.fixture(scope="module", params=["int8", "onnx-optimized", "torch"])
def server(request, exported_bundle, example_data, minilm_path, tmp_path_factory):
    from tests.test_service_api import ServerThread, settings_for  # the API tests' server, as they run it

    # two inference workers (intra_op_threads 2), a long batching wait: requests in flight share passes; no
    # queue-wait bound, so a slow shared test machine sheds nothing (shedding is not what is tested here).
    # "torch": --backend torch on the bundled MiniLM's sentence-transformers folder (fp32, padded batches), with
    # two forward passes at once as well (its own default is one)
    engine = (dict(backend="torch", torch_model=minilm_path, inference_workers=2) if request.param == "torch"
              else dict(variant=request.param))
    srv = ServerThread(settings_for(exported_bundle, data_dir=tmp_path_factory.mktemp("data"), corpus=[example_data],
                                    intra_op_threads=2, max_wait_ms=20, max_queue_wait_ms=0, **engine)).start()
    yield srv
    srv.stop()


def _embed(client: httpx.Client, inputs) -> np.ndarray:
    r = client.post("/embed", json={"inputs": inputs})
    assert r.status_code == 200, r.text
    return np.array(r.json(), dtype=np.float32)


def _background_load(url: str, stop: threading.Event, errors: list) -> None:
    """Another client: mixed-length batches and single texts, back to back, until ``stop``."""
    rng = np.random.default_rng(threading.get_ident() % 2**32)
    others = [f"başka bir istemci {i}: " + "uzun bir metin " * int(rng.integers(1, 40)) for i in range(16)]
    with httpx.Client(base_url=url, timeout=60) as client:
        while not stop.is_set():
            picked = list(rng.choice(others, size=int(rng.integers(1, 6)), replace=False))
            r = client.post("/embed", json={"inputs": picked if len(picked) > 1 else picked[0]})
            if r.status_code != 200:
                errors.append(r.status_code)


def test_a_text_has_one_vector_alone_in_batches_and_under_concurrent_load(server):
    info = httpx.get(server.url + "/info").json()["model"]
    expected_batching = "one sequence per pass" if info["variant"] == "int8" else "padded batches"
    assert info["batching"] == expected_batching
    assert info["quantization"] == ("dynamic" if info["variant"] == "int8" else "none")
    assert (info["backend"], info["variant"]) in {("onnx", "int8"), ("onnx", "onnx-optimized"), ("torch", "fp32")}
    with httpx.Client(base_url=server.url, timeout=60) as client:
        alone = np.concatenate([_embed(client, text) for text in TEXTS])
        rng = np.random.default_rng(0)
        seen = [(list(range(len(TEXTS))), _embed(client, TEXTS))]
        for size in (2, 3):
            order = rng.permutation(len(TEXTS))
            groups = np.array_split(order, len(TEXTS) // size)
            seen += [(rows, _embed(client, [TEXTS[i] for i in rows])) for rows in groups]
        stop, errors = threading.Event(), []
        load = [threading.Thread(target=_background_load, args=(server.url, stop, errors)) for _ in range(4)]
        for thread in load:
            thread.start()
        try:
            for _ in range(3):
                seen += [([i], _embed(client, TEXTS[i])) for i in range(len(TEXTS))]
                seen.append((list(range(len(TEXTS)))[::-1], _embed(client, TEXTS[::-1])))
        finally:
            stop.set()
            for thread in load:
                thread.join(60)
    assert not errors, errors
    worst = max(float(np.abs(vectors - alone[rows]).max()) for rows, vectors in seen)
    assert worst <= TOLERANCE, worst


def test_the_same_search_gives_the_same_ranking_and_scores_every_time(server, example_data):
    query = json.loads(example_data.read_text())[3]["question"]
    body = {"query": query, "top_k": 10}
    stop, errors = threading.Event(), []
    load = [threading.Thread(target=_background_load, args=(server.url, stop, errors)) for _ in range(3)]
    answers = []
    with httpx.Client(base_url=server.url, timeout=60) as client:
        answers.append(client.post("/search", json=body).json()["results"])
        for thread in load:
            thread.start()
        try:
            for _ in range(6):
                answers.append(client.post("/search", json=body).json()["results"])
                # the query also travels in a batch with queries of other lengths
                mixed = client.post("/search", json={"queries": ["ok", query, TEXTS[-1]], "top_k": 10}).json()
                answers.append(mixed["results"][1])
        finally:
            stop.set()
            for thread in load:
                thread.join(60)
    assert not errors, errors
    first = answers[0]
    assert len(first) == 10
    for answer in answers[1:]:
        assert [h["id"] for h in answer] == [h["id"] for h in first]
        np.testing.assert_allclose([h["score"] for h in answer], [h["score"] for h in first], rtol=0, atol=TOLERANCE)
