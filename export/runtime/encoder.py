"""The whole runtime in one call: tokenise (pre) → ONNX session (core) → L2-normalise (post).

Contract: :meth:`OnnxEncoder.encode` returns ``float32 [n, dim]`` unit vectors in the order of the
texts, made of exactly the steps the service runs for ``/embed`` (:class:`~export.runtime.TextTokenizer`,
:func:`~export.runtime.pad_batch`, :class:`~export.runtime.OnnxSession`, :func:`normalize`); only the
batching differs (here: sorted by token length, as ``SentenceTransformer.encode`` does, which keeps
padding, and so wasted compute, small), which does not change a text's vector (the session is
batch-invariant). The export gates, retrain and the benchmarks use it, so what they certify or measure is
what the service serves.

Example::

    >>> from export.bundle import open_bundle                      # doctest: +SKIP
    >>> from export.runtime import OnnxEncoder                     # doctest: +SKIP
    >>> bundle = open_bundle("registry", "minilm")                 # doctest: +SKIP
    >>> encoder = OnnxEncoder.from_bundle(bundle, "int8", threads=2)  # doctest: +SKIP
    >>> encoder.encode(["Python nedir?"], is_query=True).shape     # doctest: +SKIP
    (1, 384)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from export.bundle import Bundle
from training.chunking import WindowVectors, chunked_encoder

from .session import OnnxSession, runs_per_sequence
from .tokenizer import Encoded, TextTokenizer, pad_batch


def normalize(vectors: np.ndarray) -> np.ndarray:
    """Post step: L2-normalise rows (idempotent for graphs that already normalise, as exported ones do)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    np.maximum(norms, 1e-12, out=norms)
    return vectors / norms


class OnnxEncoder:
    """``encode(texts) -> float32 [n, dim]`` with one tokenizer and one session.

    ``queries``: what ``encode`` does when ``is_query`` is not given (an encoder for one side of a task).
    """

    def __init__(self, tokenizer: TextTokenizer, session: OnnxSession, *, queries: bool = False) -> None:
        self.tokenizer = tokenizer
        self.session = session
        self.queries = queries

    @classmethod
    def from_files(cls, onnx_path: str | Path, tokenizer_path: str | Path, max_seq_length: int,
                   threads: int | None = None, *, query_prompt: str = "", device: str = "cpu",
                   spinning: bool = True, per_sequence: bool = False) -> OnnxEncoder:
        """``per_sequence``: as :class:`~export.runtime.OnnxSession` (True for dynamic int8 graphs)."""
        return cls(TextTokenizer(tokenizer_path, max_seq_length, query_prompt),
                   OnnxSession(onnx_path, device=device, threads=threads, spinning=spinning,
                               per_sequence=per_sequence))

    @classmethod
    def from_bundle(cls, bundle: Bundle, variant: str, threads: int | None = None, prompt: str | None = None,
                    *, device: str = "cpu") -> OnnxEncoder:
        """An encoder for one variant of a bundle, with the bundle's query prompt for ``is_query=True``;
        given a ``prompt``, it encodes every text as a query with that instruction instead. Runs the
        variant batch-invariantly, as its manifest entry says (:func:`~export.runtime.runs_per_sequence`)."""
        query_prompt = bundle.query_prompt if prompt is None else prompt
        per_sequence = runs_per_sequence(variant, bundle.manifest.get("variants", {}).get(variant, {}))
        return cls(TextTokenizer(bundle.tokenizer_path, bundle.max_seq_length, query_prompt),
                   OnnxSession(bundle.variant_path(variant), device=device, threads=threads,
                               per_sequence=per_sequence),
                   queries=prompt is not None)

    def encode(self, texts: Sequence[str], batch_size: int = 32, *, is_query: bool | None = None,
               truncate: bool = True, truncation_direction: str = "right") -> np.ndarray:
        """Unit vectors of ``texts``; the tokenizer's arguments as in :meth:`TextTokenizer.encode`
        (``truncate=False`` raises :class:`~export.runtime.InputTooLong`)."""
        encodings = self.tokenizer.encode(texts, is_query=self.queries if is_query is None else is_query,
                                          truncate=truncate, truncation_direction=truncation_direction)
        order = np.argsort([-len(e) for e in encodings], kind="stable")
        output = np.empty((len(texts), 0), dtype=np.float32)
        for start in range(0, len(texts), batch_size):
            rows = order[start:start + batch_size]
            vectors = self.run([encodings[i] for i in rows])
            if output.shape[1] == 0:
                output = np.empty((len(texts), vectors.shape[1]), dtype=np.float32)
            output[rows] = vectors
        return output

    def passages(self, texts: Sequence[str], stride: int | None = None, batch_size: int = 32) -> WindowVectors:
        """Every window of every passage (:mod:`training.chunking`, windows from this tokenizer's offsets)
        embedded as a document, as the service ingests it; ``stride`` None: half a window, 0: no chunking."""
        encode = chunked_encoder(lambda pieces: self.encode(pieces, batch_size, is_query=False),
                                 self.tokenizer.content_offsets, self.tokenizer.chunking(stride))
        return encode(texts)

    def run(self, encodings: Sequence[Encoded]) -> np.ndarray:
        """One forward pass over ``encodings`` in their order (padded to the longest) → unit vectors."""
        return normalize(self.session.run(*pad_batch(encodings)))
