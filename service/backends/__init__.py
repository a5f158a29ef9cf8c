"""Inference backends behind one small interface (:class:`service.backends.base.Backend`).

``onnx`` (default; CPU int8 or fp32, CUDA provider when present) never needs torch. ``torch``
is imported lazily, only when selected, so the CPU image can ship without torch.
"""

from .base import Backend, BackendError, ModelSpec, load_backend

__all__ = ["Backend", "BackendError", "ModelSpec", "load_backend"]
