"""Publish gates: ONNX variants must agree with PyTorch (parity), give a text the same vector whatever it
is batched with (batch invariance), and int8 must not lose retrieval quality against fp32 (quality). Pure
numpy on top of ``encode`` functions (the pipeline passes the runtime's ``OnnxEncoder.encode``, the steps
the service runs); the pipeline decides what a failure means (refuse, or record it under ``--force``).

Example::

    >>> import numpy as np
    >>> from export.gates import mean_cosine, parity_failures
    >>> a = np.eye(2, dtype=np.float32)
    >>> mean_cosine(a, a)
    1.0
    >>> parity_failures({"onnx": 0.9995, "int8": 0.95})
    ['int8: mean cosine to PyTorch 0.950000 < 0.99']
    >>> invariance_failures({"onnx": 6e-8, "int8": 0.0157})
    ["int8: not batch-invariant, a text's vector alone vs in a batch: max |Δ| 1.57e-02 > 1e-05"]
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from training.data import QARecord
from training.metrics import RetrievalTask, evaluate

PARITY_MIN = {"onnx": 0.999, "onnx-optimized": 0.999, "int8": 0.99, "fp16": 0.99}
BATCH_INVARIANCE_MAX = 1e-5  # max |Δ| of a text's vector alone vs in any batch
QUALITY_METRIC = "mrr@10"
QUALITY_MAX_DROP = 0.01  # 1.0 point of MRR@10
# ``encode(texts)`` → unit vectors, e.g. ``export.runtime.OnnxEncoder.encode``; the quality gate also passes
# ``is_query=True`` for questions.
Encode = Callable[..., np.ndarray]

# Used when no --eval_data is given: short and long, Turkish and English, so truncation, padding
# and non-ASCII tokenisation are all exercised.
SAMPLE_TEXTS = (
    "Python nedir?",
    "Türkiye'nin başkenti neresidir?",
    "Malazgirt Savaşı hangi yılda yapılmıştır ve sonuçları nelerdir?",
    "Fotosentez, bitkilerin güneş ışığını kullanarak karbondioksit ve sudan glikoz ve oksijen ürettiği "
    "süreçtir. Klorofil bu süreçte ışığı soğuran başlıca pigmenttir.",
    "How do I reset my password if I no longer have access to my e-mail account?",
    "The mitochondrion is the powerhouse of the cell; it produces most of the chemical energy "
    "needed to power the cell's biochemical reactions, stored as adenosine triphosphate (ATP).",
    "İstanbul Boğazı, Karadeniz'i Marmara Denizi'ne bağlayan ve Asya ile Avrupa kıtalarını ayıran su yoludur. "
    * 6,
    "ok",
)


def mean_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Mean row-wise cosine similarity of two embedding matrices."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    cosine = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
    return round(float(cosine.mean()), 6)


def parity_texts(records: Sequence[QARecord] = (), limit: int = 64) -> list[str]:
    """The built-in sample plus questions and passages of the eval data (at most ``limit`` in all)."""
    from_data = [text for r in records for text in (r.question, r.positive)]
    return list(dict.fromkeys([*SAMPLE_TEXTS, *from_data]))[:limit]


def parity(reference: np.ndarray, encoders: dict[str, Encode], texts: Sequence[str]) -> dict[str, float | None]:
    """Mean cosine of each variant's embeddings to the PyTorch ``reference`` of the same ``texts``;
    ``None`` for a variant whose embeddings hold NaN or inf (no cosine is meaningful, and NaN is not JSON)."""
    results: dict[str, float | None] = {}
    for variant, encode in encoders.items():
        embeddings = np.asarray(encode(texts))
        results[variant] = mean_cosine(reference, embeddings) if np.isfinite(embeddings).all() else None
    return results


def parity_failures(results: dict[str, float | None]) -> list[str]:
    """Fails closed: a missing or NaN value fails like a low one (``nan < minimum`` is False)."""
    failures = []
    for variant, value in results.items():
        minimum = PARITY_MIN[variant]
        if value is None:
            failures.append(f"{variant}: non-finite embeddings (NaN or inf), parity with PyTorch not measurable")
        elif not (math.isfinite(value) and value >= minimum):
            failures.append(f"{variant}: mean cosine to PyTorch {value:.6f} < {minimum}")
    return failures


def batch_invariance(run: Callable[[Sequence[str]], np.ndarray], texts: Sequence[str], seed: int = 0) -> float | None:
    """Largest |Δ| between each text's vector alone and in batches of mixed lengths (all texts in one pass, in
    their order and shuffled, then shuffled groups of 2, 3 and 5). ``run(texts)``: one forward pass over the
    texts as given, padded to the longest (e.g. ``OnnxEncoder.run`` on their encodings), so padding is
    exercised. ``None`` when a vector is not finite."""
    texts = list(texts)
    alone = np.concatenate([np.asarray(run([text])) for text in texts])
    rng = np.random.default_rng(seed)
    groups = [np.arange(len(texts)), rng.permutation(len(texts))]
    for size in (2, 3, 5):
        order = rng.permutation(len(texts))
        groups += [order[i:i + size] for i in range(0, len(texts), size)]
    worst = 0.0
    for rows in groups:
        batched = np.asarray(run([texts[i] for i in rows]))
        if not (np.isfinite(batched).all() and np.isfinite(alone[rows]).all()):
            return None
        worst = max(worst, float(np.abs(batched - alone[rows]).max()))
    return worst


def invariance_failures(results: dict[str, float | None]) -> list[str]:
    """Fails closed: a variant over :data:`BATCH_INVARIANCE_MAX`, without a value or with a NaN fails."""
    failures = []
    for variant, value in results.items():
        if value is None or not (math.isfinite(value) and value <= BATCH_INVARIANCE_MAX):
            shown = "not measurable (non-finite vectors)" if value is None else f"max |Δ| {value:.2e}"
            failures.append(f"{variant}: not batch-invariant, a text's vector alone vs in a batch: {shown} "
                            f"> {BATCH_INVARIANCE_MAX:g}")
    return failures


def quality(records: Sequence[QARecord], encoders: dict[str, Encode], chunk_stride: int | None = None
            ) -> dict[str, dict]:
    """Retrieval metrics of each variant on ``records``: questions are encoded with ``is_query=True`` (the
    model's query prompt, as ``/search`` does), passages plain and, as the service ingests them, chunked into
    windows by the runtime's tokenizer, a passage scoring as its best window (:mod:`training.chunking`). An
    ``encode`` that is an :class:`~export.runtime.OnnxEncoder`'s bound ``encode`` (or the encoder) chunks with
    it (``chunk_stride`` as the service's ``--chunk_stride``: None half a window, 0 off); any other callable
    embeds passages whole."""
    task = RetrievalTask.from_records(records)
    return {
        variant: evaluate(task, lambda texts, e=encode: e(texts, is_query=True), passage_encoder(encode, chunk_stride))
        for variant, encode in encoders.items()
    }


def passage_encoder(encode: Encode, chunk_stride: int | None = None) -> Callable:
    """What :func:`quality` embeds passages with: the runtime encoder's windows when ``encode`` has one."""
    encoder = getattr(encode, "__self__", encode)
    if callable(getattr(encoder, "passages", None)):
        return lambda texts: encoder.passages(texts, chunk_stride)
    return encode


def quality_chunking(encode: Encode, chunk_stride: int | None = None) -> dict | None:
    """The chunking :func:`quality` used with ``encode`` (``{"window", "stride"}``), None when it had none."""
    encoder = getattr(encode, "__self__", encode)
    tokenizer = getattr(encoder, "tokenizer", None)
    return tokenizer.chunking(chunk_stride).describe() if hasattr(tokenizer, "chunking") else None


def allowed_drop(queries: int) -> float:
    """The MRR@10 int8 may lose: :data:`QUALITY_MAX_DROP`, or one query's worth on small eval sets.

    One question whose answer falls from rank 1 out of the top 10 moves MRR@10 by ``1/queries``; on
    16 held-out questions that is 6 points, so a fixed 1-point bound would reject (or pass) on the luck
    of a single rank. From 100 questions on, the bound is the fixed 1 point.
    """
    return max(QUALITY_MAX_DROP, 1.0 / queries) if queries else QUALITY_MAX_DROP


def quality_failures(results: dict[str, dict], queries: int = 0) -> list[str]:
    """int8 may lose at most :func:`allowed_drop` of MRR@10 against fp32 ONNX (``queries``: eval set size)."""
    if "int8" not in results or "onnx" not in results:
        return []
    drop = results["onnx"][QUALITY_METRIC] - results["int8"][QUALITY_METRIC]
    allowed = allowed_drop(queries)
    if drop <= allowed + 1e-9:
        return []
    return [
        f"int8: {QUALITY_METRIC} {results['int8'][QUALITY_METRIC]:.4f} is {drop * 100:.2f} points below "
        f"fp32 {results['onnx'][QUALITY_METRIC]:.4f} (allowed {allowed * 100:.1f}"
        + (f" on {queries} questions)" if queries else ")")
    ]
