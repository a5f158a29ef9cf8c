"""The backend interface: health, a preferred max batch size, and ``embed`` on padded token ids.

A backend is the "core" stage only: it gets padded ``int64`` arrays and returns ``float32
[batch, dim]`` sentence embeddings. Tokenization (pre) and normalisation (post) live elsewhere, so
every backend batches the same way.

Example::

    >>> import numpy as np
    >>> from service.backends.base import Backend
    >>> class Zeros(Backend):
    ...     kind, device, variant, dimension = "zeros", "cpu", "none", 4
    ...     def embed(self, input_ids, attention_mask, token_type_ids):
    ...         return np.zeros((len(input_ids), self.dimension), np.float32)
    >>> Zeros().embed(np.ones((2, 3), np.int64), np.ones((2, 3), np.int64), None).shape
    (2, 4)
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


class BackendError(RuntimeError):
    """The model cannot be loaded or run."""


@dataclass(frozen=True)
class ModelSpec:
    """What a backend needs to know about one model version (usually read from an export bundle)."""

    name: str
    version: str
    tokenizer_path: Path
    max_seq_length: int
    dimension: int
    query_prompt: str = ""
    onnx_path: Path | None = None  # for the onnx backend
    variant: str = "onnx"
    torch_model: Path | None = None  # sentence-transformers folder, for the torch backend
    extra: dict = field(default_factory=dict, compare=False)


class Backend(ABC):
    """One loaded model. ``embed`` is called from ``concurrent_batches`` inference threads at most."""

    kind: str = "base"
    device: str = "cpu"
    variant: str = "none"
    dimension: int = 0
    max_batch_size: int | None = None  # backend preference, combined with the queue's limits
    concurrent_batches: int = 1  # forward passes it runs well at once (``embed`` must then be thread-safe)

    def health(self) -> None:  # noqa: B027 - optional hook
        """Raise :class:`BackendError` if the model cannot serve."""

    @abstractmethod
    def embed(self, input_ids: np.ndarray, attention_mask: np.ndarray,
              token_type_ids: np.ndarray | None) -> np.ndarray:
        """Padded ``int64 [batch, seq]`` arrays → ``float32 [batch, dim]`` pooled embeddings."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the model."""


def load_backend(spec: ModelSpec, backend: str = "onnx", device: str = "auto", threads: int = 0) -> Backend:
    """Construct the named backend; the torch module is imported only here, only for ``torch``."""
    if backend == "onnx":
        from .onnx import OnnxBackend

        return OnnxBackend(spec, device=device, threads=threads)
    if backend == "torch":
        from .torch import TorchBackend  # lazy: pulls in torch

        return TorchBackend(spec, device=device, threads=threads)
    raise BackendError(f"unknown backend {backend!r} (onnx or torch)")
