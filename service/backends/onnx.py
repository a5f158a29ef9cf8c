"""ONNX Runtime backend: the exported graph already pools and L2-normalises.

CPU by default (the ``int8`` variant is the CPU default, chosen in :mod:`service.model`); the CUDA
execution provider is used when ``device`` is ``cuda``, or ``auto`` and onnxruntime-gpu sees a GPU.

Example::

    >>> from service.backends.onnx import OnnxBackend
    >>> backend = OnnxBackend(spec)                                   # doctest: +SKIP
    >>> backend.embed(ids, mask, None).shape                           # doctest: +SKIP
    (2, 384)
"""

from __future__ import annotations

import os

import numpy as np
import onnxruntime as ort

from .base import Backend, BackendError, ModelSpec


class OnnxBackend(Backend):
    kind = "onnx"

    def __init__(self, spec: ModelSpec, device: str = "auto", threads: int = 0) -> None:
        if spec.onnx_path is None or not spec.onnx_path.exists():
            raise BackendError(f"ONNX file not found: {spec.onnx_path}")
        available = ort.get_available_providers()
        use_cuda = device == "cuda" or (device == "auto" and "CUDAExecutionProvider" in available)
        if device == "cuda" and "CUDAExecutionProvider" not in available:
            raise BackendError("device cuda requested but onnxruntime has no CUDAExecutionProvider")
        if use_cuda and hasattr(ort, "preload_dlls"):
            # onnxruntime-gpu[cuda,cudnn] brings CUDA and cuDNN as pip packages, which the provider only
            # finds when they are loaded first (torch would do it; the serving image has no torch).
            ort.preload_dlls()
        providers = (["CUDAExecutionProvider"] if use_cuda else []) + ["CPUExecutionProvider"]
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads or (os.cpu_count() or 1)
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # No busy-waiting between ops: on few shared cores, spinning threads starve the event loop,
        # the tokenizer and the HTTP stack of the same process.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(spec.onnx_path), sess_options=options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types
            raise BackendError(f"cannot load {spec.onnx_path}: {exc}") from exc
        self.device = "cuda" if "CUDAExecutionProvider" in self.session.get_providers() else "cpu"
        if device == "cuda" and self.device != "cuda":
            # onnxruntime only logs when the CUDA provider fails to load and runs on the CPU instead:
            # a pod holding a GPU would then compute on its few CPUs without anyone knowing.
            raise BackendError("device cuda requested but ONNX Runtime could not start its CUDA provider "
                               "(CUDA 12 / cuDNN 9 libraries missing or no GPU visible; its log above says which)")
        # On CPU a bigger batch brings no speed-up per text (measured: bs 32 costs more per text than
        # bs 1-8 on 2 cores); small batches keep latency low. GPUs want large batches.
        self.max_batch_size = 16 if self.device == "cpu" else None
        # Short texts parallelise poorly inside one pass: two passes at once cost ~9.5 CPU-ms per query
        # against ~12 for one pass over 2 threads (1.10× the /embed traffic, docs/benchmarks/service.md);
        # alone, a pass still gets every thread.
        self.concurrent_batches = 2 if self.device == "cpu" and options.intra_op_num_threads > 1 else 1
        self.variant = spec.variant
        names = {i.name for i in self.session.get_inputs()}
        if not {"input_ids", "attention_mask"} <= names:
            raise BackendError(f"{spec.onnx_path}: graph inputs {sorted(names)} lack input_ids/attention_mask")
        self._type_ids = "token_type_ids" in names
        outputs = [o.name for o in self.session.get_outputs()]
        if "sentence_embedding" not in outputs:
            raise BackendError(f"{spec.onnx_path}: graph has no 'sentence_embedding' output ({outputs})")
        self.dimension = spec.dimension

    def embed(self, input_ids: np.ndarray, attention_mask: np.ndarray,
              token_type_ids: np.ndarray | None) -> np.ndarray:
        feeds = {"input_ids": input_ids, "attention_mask": attention_mask}
        if self._type_ids:
            feeds["token_type_ids"] = token_type_ids if token_type_ids is not None else np.zeros_like(input_ids)
        (out,) = self.session.run(["sentence_embedding"], feeds)
        return np.asarray(out, dtype=np.float32)

    def health(self) -> None:
        if self.session is None:
            raise BackendError("session closed")

    def close(self) -> None:
        self.session = None
