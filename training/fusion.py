"""Fusing a dense and a lexical ranking of one query into one: weighted (the default) or reciprocal-rank.

Each side gives its best ``CANDIDATES`` hits as ``(key, score)`` pairs, best first; keys are any hashable
(passage indices, document ids). Training chooses α with exactly these functions and candidate depth, so
the number it reports is what a search fusing the same way returns.

- :func:`weighted_fusion`: ``α · dense + (1 − α) · lexical`` over scores min-max normalised per query and
  per side (the side's best → 1, its worst listed → 0); a key missing from one side scores 0 there. α = 1 is
  the dense order, α = 0 the lexical order. Raw scores are not comparable (cosine in [-1, 1], BM25 unbounded
  and query-dependent), so only their per-query shape is combined.
- :func:`rrf_fusion`: ``Σ 1 / (k + rank)`` (k = 60, rank from 1), scores ignored. The issue measured it
  below lexical alone when one side is much weaker: an option, not the default.

Every :class:`FusedHit` carries the component scores it came from (``None`` where its side did not list it).

Example::

    >>> from training.fusion import weighted_fusion, rrf_fusion
    >>> dense = [("a", 0.9), ("b", 0.5), ("c", 0.1)]
    >>> lexical = [("c", 12.0), ("b", 3.0)]
    >>> [hit.key for hit in weighted_fusion(dense, lexical, alpha=1.0)]
    ['a', 'b', 'c']
    >>> [hit.key for hit in weighted_fusion(dense, lexical, alpha=0.0)]
    ['c', 'b', 'a']
    >>> [(hit.key, round(hit.score, 2), hit.dense_score, hit.lexical_score)
    ...  for hit in weighted_fusion(dense, lexical, alpha=0.3)]
    [('c', 0.7, 0.1, 12.0), ('a', 0.3, 0.9, None), ('b', 0.15, 0.5, 3.0)]
    >>> [(hit.key, round(hit.score, 4)) for hit in rrf_fusion(dense, lexical)]
    [('c', 0.0323), ('b', 0.0323), ('a', 0.0164)]
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

CANDIDATES = 100  # hits taken from each side before fusing
RRF_K = 60  # the constant of Cormack et al. (2009), which most hybrid search engines use
ALPHA_GRID = tuple(round(0.1 * step, 1) for step in range(11))  # 0.0, 0.1, ..., 1.0

Ranked = Sequence[tuple[Hashable, float]]  # (key, score), best first


@dataclass(frozen=True)
class FusedHit:
    key: Hashable
    score: float  # the fused score: higher is better
    dense_score: float | None  # the raw score on each side; None where that side did not list the key
    lexical_score: float | None


def check_alpha(alpha: float) -> float:
    """``alpha`` when it is in [0, 1]; ``ValueError`` otherwise (nan included)."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    return float(alpha)


def min_max(ranked: Ranked) -> dict[Hashable, float]:
    """Each key's score mapped to [0, 1] within this list: best 1, worst 0; all equal → all 1.

    >>> min_max([("a", 3.0), ("b", 2.0), ("c", 1.0)])
    {'a': 1.0, 'b': 0.5, 'c': 0.0}
    >>> min_max([("a", 7.0)])
    {'a': 1.0}
    """
    if not ranked:
        return {}
    scores = [score for _, score in ranked]
    low, high = min(scores), max(scores)
    if high - low <= 0.0 or not math.isfinite(high - low):
        return {key: 1.0 for key, _ in ranked}
    return {key: (score - low) / (high - low) for key, score in ranked}


def weighted_fusion(dense: Ranked, lexical: Ranked, alpha: float, limit: int | None = None) -> list[FusedHit]:
    """Convex combination of the per-query normalised scores, best first (see the module docstring).

    Ties (e.g. at α = 1 every key only the lexical side listed scores 0) go to the side that weighs more, then
    to the other side, then to the order the keys were first listed in, so α = 1 is exactly the dense order
    followed by the lexical-only keys in lexical order, and α = 0 the reverse. A side that listed nothing (a query
    left without terms by the analyzer) leaves the other side's order, whatever α is.
    """
    alpha = check_alpha(alpha)
    dense_norm, lexical_norm = min_max(dense), min_max(lexical)
    raw_dense, raw_lexical = dict(dense), dict(lexical)
    rows = []  # sort keys: fused score, heavier side's, lighter side's (absent: below any), first listed
    for first_seen, key in enumerate(dict.fromkeys([key for key, _ in dense] + [key for key, _ in lexical])):
        d, x = dense_norm.get(key), lexical_norm.get(key)
        heavier, lighter = (d, x) if alpha >= 0.5 else (x, d)
        rows.append((-(alpha * (d or 0.0) + (1.0 - alpha) * (x or 0.0)), 1.0 if heavier is None else -heavier,
                     1.0 if lighter is None else -lighter, first_seen, key))
    best = sorted(rows) if limit is None else heapq.nsmallest(limit, rows)  # first_seen is unique: keys never compared
    return [FusedHit(key, -score, raw_dense.get(key), raw_lexical.get(key)) for score, _, _, _, key in best]


def rrf_fusion(dense: Ranked, lexical: Ranked, k: int = RRF_K, limit: int | None = None) -> list[FusedHit]:
    """Reciprocal-rank fusion, best first; ties by the order the keys were first listed in (dense first)."""
    raw_dense, raw_lexical = dict(dense), dict(lexical)
    scores: dict[Hashable, float] = {}
    for ranked in (dense, lexical):
        for rank, (key, _) in enumerate(ranked, start=1):
            scores[key] = scores.get(key, 0.0) + 1.0 / (k + rank)
    order = sorted(scores, key=lambda key: -scores[key])  # stable: first listed wins a tie
    return [FusedHit(key, scores[key], raw_dense.get(key), raw_lexical.get(key)) for key in order[:limit]]
