"""The backend interface: health, a preferred max batch size, and ``embed`` on padded token ids.

A backend is the "core" stage only: it gets padded ``int64`` arrays and returns ``float32
[batch, dim]`` sentence embeddings. Tokenization (pre) and normalisation (post) are the runtime's
(``export.runtime``), so every backend batches the same way. This module holds only the interface;
:mod:`service.backends.factory` picks an implementation.

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
    # the variant's export.runtime.quantization_mode ("none", "dynamic", ...) and whether it must run one sequence
    # per forward pass to be batch-invariant (export.runtime.runs_per_sequence), both from the manifest
    quantization: str = "none"
    per_sequence: bool = False
    torch_model: Path | None = None  # sentence-transformers folder, for the torch backend
    bundle_path: Path | None = None  # the bundle's folder
    # the manifest's "index" section, for a read-only index bundle (service.index_bundle); a dict, so not hashed
    index: dict | None = field(default=None, compare=False)
    # the manifest's "fusion" section (hybrid search's alpha, chosen on data: export.registry), or None
    fusion: dict | None = field(default=None, compare=False)


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

