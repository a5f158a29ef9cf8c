"""Pick a backend by name: ``load_backend(spec, "onnx" | "torch", device, threads)``.

Apart from :mod:`.base` so that the interface imports no implementation (no base ↔ onnx/torch circle);
the torch backend module is imported only here, only when asked for, so the serving image needs no torch.

Example::

    >>> from service.backends.factory import load_backend
    >>> backend = load_backend(spec, "onnx", device="cpu", threads=2)   # doctest: +SKIP
"""

from __future__ import annotations

from .base import Backend, BackendError, ModelSpec


def load_backend(spec: ModelSpec, backend: str = "onnx", device: str = "auto", threads: int = 0) -> Backend:
    """Construct the named backend (``threads`` 0: one per CPU core)."""
    if backend == "onnx":
        from .onnx import OnnxBackend

        return OnnxBackend(spec, device=device, threads=threads)
    if backend == "torch":
        from .torch import TorchBackend  # lazy: pulls in torch

        return TorchBackend(spec, device=device, threads=threads)
    raise BackendError(f"unknown backend {backend!r} (onnx or torch)")
