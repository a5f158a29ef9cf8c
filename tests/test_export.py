"""Exporting the bundled all-MiniLM-L6-v2: graph contract, parity, quality gate, refusals, CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from export import gates
from export.bundle import list_versions, open_bundle
from export.errors import ExportError
from export.onnx_io import save_onnx
from export.runtime import OnnxEncoder
from training.data import load_qa_data

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def texts(example_data) -> list[str]:
    records = load_qa_data([example_data]).records[:12]
    return [r.question for r in records] + [r.positive for r in records]


@pytest.fixture(scope="module")
def torch_embeddings(minilm_path, texts) -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(minilm_path), device="cpu")
    return model.encode(texts, convert_to_numpy=True)


def test_graph_contract(exported_bundle):
    bundle = open_bundle(*exported_bundle)
    for variant in ("onnx", "onnx-optimized", "int8"):
        session = ort.InferenceSession(str(bundle.variant_path(variant)), providers=["CPUExecutionProvider"])
        inputs = {i.name: i for i in session.get_inputs()}
        assert list(inputs) == ["input_ids", "attention_mask", "token_type_ids"]
        assert all(i.type == "tensor(int64)" and isinstance(i.shape[0], str) and isinstance(i.shape[1], str)
                   for i in inputs.values())
        (output,) = session.get_outputs()
        assert (output.name, output.type, output.shape[1]) == ("sentence_embedding", "tensor(float)", 384)


def test_manifest_records_the_model(exported_bundle, minilm_path):
    manifest = open_bundle(*exported_bundle).manifest
    assert manifest["source_model"] == str(minilm_path)
    assert (manifest["dimension"], manifest["max_seq_length"], manifest["pooling"]) == (384, 256, "mean")
    assert manifest["normalize"] is True and manifest["query_prompt"] == ""
    assert set(manifest["variants"]) == {"onnx", "onnx-optimized", "int8"}
    assert manifest["variants"]["onnx-optimized"]["fused_operators"]["Attention"] == 6
    assert manifest["variants"]["int8"]["quantization"]["target"] in ("avx2", "avx512", "avx512_vnni", "arm64")
    assert manifest["parity"]["mean_cosine"]["onnx"] >= 0.999
    assert manifest["parity"]["mean_cosine"]["int8"] >= 0.99


@pytest.mark.parametrize("variant", ["onnx", "onnx-optimized", "int8"])
def test_bundle_embeddings_match_sentence_transformer(exported_bundle, texts, torch_embeddings, variant):
    """Through the bundle API only (tokenizer.json + ONNX session) the embeddings agree with PyTorch."""
    bundle = open_bundle(*exported_bundle)
    embeddings = OnnxEncoder.from_bundle(bundle, variant, threads=2).encode(texts, batch_size=8)
    assert embeddings.shape == (len(texts), bundle.dimension)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)  # normalised in-graph
    assert gates.mean_cosine(embeddings, torch_embeddings) >= gates.PARITY_MIN[variant]
    if variant == "onnx":
        np.testing.assert_allclose(embeddings, torch_embeddings, atol=2e-5)


def test_batch_composition_does_not_change_embeddings(exported_bundle, texts):
    """Padding inside a batch is masked out by the in-graph pooling."""
    encoder = OnnxEncoder.from_bundle(open_bundle(*exported_bundle), "onnx", threads=2)
    np.testing.assert_allclose(encoder.encode(texts, batch_size=1), encoder.encode(texts, batch_size=16),
                               atol=1e-5)


def test_int8_quality_within_one_point_of_fp32(exported_bundle, example_data):
    bundle = open_bundle(*exported_bundle)
    encoders = {v: OnnxEncoder.from_bundle(bundle, v, threads=2).encode for v in ("onnx", "int8")}
    results = gates.quality(load_qa_data([example_data]).records, encoders)
    assert results["onnx"]["mrr@10"] > 0.3
    assert gates.quality_failures(results) == []
    worse = {"onnx": {"mrr@10": 0.70}, "int8": {"mrr@10": 0.68}}
    assert gates.quality_failures(worse) == ["int8: mrr@10 0.6800 is 2.00 points below fp32 0.7000 (allowed 1.0)"]
    assert gates.quality_failures(worse, queries=500) == [
        "int8: mrr@10 0.6800 is 2.00 points below fp32 0.7000 (allowed 1.0 on 500 questions)"]
    # On 16 questions one rank change is 6 points: a 2-point drop is noise, a 10-point drop is not.
    assert gates.quality_failures(worse, queries=16) == []
    assert gates.quality_failures({"onnx": {"mrr@10": 0.70}, "int8": {"mrr@10": 0.60}}, queries=16) == [
        "int8: mrr@10 0.6000 is 10.00 points below fp32 0.7000 (allowed 6.2 on 16 questions)"]


def test_parity_gate_fails_closed_on_non_finite_embeddings():
    reference = np.eye(3, 4, dtype=np.float32)
    nan, inf = reference.copy(), reference.copy()
    nan[1, 0], inf[2, 2] = np.nan, np.inf
    encoders = {"onnx": lambda texts: reference, "int8": lambda texts: nan, "fp16": lambda texts: inf}
    results = gates.parity(reference, encoders, ["a", "b", "c"])
    assert results == {"onnx": 1.0, "int8": None, "fp16": None}
    assert gates.parity_failures(results) == [
        "int8: non-finite embeddings (NaN or inf), parity with PyTorch not measurable",
        "fp16: non-finite embeddings (NaN or inf), parity with PyTorch not measurable"]
    # NaN compares False with everything: it must fail, not slip through `value < minimum`.
    assert gates.parity_failures({"onnx": float("nan"), "int8": float("inf")}) == [
        "onnx: mean cosine to PyTorch nan < 0.999", "int8: mean cosine to PyTorch inf < 0.99"]


def test_models_over_2gb_quantise_the_plain_graph_and_skip_fusion(tmp_path, minilm_path, monkeypatch, texts):
    # The real export with the 2 GB threshold at 0 bytes: what a bge-m3-sized model goes through (the fusion
    # step was OOM-killed at 22.8 GB on it; bench/bench_export_large.py runs the real size).
    import functools

    from export import onnx_export, onnx_io
    from export.pipeline import export_model

    monkeypatch.setattr(onnx_export, "save_onnx", functools.partial(onnx_io.save_onnx, external_data_bytes=0))
    logs: list[str] = []
    export_model(str(minilm_path), tmp_path, "big", variants=("onnx", "onnx-optimized", "int8", "fp16"), threads=2,
                 log=logs.append)
    bundle = open_bundle(tmp_path, "big")
    assert set(bundle.variants) == {"onnx", "int8", "fp16"} and any("over 2 GB" in line for line in logs)
    variants = bundle.manifest["variants"]
    assert variants["onnx"]["external_data"] and variants["int8"]["quantization"]["source_variant"] == "onnx"
    assert (bundle.path / "model.onnx.data").is_file() and "model.onnx.data" in bundle.manifest["files"]
    fp32, int8, fp16 = (OnnxEncoder.from_bundle(bundle, v, threads=2).encode(texts[:8])
                        for v in ("onnx", "int8", "fp16"))
    assert float(np.mean(np.sum(fp32 * int8, axis=1))) > 0.98 and float(np.min(np.sum(fp32 * fp16, axis=1))) > 0.999

def test_external_data_for_large_models(exported_bundle, tmp_path, texts):
    """Over the threshold (2 GB in production, 0 here) the weights go to one '<file>.data' file."""
    source = open_bundle(*exported_bundle).variant_path("onnx")
    assert save_onnx(onnx.load(str(source)), tmp_path / "model.onnx", external_data_bytes=0) == [
        "model.onnx", "model.onnx.data"]
    assert (tmp_path / "model.onnx").stat().st_size < 1_000_000
    tokenizer = open_bundle(*exported_bundle).tokenizer_path
    external = OnnxEncoder.from_files(tmp_path / "model.onnx", tokenizer, 256, threads=2).encode(texts[:4])
    inline = OnnxEncoder.from_files(source, tokenizer, 256, threads=2).encode(texts[:4])
    np.testing.assert_array_equal(external, inline)


def _training_output(minilm_path: Path, folder: Path) -> Path:
    """A folder shaped like ``python -m training`` output: the MiniLM files, prompts and metrics.json."""
    folder.mkdir()
    for item in minilm_path.iterdir():
        if item.name != "config_sentence_transformers.json":
            (folder / item.name).symlink_to(item)
    (folder / "config_sentence_transformers.json").write_text(
        json.dumps({"prompts": {"query": "query: ", "document": ""}, "default_prompt_name": None}))
    (folder / "metrics.json").write_text(json.dumps(
        {"data": {"sha256": "ab" * 32}, "config": {"model_name": "sentence-transformers/all-MiniLM-L6-v2"}}))
    return folder


def test_failed_gate_refuses_to_publish_and_force_records_it(minilm_path, tmp_path, monkeypatch):
    from export.pipeline import export_model

    model_dir = _training_output(minilm_path, tmp_path / "trained")
    registry = tmp_path / "registry"
    monkeypatch.setitem(gates.PARITY_MIN, "onnx", 1.5)  # an impossible gate
    with pytest.raises(ExportError, match=r"gate failed, not published .*onnx: mean cosine to PyTorch"):
        export_model(str(model_dir), registry, "strict", variants=["onnx"], max_seq_length=64,
                     log=lambda message: None)
    assert list_versions(registry, "strict") == []
    assert [p.name for p in (registry / "strict").iterdir()] == []  # the staging folder was removed

    path = export_model(str(model_dir), registry, "strict", variants=["onnx"], max_seq_length=64, force=True,
                        log=lambda message: None)
    bundle = open_bundle(registry, "strict")
    assert bundle.path == path and bundle.max_seq_length == 64 and bundle.variants == ("onnx",)
    assert bundle.manifest["gate_failures_forced"][0].startswith("onnx: mean cosine")
    assert sorted(p.name for p in path.iterdir() if p.suffix == ".onnx") == ["model.onnx"]
    # Carried over from the training output:
    assert bundle.query_prompt == "query: "
    assert bundle.manifest["base_model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert bundle.manifest["training_data_sha256"] == "ab" * 32


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--name", "../up"], "error: invalid bundle name '../up'"),
        (["--name", "ok", "--eval_data", "missing.json"], "error: --eval_data: "),
        (["--name", "ok", "--variants", "int8,bogus"], "error: --variants must include onnx"),
    ],
)
def test_cli_user_errors_exit_1_with_one_line(tmp_path, minilm_path, arguments, message):
    result = subprocess.run(
        [sys.executable, "-m", "export", "--model_dir", str(minilm_path), "--registry", str(tmp_path), *arguments],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 1
    assert result.stderr.startswith(message) and result.stderr.count("\n") == 1, result.stderr
    assert not (tmp_path / "ok").exists() or list_versions(tmp_path, "ok") == []


# The hybrid search's fusion α in the manifest (export.fusion): from metrics.json, else chosen on --eval_data.
TRAINED_FUSION = {"method": "weighted", "candidates": 100, "alpha": 0.3, "alpha_chosen_on_queries": 1532,
                  "analyzer": {"name": "tr", "stemmer": "prefix", "prefix_length": 5, "version": 1},
                  "mrr@10_by_alpha": {f"{a / 10:.1f}": round(0.5 + a / 100, 2) for a in range(11)}}


def test_export_copies_the_training_runs_fusion_alpha_and_shows_it(minilm_path, tmp_path):
    model_dir = _training_output(minilm_path, tmp_path / "trained")
    metrics = json.loads((model_dir / "metrics.json").read_text())
    (model_dir / "metrics.json").write_text(json.dumps({**metrics, "fusion": TRAINED_FUSION}))
    result = subprocess.run(
        [sys.executable, "-m", "export", "--model_dir", str(model_dir), "--registry", str(tmp_path / "registry"),
         "--name", "trained", "--variants", "onnx", "--max_seq_length", "64", "--threads", "2"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    fusion = open_bundle(tmp_path / "registry", "trained").manifest["fusion"]  # open_bundle validates it
    assert fusion == {"alpha": 0.3, "method": "weighted", "chosen_on": "training held-out split (1532 questions)",
                      "analyzer": TRAINED_FUSION["analyzer"], "mrr@10_by_alpha": TRAINED_FUSION["mrr@10_by_alpha"],
                      "candidates": 100}
    summary = result.stdout.splitlines()
    assert summary[-2] == "fusion: weighted, α 0.3, chosen on training held-out split (1532 questions)"


def test_export_chooses_alpha_on_eval_data_with_the_exported_model(minilm_path, tmp_path, example_data):
    from export.pipeline import export_model
    from training.analyzer import Analyzer
    from training.metrics import RetrievalTask
    from training.retrieval import compare_retrievers

    model_dir = _training_output(minilm_path, tmp_path / "trained")  # its metrics.json records no fusion
    lines = []
    path = export_model(str(model_dir), tmp_path, "chosen", variants=["onnx"], max_seq_length=64,
                        eval_data=[example_data], threads=2, log=lines.append)
    bundle = open_bundle(tmp_path, "chosen")
    fusion = bundle.manifest["fusion"]
    records = load_qa_data([example_data]).records
    task = RetrievalTask.from_records(records)
    assert fusion["chosen_on"] == f"eval data: example_qa_data.json ({len(task.queries)} questions)"
    assert (fusion["method"], fusion["variant"]) == ("weighted", "onnx")
    assert fusion["analyzer"] == Analyzer.named("tr").describe()
    # The same grid search as training, on the bundle's own runtime encoder (query prompt for questions).
    encoder = OnnxEncoder.from_files(bundle.variant_path("onnx"), bundle.tokenizer_path, 64, threads=2,
                                     query_prompt=bundle.query_prompt)
    expected = compare_retrievers(task, lambda t: encoder.encode(t, is_query=True), encoder.passages,
                                  Analyzer.named("tr"))  # passages chunked, as the gate and /search score them
    assert fusion["alpha"] == expected["fusion"]["alpha"]
    assert fusion["mrr@10_by_alpha"] == expected["fusion"]["mrr@10_by_alpha"]
    assert len(fusion["mrr@10_by_alpha"]) == 11
    assert fusion["measured"]["hybrid"] == expected["hybrid"]["mrr@10"] >= max(fusion["measured"]["dense"],
                                                                                 fusion["measured"]["bm25"]) - 1e-9
    assert any(line.startswith(f"fusion: weighted, α {fusion['alpha']}, chosen on eval data") for line in lines)
    assert path.name == "v0001"


def test_no_fusion_without_metrics_or_eval_data(exported_bundle):
    from export.fusion import describe

    assert "fusion" not in open_bundle(*exported_bundle).manifest
    assert describe(None).startswith("fusion: none recorded")


# --int8_fp32_layers auto: int8 keeps the fewest fp32 layers that pass every gate (export.pipeline.FP32_LAYERS_AUTO).
def _export_int8(minilm_path: Path, registry: Path, **options) -> dict:
    from export.pipeline import export_model

    export_model(str(minilm_path), registry, "auto", variants=("onnx", "int8"), max_seq_length=64, threads=2,
                 log=lambda message: None, **options)
    return open_bundle(registry, "auto").manifest


def test_int8_fp32_layers_auto_with_eval_data_starts_at_0_and_keeps_the_first_that_passes(minilm_path, tmp_path,
                                                                                          example_data):
    manifest = _export_int8(minilm_path, tmp_path, eval_data=[example_data])
    quantization = manifest["variants"]["int8"]["quantization"]
    tried = quantization["fp32_layers_tried"]
    assert tried[0]["fp32_layers"] == 0 and all(t["failures"] for t in tried[:-1]) and not tried[-1]["failures"]
    assert quantization["fp32_layers"] == tried[-1]["fp32_layers"] and not manifest["gate_failures_forced"]
    # what each try measured is what the gates read for the published file
    assert tried[-1]["mean_cosine"] == manifest["parity"]["mean_cosine"]["int8"]
    assert tried[-1]["mrr@10"] == manifest["quality"]["int8"]["mrr@10"]


def test_int8_fp32_layers_auto_moves_on_while_int8_fails_a_gate(minilm_path, tmp_path, monkeypatch):
    # Without eval data only parity judges and the sensitive first layer stays fp32: the tries are 1, then 2.
    # Every try failing (an impossible parity bound): both measured and recorded, --force publishes the last.
    monkeypatch.setitem(gates.PARITY_MIN, "int8", 1.5)
    forced = _export_int8(minilm_path, tmp_path / "forced", force=True)
    quantization = forced["variants"]["int8"]["quantization"]
    tried = quantization["fp32_layers_tried"]
    assert [t["fp32_layers"] for t in tried] == [1, 2] and all(t["failures"] for t in tried)
    assert quantization["fp32_layers"] == 2 and forced["gate_failures_forced"] == tried[-1]["failures"]
    cosines = [t["mean_cosine"] for t in tried]
    assert cosines[0] < cosines[1], cosines  # each fp32 layer kept brings int8 closer to PyTorch

    # A bound between the two: the first try fails it, the second passes, and its file is the one published.
    monkeypatch.setitem(gates.PARITY_MIN, "int8", (cosines[0] + cosines[1]) / 2)
    chosen = _export_int8(minilm_path, tmp_path / "chosen")
    quantization = chosen["variants"]["int8"]["quantization"]
    assert [(t["fp32_layers"], bool(t["failures"])) for t in quantization["fp32_layers_tried"]] == [(1, True),
                                                                                                   (2, False)]
    assert quantization["fp32_layers"] == 2 and chosen["parity"]["mean_cosine"]["int8"] == cosines[1]
    assert not chosen["gate_failures_forced"]

    # A fixed count tries nothing else (and fails as before); its fp32 nodes are those of one layer.
    with pytest.raises(ExportError, match="gate failed, not published .*int8: mean cosine to PyTorch"):
        _export_int8(minilm_path, tmp_path / "fixed", fp32_layers=1)
    monkeypatch.setitem(gates.PARITY_MIN, "int8", 0.99)
    fixed = _export_int8(minilm_path, tmp_path / "fixed", fp32_layers=1)["variants"]["int8"]["quantization"]
    assert "fp32_layers_tried" not in fixed and set(fixed["fp32_nodes"]) < set(quantization["fp32_nodes"])
