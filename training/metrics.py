"""Retrieval evaluation: questions search a corpus of passages; how high does the right passage rank?

One implementation of the metrics serves every stage (training, the export quality gate, the
promotion gate), so numbers are comparable across them. It needs only numpy and an ``encode``
function per side, so it works for a PyTorch model, an ONNX session or a running service alike.

Example::

    >>> import numpy as np
    >>> from training.data import QARecord
    >>> from training.metrics import RetrievalTask, evaluate
    >>> task = RetrievalTask.from_records([QARecord("q1", "a1"), QARecord("q2", "a2")])
    >>> one_hot = {"q1": [1.0, 0.0], "q2": [0.0, 1.0], "a1": [1.0, 0.0], "a2": [0.0, 1.0]}
    >>> encode = lambda texts: np.array([one_hot[t] for t in texts])
    >>> evaluate(task, encode, encode)["mrr@10"]
    1.0
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from training.chunking import WindowVectors
from training.data import QARecord

METRIC_NAMES = ("accuracy@1", "accuracy@3", "accuracy@10", "mrr@10", "ndcg@10", "recall@10")
Encoder = Callable[[Sequence[str]], np.ndarray]


@dataclass(frozen=True)
class RetrievalTask:
    """Queries (unique questions), corpus (unique passages) and, per query, its relevant passage ids."""

    queries: tuple[str, ...]
    corpus: tuple[str, ...]
    relevant: tuple[frozenset[int], ...]

    @classmethod
    def from_records(cls, records: Iterable[QARecord]) -> RetrievalTask:
        corpus_ids: dict[str, int] = {}
        relevant: dict[str, set[int]] = {}
        for record in records:
            passage_id = corpus_ids.setdefault(record.positive, len(corpus_ids))
            relevant.setdefault(record.question, set()).add(passage_id)
        return cls(
            queries=tuple(relevant),
            corpus=tuple(corpus_ids),
            relevant=tuple(frozenset(ids) for ids in relevant.values()),
        )


def evaluate(task: RetrievalTask, encode_queries: Encoder, encode_passages: Encoder, k: int = 10) -> dict:
    """Encode both sides, rank the corpus by cosine similarity and return :data:`METRIC_NAMES`."""
    return evaluate_rankings(task, top_k_ids(similarity(task, encode_queries, encode_passages), k))


def evaluate_rankings(task: RetrievalTask, ranked: Sequence[Sequence[int]]) -> dict:
    """:data:`METRIC_NAMES` of any ranker's corpus ids per query, best first (a list may be shorter than 10).

    The lexical and hybrid rankings (``training.retrieval``) are scored here, exactly as the dense one.
    """
    if len(ranked) != len(task.queries):
        raise ValueError(f"{len(ranked)} rankings for {len(task.queries)} queries")
    return ranking_metrics(ranked, task.relevant)


def similarity(task: RetrievalTask, encode_queries: Encoder, encode_passages: Encoder) -> np.ndarray:
    """Cosine similarity of every query (rows) with every corpus passage (columns).

    A chunking passage encoder (:func:`training.chunking.chunked_encoder`) returns its windows' vectors: a
    passage then scores as its best window, as the service's search does.
    """
    queries = _unit_rows(encode_queries(list(task.queries)))
    passages = encode_passages(list(task.corpus))
    if isinstance(passages, WindowVectors):
        unit = WindowVectors(_unit_rows(passages.vectors), passages.owners, passages.spans, passages.count)
        return unit.best(queries)
    return queries @ _unit_rows(passages).T


def top_k_ids(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k highest scores per row, best first (ties broken by lower index)."""
    k = min(k, scores.shape[1])
    order = np.argsort(-scores, axis=1, kind="stable")
    return order[:, :k]


def ranking_metrics(ranked: Sequence[Sequence[int]], relevant: Sequence[frozenset[int]]) -> dict:
    """Accuracy@{1,3,10}, MRR@10, nDCG@10 (binary relevance) and Recall@10 of ranked id lists."""
    totals = dict.fromkeys(METRIC_NAMES, 0.0)
    for ids, gold in zip(ranked, relevant):
        hits = [int(doc_id) in gold for doc_id in ids[:10]]
        for cutoff in (1, 3, 10):
            totals[f"accuracy@{cutoff}"] += float(any(hits[:cutoff]))
        totals["mrr@10"] += _reciprocal_rank(hits)
        dcg = sum(1.0 / np.log2(rank + 2) for rank, hit in enumerate(hits) if hit)
        ideal = sum(1.0 / np.log2(rank + 2) for rank in range(min(len(gold), 10)))
        totals["ndcg@10"] += dcg / ideal
        totals["recall@10"] += sum(hits) / len(gold)
    count = max(len(relevant), 1)
    return {name: round(value / count, 6) for name, value in totals.items()}


def reciprocal_ranks(ranked: Sequence[Sequence[int]], relevant: Sequence[frozenset[int]]) -> np.ndarray:
    """Per query, 1 / the rank of its first relevant id in the top 10 (0 when none): MRR@10 is their mean."""
    return np.array([_reciprocal_rank([int(doc_id) in gold for doc_id in ids[:10]])
                     for ids, gold in zip(ranked, relevant)], np.float64)


def _reciprocal_rank(hits: Sequence[bool]) -> float:
    return next((1.0 / rank for rank, hit in enumerate(hits, start=1) if hit), 0.0)


def _unit_rows(matrix: np.ndarray) -> np.ndarray:
    matrix = np.asarray(matrix, dtype=np.float32)
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix / np.maximum(norms, 1e-12)
