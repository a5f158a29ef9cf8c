"""A corpus shaped like real embeddings, as large as a benchmark needs.

Real passages embedded in process by the service's own model code, then Gaussian noise around them
(:func:`synthetic`): as vectors (the FAISS index types) or as a service data directory written straight into
its SQLite store (:func:`write_search_data`: /search at 100k documents, ``bench_search_latency``).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np


def encode_passages(registry: Path, name: str, passages: list[str], limit: int) -> tuple[np.ndarray, object]:
    """Embed real passages in-process with the service's own model code (int8 ONNX)."""
    from service.model import open_serving_model
    from service.settings import Settings

    settings = Settings.build(registry=registry, name=name, max_queue_size=4096, warmup=False)
    model = open_serving_model(settings)

    async def run():
        return await model.embed_bulk(passages[:limit])

    vectors = asyncio.run(run())
    return vectors, model


def synthetic(base: np.ndarray, n: int, noise: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` unit vectors: real embeddings plus Gaussian noise (cosine to their source about 0.8)."""
    rng = np.random.default_rng(seed)
    source = rng.integers(0, len(base), n)
    out = np.empty((n, base.shape[1]), dtype=np.float32)
    for start in range(0, n, 100_000):
        stop = min(start + 100_000, n)
        chunk = base[source[start:stop]] + rng.standard_normal((stop - start, base.shape[1]), dtype=np.float32) \
            * (noise / np.sqrt(base.shape[1]))
        out[start:stop] = chunk / np.linalg.norm(chunk, axis=1, keepdims=True)
    return out, source


def write_search_data(data_dir: Path, passages: list[str], base: np.ndarray, model, n: int = 100_000,
                      seed: int = 1) -> np.ndarray:
    """A data directory of ``n`` documents (passage beginnings, each short enough to be one window) with
    their vectors (real passage embeddings + noise), written straight into the service's SQLite store in a few
    large transactions, the lexical (FTS5) index included, recorded as embedded by ``model`` (its version and
    window layout): the service's start loads them, it embeds (and tokenizes) nothing.
    Returns the vectors (for the in-process baselines)."""
    from service.documents import Document
    from service.store import DocumentStore

    vectors, source = synthetic(base, n, noise=0.75, seed=seed)
    docs = [Document(f"p{i}", f"{passages[source[i]][:300]} [{i}]", {"shard": int(i % 10)}) for i in range(n)]
    layout = {"layout": model.layout} if hasattr(model, "layout") else {}  # one window each, as the model cuts
    store = DocumentStore(data_dir)
    store.open()
    for start in range(0, n, 10_000):
        store.upsert(docs[start:start + 10_000], vectors[start:start + 10_000], model.spec.version, **layout)
    store.close()
    return vectors
