"""PyTorch backend over a sentence-transformers folder (imported only when ``--backend torch``).

Useful on GPU machines with a CUDA torch, and as a reference implementation in tests. Never
imported by the default (ONNX) path, so the CPU image needs no torch.

Example::

    >>> from service.backends.torch import TorchBackend
    >>> backend = TorchBackend(spec, device="cpu")                     # doctest: +SKIP
"""

from __future__ import annotations

import numpy as np
import torch
from sentence_transformers import SentenceTransformer

from .base import Backend, BackendError, ModelSpec


class TorchBackend(Backend):
    kind = "torch"

    def __init__(self, spec: ModelSpec, device: str = "auto", threads: int = 0) -> None:
        if spec.torch_model is None:
            raise BackendError("the torch backend needs a sentence-transformers folder (--torch_model)")
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if threads:
            torch.set_num_threads(threads)
        try:
            self.model = SentenceTransformer(str(spec.torch_model), device=device, local_files_only=True)
        except Exception as exc:
            raise BackendError(f"cannot load {spec.torch_model}: {exc}") from exc
        self.model.eval()
        self.device = device
        self.variant = "fp32"
        get_dim = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dimension = int(get_dim() or spec.dimension)

    @torch.inference_mode()
    def embed(self, input_ids: np.ndarray, attention_mask: np.ndarray,
              token_type_ids: np.ndarray | None) -> np.ndarray:
        features = {"input_ids": torch.from_numpy(input_ids).to(self.device),
                    "attention_mask": torch.from_numpy(attention_mask).to(self.device)}
        if token_type_ids is not None:
            features["token_type_ids"] = torch.from_numpy(token_type_ids).to(self.device)
        out = self.model(features)["sentence_embedding"]
        return out.float().cpu().numpy()

    def close(self) -> None:
        self.model = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
