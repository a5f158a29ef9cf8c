"""The ONNX backend over the runtime's session: device selection and graph checks fail loudly."""

from __future__ import annotations

import dataclasses

import pytest

from service.settings import Settings


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


def test_a_graph_without_the_exported_contract_is_refused(tmp_path):
    """The runtime's session checks the graph's inputs and output; the backend reports it as a BackendError."""
    import onnx
    from onnx import TensorProto, helper

    from export.runtime import OnnxSession, SessionError
    from service.backends.base import BackendError, ModelSpec
    from service.backends.onnx import OnnxBackend

    ids = helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"])
    mask = helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "seq"])
    out = helper.make_tensor_value_info("token_embeddings", TensorProto.INT64, ["batch", "seq"])
    graph = helper.make_graph([helper.make_node("Add", ["input_ids", "attention_mask"], ["token_embeddings"])],
                              "g", [ids, mask], [out])
    path = tmp_path / "model.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    with pytest.raises(SessionError, match="has no 'sentence_embedding' output"):
        OnnxSession(path, threads=1)
    spec = ModelSpec(name="m", version="v1", tokenizer_path=tmp_path / "tokenizer.json", max_seq_length=8,
                     dimension=4, onnx_path=path)
    with pytest.raises(BackendError, match="has no 'sentence_embedding' output"):
        OnnxBackend(spec, device="cpu", threads=1)
    with pytest.raises(BackendError, match="ONNX file not found"):
        OnnxBackend(dataclasses.replace(spec, onnx_path=tmp_path / "missing.onnx"), device="cpu")
