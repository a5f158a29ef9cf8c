"""Core step of the runtime: one ONNX Runtime session over an exported graph, on CPU or CUDA.

Contract:

* The only place that builds ``onnxruntime`` sessions and decides the device: ``device`` is ``cpu``,
  ``cuda`` or ``auto`` (CUDA when onnxruntime-gpu offers its provider). ``cuda`` that cannot start is an
  error (:class:`SessionError`), never a silent CPU session.
* The graph must take ``input_ids`` and ``attention_mask`` (``token_type_ids`` optional) and give
  ``sentence_embedding``; :meth:`OnnxSession.run` maps padded ``int64 [batch, seq]`` arrays to that
  output as ``float32 [batch, dim]``, and is thread-safe (onnxruntime's ``run`` is).
* ``max_batch_size`` and ``concurrent_batches`` say how the session runs best (see their comments);
  batching code combines them with its own limits.
* Batch-invariant: a row's output does not depend on the other rows or on padding (max |Δ| ≤ 1e-5). A
  graph whose activation scales are computed per forward pass (dynamic int8) is run with
  ``per_sequence=True``: :meth:`OnnxSession.run` then runs each row alone, without its padding (inputs are
  right-padded, as :func:`~export.runtime.pad_batch` pads). On this CPU that costs nothing: int8 ran as
  fast at batch 1 as at batch 32 (docs/benchmarks.md). :func:`runs_per_sequence` decides it from a
  bundle's manifest. On CPU such a session runs each pass on one thread and ``threads`` passes at once
  (``row_workers``): one short sequence keeps two threads busy only part of each op, two single-threaded
  passes fill them (each row's output is unchanged: every pass still sees one sequence). A caller that
  runs batches at once itself (the service's batcher) passes ``parallel_rows=False``.

Example::

    >>> from export.runtime import OnnxSession
    >>> session = OnnxSession("model_int8.onnx", device="cpu", threads=2)   # doctest: +SKIP
    >>> session.run(ids, mask, types).shape                                  # doctest: +SKIP
    (2, 384)
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort

DEVICES = ("auto", "cpu", "cuda")
OUTPUT = "sentence_embedding"


class SessionError(RuntimeError):
    """The graph cannot be loaded on the requested device or does not have the expected inputs/outputs."""


def quantization_mode(variant: str, facts: dict) -> str:
    """How a bundle variant computes its activations: ``none`` (fp32, fp16), ``dynamic`` (int8 with
    activation scales computed per forward pass) or what its manifest's ``quantization.mode`` says.
    ``facts``: the variant's manifest entry. An int8 entry without ``mode`` (bundles made before the mode was
    recorded) is dynamic int8: that is what they hold."""
    quantization = facts.get("quantization")
    if quantization is None:
        return "dynamic" if variant == "int8" else "none"
    return quantization.get("mode", "dynamic")


def runs_per_sequence(variant: str, facts: dict) -> bool:
    """Whether the variant must run one sequence per forward pass to be batch-invariant: dynamic int8 takes
    one activation scale over the whole padded batch, so a text's vector moved with its batch mates
    (cosine 0.995 to itself alone); one sequence per pass makes the scale a function of the text only.
    fp16 too: its kernels round differently with the batch's shape (max |Δ| 1e-4 in padded batches on CPU)."""
    return variant == "fp16" or quantization_mode(variant, facts) == "dynamic"


def uses_cuda(device: str) -> bool:
    """Whether ``device`` runs on the CUDA provider: ``cuda``, or ``auto`` when onnxruntime offers it."""
    if device not in DEVICES:
        raise SessionError(f"device must be one of {', '.join(DEVICES)}, got {device!r}")
    return device == "cuda" or (device == "auto" and "CUDAExecutionProvider" in ort.get_available_providers())


def session_options(threads: int | None = None, *, spinning: bool = True) -> ort.SessionOptions:
    """Full graph optimisation, sequential execution, ``threads`` intra-op threads (0 or None: one per CPU
    core), one inter-op thread. ``spinning=False`` stops idle threads from busy-waiting between ops: on
    few shared cores, spinning threads starve whatever else runs there (a server's event loop, its
    tokenizer and HTTP stack); alone on a machine, spinning is a little faster."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or os.cpu_count() or 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


class OnnxSession:
    """One loaded graph; ``run(ids, mask, types) -> float32 [batch, dim]`` pooled embeddings."""

    def __init__(self, onnx_path: str | Path, *, device: str = "cpu", threads: int | None = None,
                 spinning: bool = True, per_sequence: bool = False, parallel_rows: bool = True) -> None:
        path = Path(onnx_path)
        if not path.exists():
            raise SessionError(f"ONNX file not found: {path}")
        cuda = uses_cuda(device)
        if device == "cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
            raise SessionError("device cuda requested but onnxruntime has no CUDAExecutionProvider")
        if cuda and hasattr(ort, "preload_dlls"):
            # onnxruntime-gpu[cuda,cudnn] brings CUDA and cuDNN as pip packages, which the provider only
            # finds when they are loaded first (torch would do it; the serving image has no torch).
            ort.preload_dlls()
        providers = (["CUDAExecutionProvider"] if cuda else []) + ["CPUExecutionProvider"]
        # One sequence per pass on CPU: each pass single-threaded, ``threads`` passes at once (measured on 2 cores,
        # short queries in batches of 32: 172-225 texts/s against 130-172 for one pass at a time over 2 threads).
        # ``parallel_rows=False`` for a caller that runs batches at once itself (the service's batcher, two
        # passes at once over 2 threads each: its /embed lost 11 % at 16 clients and 18 % at 1 with one thread
        # per pass, docs/benchmarks/export.md).
        parallel = per_sequence and parallel_rows and not cuda
        row_workers = (threads or os.cpu_count() or 1) if parallel else 1
        options = session_options(1 if row_workers > 1 else threads, spinning=spinning)
        try:
            self._session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types
            raise SessionError(f"cannot load {path}: {exc}") from exc
        self.device = "cuda" if "CUDAExecutionProvider" in self._session.get_providers() else "cpu"
        if device == "cuda" and self.device != "cuda":
            # onnxruntime only logs when the CUDA provider fails to load and runs on the CPU instead:
            # a pod holding a GPU would then compute on its few CPUs without anyone knowing.
            raise SessionError("device cuda requested but ONNX Runtime could not start its CUDA provider "
                               "(CUDA 12 / cuDNN 9 libraries missing or no GPU visible; its log above says which)")
        names = {i.name for i in self._session.get_inputs()}
        if not {"input_ids", "attention_mask"} <= names:
            raise SessionError(f"{path}: graph inputs {sorted(names)} lack input_ids/attention_mask")
        self._type_ids = "token_type_ids" in names
        outputs = [o.name for o in self._session.get_outputs()]
        if OUTPUT not in outputs:
            raise SessionError(f"{path}: graph has no {OUTPUT!r} output ({outputs})")
        # On CPU a bigger batch brings no speed-up per text (measured: bs 32 costs more per text than
        # bs 1-8 on 2 cores); small batches keep latency low. GPUs want large batches.
        self.max_batch_size: int | None = 16 if self.device == "cpu" else None
        self.per_sequence = per_sequence
        # Short texts parallelise poorly inside one pass: two passes at once cost ~9.5 CPU-ms per query
        # against ~12 for one pass over 2 threads (1.10× the /embed traffic, docs/benchmarks/service.md);
        # alone, a pass still gets every thread. One sequence per pass runs a batch's rows two at a time
        # itself, so it takes one batch at a time (two batches of two rows would oversubscribe the cores).
        self.row_workers = row_workers
        self.concurrent_batches = 2 if self.device == "cpu" and options.intra_op_num_threads > 1 else 1
        self._rows = (ThreadPoolExecutor(self.row_workers, thread_name_prefix="onnx-row")
                      if self.row_workers > 1 else None)

    def feeds(self, input_ids: np.ndarray, attention_mask: np.ndarray,
              token_type_ids: np.ndarray | None) -> dict[str, np.ndarray]:
        """The graph's inputs for padded arrays (``token_type_ids`` zero when the caller has none)."""
        feeds = {"input_ids": input_ids, "attention_mask": attention_mask}
        if self._type_ids:
            feeds["token_type_ids"] = token_type_ids if token_type_ids is not None else np.zeros_like(input_ids)
        return feeds

    def run(self, input_ids: np.ndarray, attention_mask: np.ndarray,
            token_type_ids: np.ndarray | None) -> np.ndarray:
        if self._session is None:
            raise SessionError("session closed")
        if not self.per_sequence or len(input_ids) == 1 and attention_mask.all():
            (out,) = self._session.run([OUTPUT], self.feeds(input_ids, attention_mask, token_type_ids))
            return np.asarray(out, dtype=np.float32)
        session = self._session

        def row(i: int, length: int) -> np.ndarray:
            types = None if token_type_ids is None else token_type_ids[i:i + 1, :length]
            (out,) = session.run([OUTPUT], self.feeds(input_ids[i:i + 1, :length], attention_mask[i:i + 1, :length],
                                                      types))
            return out

        lengths = [int(n) for n in attention_mask.sum(axis=1)]
        if self._rows is None or len(lengths) == 1:
            rows = [row(i, n) for i, n in enumerate(lengths)]
        else:
            rows = list(self._rows.map(row, range(len(lengths)), lengths))
        return np.concatenate(rows).astype(np.float32, copy=False)

    @property
    def closed(self) -> bool:
        return self._session is None

    def close(self) -> None:
        """Release the graph (its memory goes with the last reference to the onnxruntime session)."""
        self._session = None
        if self._rows is not None:
            self._rows.shutdown(wait=True)
