"""ONNX backend: a thin adapter over the runtime's session (``export.runtime.OnnxSession``).

The session (device selection, options, graph checks, batch preferences, one sequence per pass for dynamic
int8 so that a text's vector never depends on its batch) is the same one the export gates certify; this
adapter only maps its errors to :class:`BackendError` and turns off thread spinning, as a server shares
its cores with its event loop, tokenizer and HTTP stack.

Example::

    >>> from service.backends.onnx import OnnxBackend
    >>> backend = OnnxBackend(spec)                                   # doctest: +SKIP
    >>> backend.embed(ids, mask, None).shape                           # doctest: +SKIP
    (2, 384)
"""

from __future__ import annotations

import numpy as np

from export.runtime import OnnxSession, SessionError

from .base import Backend, BackendError, ModelSpec


class OnnxBackend(Backend):
    kind = "onnx"

    def __init__(self, spec: ModelSpec, device: str = "auto", threads: int = 0) -> None:
        if spec.onnx_path is None:
            raise BackendError(f"ONNX file not found: {spec.onnx_path}")
        try:
            # the batcher runs two batches at once itself (concurrent_batches): rows one after another in each
            self.session = OnnxSession(spec.onnx_path, device=device, threads=threads, spinning=False,
                                       per_sequence=spec.per_sequence, parallel_rows=False)
        except SessionError as exc:
            raise BackendError(str(exc)) from exc
        self.device = self.session.device
        self.max_batch_size = self.session.max_batch_size
        self.concurrent_batches = self.session.concurrent_batches
        self.variant = spec.variant
        self.dimension = spec.dimension

    def embed(self, input_ids: np.ndarray, attention_mask: np.ndarray,
              token_type_ids: np.ndarray | None) -> np.ndarray:
        return self.session.run(input_ids, attention_mask, token_type_ids)

    def health(self) -> None:
        if self.session.closed:
            raise BackendError("session closed")

    def close(self) -> None:
        self.session.close()
