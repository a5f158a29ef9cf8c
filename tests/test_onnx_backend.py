"""The ONNX backend: device selection fails loudly."""

from __future__ import annotations

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
