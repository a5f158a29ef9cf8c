"""A :class:`~training.metrics.RetrievalTask` ranked three ways (dense, lexical BM25, hybrid) and α chosen on it.

Every ranking is scored by :func:`training.metrics.evaluate_rankings`, the one metric implementation of training
and the gates. The hybrid fuses each side's best :data:`~training.fusion.CANDIDATES` with
:func:`~training.fusion.weighted_fusion`; α is the value of :data:`~training.fusion.ALPHA_GRID` that
:func:`choose_alpha`'s one-standard-error rule picks (the best MRR@10, unless an α nearer the better single ranker
is within one standard error of it). Torch-free: the dense side is any pair of encode
functions (a SentenceTransformer in training, the ONNX runtime in export).

Example::

    >>> import numpy as np
    >>> from training.analyzer import Analyzer
    >>> from training.data import QARecord
    >>> from training.metrics import RetrievalTask
    >>> from training.retrieval import compare_retrievers
    >>> task = RetrievalTask.from_records([QARecord("Kahve nasıl pişer?", "Kahve cezvede pişer."),
    ...                                    QARecord("Çay nerede yetişir?", "Çay Rize'de yetişir.")])
    >>> wrong = {"Kahve nasıl pişer?": [0, 1], "Çay nerede yetişir?": [1, 0]}  # a model that swaps the answers
    >>> encode_queries = lambda texts: np.array([wrong[t] for t in texts])
    >>> encode_passages = lambda texts: np.array([[1, 0], [0, 1]])
    >>> result = compare_retrievers(task, encode_queries, encode_passages, Analyzer.named("tr"))
    >>> result["bm25"]["mrr@10"], result["dense"]["mrr@10"], result["hybrid"]["mrr@10"], result["fusion"]["alpha"]
    (1.0, 0.5, 1.0, 0.0)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from training.analyzer import Analyzer
from training.fusion import ALPHA_GRID, CANDIDATES, Ranked, weighted_fusion
from training.lexical import LexicalIndex
from training.metrics import Encoder, RetrievalTask, evaluate_rankings, reciprocal_ranks, similarity, top_k_ids


def dense_rankings(task: RetrievalTask, encode_queries: Encoder, encode_passages: Encoder,
                   depth: int = CANDIDATES) -> list[Ranked]:
    """Per query, the ``depth`` most similar corpus ids with their cosine scores, best first."""
    scores = similarity(task, encode_queries, encode_passages)
    return [[(int(i), float(row[i])) for i in ids] for row, ids in zip(scores, top_k_ids(scores, depth))]


def lexical_rankings(task: RetrievalTask, analyzer: Analyzer, depth: int = CANDIDATES) -> list[Ranked]:
    """Per query, BM25's best ``depth`` corpus ids (an in-memory index of the corpus), best first.

    A query left empty by the analyzer (only punctuation) ranks nothing: it counts as a miss.
    """
    index = LexicalIndex.open(":memory:", analyzer)
    try:
        index.add_many(enumerate(task.corpus))
        return [index.search(query, depth).hits for query in task.queries]
    finally:
        index.connection.close()


def hybrid_rankings(dense: Sequence[Ranked], lexical: Sequence[Ranked], alpha: float) -> list[Ranked]:
    return [[(hit.key, hit.score) for hit in weighted_fusion(d, lx, alpha)] for d, lx in zip(dense, lexical)]


def ranking_keys(rankings: Sequence[Ranked]) -> list[list[int]]:
    return [[key for key, _ in ranked] for ranked in rankings]


def choose_alpha(task: RetrievalTask, dense: Sequence[Ranked], lexical: Sequence[Ranked],
                 grid: Sequence[float] = ALPHA_GRID) -> tuple[float, dict[str, float]]:
    """The α of ``grid`` chosen on ``task`` by the one-standard-error rule, and every α's MRR@10.

    The rule: among the α whose MRR@10 is within one standard error (of the per-query differences in reciprocal
    rank) of the best α's, take the one nearest the better single ranker (α = 0 is BM25's order, α = 1 the
    model's; a tie goes to the model). A fusion weight whose gain the questions cannot tell from noise is not
    worth its risk on the data the service will see (Breiman's one-standard-error rule, applied to the grid).
    """
    rankings = {alpha: ranking_keys(hybrid_rankings(dense, lexical, alpha)) for alpha in grid}
    by_alpha = {alpha: evaluate_rankings(task, ranked)["mrr@10"] for alpha, ranked in rankings.items()}
    reciprocal = {alpha: reciprocal_ranks(ranked, task.relevant) for alpha, ranked in rankings.items()}
    best = max(grid, key=lambda alpha: (by_alpha[alpha], alpha))
    low, high = min(grid), max(grid)
    single = high if by_alpha[high] >= by_alpha[low] else low
    for alpha in sorted(grid, key=lambda alpha: (abs(alpha - single), -alpha)):
        behind = reciprocal[best] - reciprocal[alpha]
        error = behind.std(ddof=1) / math.sqrt(len(behind)) if len(behind) > 1 else 0.0
        if behind.mean() <= error + 1e-12:  # one query apart is exactly one standard error: within
            return alpha, {f"{a:.1f}": mrr for a, mrr in by_alpha.items()}
    raise AssertionError("unreachable: the best α is within zero of itself")


def compare_retrievers(task: RetrievalTask, encode_queries: Encoder, encode_passages: Encoder,
                       analyzer: Analyzer, alpha: float | None = None) -> dict:
    """Dense, BM25 and hybrid metrics on ``task``; the hybrid at ``alpha``, or at the α chosen on ``task``.

    Returns ``{"dense": metrics, "bm25": metrics, "hybrid": metrics, "fusion": {...}}`` where ``fusion`` is what
    a search needs to fuse the same way: ``method``, ``alpha``, ``candidates`` (hits per side), ``analyzer``
    (its description), and when α was chosen here ``alpha_chosen_on_queries`` and ``mrr@10_by_alpha``.
    """
    dense = dense_rankings(task, encode_queries, encode_passages)
    lexical = lexical_rankings(task, analyzer)
    fusion = {"method": "weighted", "candidates": CANDIDATES, "analyzer": analyzer.describe()}
    if alpha is None:
        alpha, by_alpha = choose_alpha(task, dense, lexical)
        fusion.update(alpha_chosen_on_queries=len(task.queries), **{"mrr@10_by_alpha": by_alpha})
    fusion["alpha"] = alpha
    return {
        "dense": evaluate_rankings(task, ranking_keys(dense)),
        "bm25": evaluate_rankings(task, ranking_keys(lexical)),
        "hybrid": evaluate_rankings(task, ranking_keys(hybrid_rankings(dense, lexical, alpha))),
        "fusion": fusion,
    }
