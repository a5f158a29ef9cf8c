"""One servable model: the runtime's tokenizer (pre) → batching queue + backend (core) → normalise (post).

:func:`open_serving_model` turns an export bundle into an :class:`EmbeddingModel` (loaded and warmed
up); the service holds exactly one at a time and swaps it atomically on reload. The pre and post steps
and the ONNX session are ``export.runtime``'s, the ones the export gates certify; the runtime's
:class:`~export.runtime.InputTooLong` becomes the service's 413 :class:`~service.errors.TooLarge`.

Example::

    >>> from service.model import open_serving_model              # doctest: +SKIP
    >>> model = open_serving_model(settings)                        # doctest: +SKIP
    >>> result = await model.embed(["hello"], is_query=True)        # doctest: +SKIP
    >>> result.vectors.shape                                        # doctest: +SKIP
    (1, 384)
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from export.runtime import InputTooLong, TextTokenizer, quantization_mode, runs_per_sequence, uses_cuda
from training.chunking import Windows, WindowVectors

from .backends.base import Backend, BackendError, ModelSpec
from .backends.factory import load_backend
from .backpressure import until_accepted
from .batching import BatchQueue, EmbedResult
from .errors import TooLarge
from .metrics import ServiceMetrics
from .settings import Settings

log = logging.getLogger("service.model")

INLINE_TOKENIZE_CHARS = 2048  # tokenize small requests on the event loop; bigger ones in a thread
_TOKENIZE_POOL = ThreadPoolExecutor(max_workers=2, thread_name_prefix="tokenize")


class EmbeddingModel:
    """A loaded model with its own batching queue. ``embed`` is called on the event loop."""

    def __init__(self, spec: ModelSpec, backend: Backend, settings: Settings,
                 metrics: ServiceMetrics | None = None) -> None:
        self.spec = spec
        self.backend = backend
        self.metrics = metrics
        self.tokenizer = TextTokenizer(spec.tokenizer_path, spec.max_seq_length, spec.query_prompt)
        # long documents: windows from the runtime tokenizer (training.chunking, as the gates measured them)
        self.chunking = self.tokenizer.chunking(settings.chunk_stride)
        self.queue = BatchQueue(backend, max_batch_tokens=settings.max_batch_tokens,
                                max_batch_size=settings.max_batch_size, max_wait_s=settings.max_wait_ms / 1000,
                                capacity=settings.max_queue_size, metrics=metrics,
                                name=f"inference-{spec.version}",
                                workers=settings.inference_workers or backend.concurrent_batches,
                                max_queue_wait_s=settings.max_queue_wait_ms / 1000)
        self.bulk_chunk = max(1, min(settings.max_batch_size, settings.max_queue_size // 4))

    @property
    def dimension(self) -> int:
        return self.backend.dimension or self.spec.dimension

    @property
    def layout(self) -> str:
        """How this model's document vectors are cut (stored beside them: another layout is re-embedded)."""
        return f"dim={self.dimension} window={self.chunking.window} stride={self.chunking.stride}"

    def windows(self, texts: Sequence[str]) -> Windows:
        """The windows a document is embedded as (one, the whole text, when it fits or chunking is off)."""
        return self.chunking.split(texts, self.tokenizer.content_offsets)

    async def embed_documents(self, texts: Sequence[str], *, bulk: bool = False,
                              disconnected: Callable[[], Awaitable[object]] | None = None,
                              progress: Callable[[int], None] | None = None) -> WindowVectors:
        """Every window of every document embedded (plain, no query prompt); ``bulk``: through
        :meth:`embed_bulk` (corpus load, re-embedding), else one request."""
        windows = self.windows(texts)
        if bulk:
            done = None if progress is None else (lambda n: progress(int(windows.owners[n - 1]) + 1 if n else 0))
            vectors = await self.embed_bulk(windows.texts, progress=done)
        else:  # in parts the queue can take: long documents may have more windows than it holds
            vectors = np.empty((len(windows.texts), self.dimension), dtype=np.float32)
            step = max(1, self.queue.capacity // 2)
            for start in range(0, len(windows.texts), step):
                result, _ = await self.embed(windows.texts[start:start + step], disconnected=disconnected)
                vectors[start:start + len(result.vectors)] = result.vectors
        return WindowVectors(vectors, windows.owners, windows.spans, windows.count)

    def info(self) -> dict:
        per_sequence = self.spec.per_sequence and self.backend.kind == "onnx"
        return {"name": self.spec.name, "version": self.spec.version, "variant": self.backend.variant,
                "backend": self.backend.kind, "device": self.backend.device, "dimension": self.dimension,
                "max_seq_length": self.spec.max_seq_length, "query_prompt": self.spec.query_prompt,
                # batch-invariant either way; per sequence: dynamic int8, whose scales span a forward pass
                "quantization": self.spec.quantization if self.backend.kind == "onnx" else "none",
                "batching": "one sequence per pass" if per_sequence else "padded batches",
                # long documents: window (content tokens) and stride (tokens between starts; 0: truncated)
                "chunking": self.chunking.describe()}

    async def embed(self, texts: Sequence[str], *, is_query: bool = False, truncate: bool = True,
                    truncation_direction: str = "right",
                    disconnected: Callable[[], Awaitable[object]] | None = None) -> tuple[EmbedResult, float]:
        """Embed texts through the shared queue; returns (result, tokenization seconds)."""
        t0 = time.perf_counter()

        def tokenize() -> list:
            return self.tokenizer.encode(texts, is_query=is_query, truncate=truncate,
                                         truncation_direction=truncation_direction)

        try:
            if sum(len(t) for t in texts) <= INLINE_TOKENIZE_CHARS:
                encodings = tokenize()
            else:
                encodings = await asyncio.get_running_loop().run_in_executor(_TOKENIZE_POOL, tokenize)
        except InputTooLong as exc:
            raise TooLarge(str(exc)) from None
        tokenize_s = time.perf_counter() - t0
        if self.metrics is not None:
            self.metrics.tokenize_duration.observe(tokenize_s)
        job = self.queue.submit(encodings)
        result = await job.wait(disconnected() if disconnected is not None else None)
        return result, tokenize_s

    async def embed_bulk(self, texts: Sequence[str], *, is_query: bool = False,
                         progress: Callable[[int], None] | None = None) -> np.ndarray:
        """Embed many texts (corpus load, re-embedding) in chunks, yielding to live traffic when full."""
        out = np.empty((len(texts), self.dimension), dtype=np.float32)
        for start in range(0, len(texts), self.bulk_chunk):
            chunk = texts[start:start + self.bulk_chunk]
            result, _ = await until_accepted(self.embed, chunk, is_query=is_query)
            out[start:start + len(chunk)] = result.vectors
            if progress is not None:
                progress(start + len(chunk))
        return out

    def warmup(self) -> None:
        """Run the longest and a typical batch once, so the first request does not pay for it."""
        long_ids = np.full((1, self.spec.max_seq_length), 100, dtype=np.int64)
        for ids in (long_ids, np.full((8, 16), 100, dtype=np.int64)):
            self.backend.embed(ids, np.ones_like(ids), np.zeros_like(ids))
        self.backend.health()

    def close(self) -> None:
        """Finish queued work, stop the inference threads, release the backend."""
        self.queue.close()
        self.backend.close()


def _default_variant(settings: Settings) -> str:
    if settings.variant != "auto":
        return settings.variant
    return "onnx" if uses_cuda(settings.device) else "int8"


def spec_from_bundle(settings: Settings, version: str | None = None) -> ModelSpec:
    """Open (and verify) the bundle named by the settings, ``version`` overriding ``--version``."""
    from export.bundle import open_bundle  # torch-free

    settings.require_model()
    bundle = open_bundle(settings.registry, settings.name, version or settings.version)
    variant = _default_variant(settings)
    variants = tuple(bundle.manifest.get("variants", {}))
    if variant not in variants and settings.variant == "auto":
        fallback = next((v for v in ("int8", "onnx-optimized", "onnx", "fp16") if v in variants), None)
        log.warning("bundle %s/%s has no %s variant; using %s", bundle.name, bundle.version, variant, fallback)
        variant = fallback or variant
    onnx_path = bundle.variant_path(variant) if settings.backend == "onnx" else None
    facts = bundle.manifest["variants"].get(variant, {})
    torch_model = settings.torch_model
    if settings.backend == "torch" and torch_model is None:
        candidates = [bundle.path] + sorted(p.parent for p in bundle.path.glob("*/modules.json"))
        torch_model = next((p for p in candidates if (p / "modules.json").exists()), None)
    return ModelSpec(name=bundle.name, version=bundle.version, tokenizer_path=bundle.tokenizer_path,
                     max_seq_length=bundle.max_seq_length, dimension=bundle.dimension,
                     query_prompt=bundle.query_prompt, onnx_path=onnx_path, variant=variant,
                     quantization=quantization_mode(variant, facts), per_sequence=runs_per_sequence(variant, facts),
                     torch_model=Path(torch_model) if torch_model else None, bundle_path=bundle.path,
                     # an index bundle (service.index_bundle) also carries the documents it embedded
                     index=bundle.manifest.get("index"),
                     # the hybrid α the bundle's training or export chose (service.search reads it)
                     fusion=bundle.manifest.get("fusion") if isinstance(bundle.manifest.get("fusion"), dict) else None)


def open_serving_model(settings: Settings, metrics: ServiceMetrics | None = None, version: str | None = None,
                       spec: ModelSpec | None = None) -> EmbeddingModel:
    """Load, check and warm up a model (blocking: call it in a thread)."""
    spec = spec or spec_from_bundle(settings, version)
    t0 = time.perf_counter()
    backend = load_backend(spec, settings.backend, settings.device, settings.intra_op_threads)
    if backend.dimension != spec.dimension:
        raise BackendError(f"model dimension {backend.dimension} != bundle dimension {spec.dimension}")
    model = EmbeddingModel(spec, backend, settings, metrics)
    if settings.warmup:
        model.warmup()
    log.info("loaded %s/%s (%s %s on %s) in %.1fs", spec.name, spec.version, backend.kind, backend.variant,
             backend.device, time.perf_counter() - t0)
    return model
