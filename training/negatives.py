"""Hard negatives: passages the base model (or BM25) ranks high for a question, but that do not answer it.

Mining with the model (``source="model"``, the default) works like sentence-transformers'
``mine_hard_negatives`` with a relative margin: for each question, search the *training* passages with FAISS
(inner product on unit vectors), drop the question's own passage(s), drop candidates scoring within
``relative_margin`` of the positive (they are likely unlabelled correct answers: false negatives hurt more
than they help), and take the best ``num_negatives`` from the rank window ``[range_min, range_max)``.

With ``source="bm25"`` the candidates are BM25's best training passages for the question instead
(:class:`~training.lexical.LexicalIndex`, DPR-style: passages sharing the question's words that are not its
answer), in the same rank window; there is no margin, as BM25 scores are not on a scale where "close to the
positive's score" means "likely an answer". ``encode`` is then not needed.

Explicit negatives in the data come first and are kept as given; mining only tops them up.

Every question must end with the same number of negatives (the training dataset has one column per
negative, so a short row would force every row down to its count). When the rank window holds too
few candidates below the margin (typically a question whose positive the base model ranks low),
mining continues below the window, and only then falls back to random training passages, which are
no worse than the in-batch negatives MNRL uses anyway.

Example::

    >>> import numpy as np
    >>> from training.data import QARecord
    >>> from training.negatives import NegativeMiner
    >>> vectors = {"q": [1, 0], "a": [1, 0], "b": [0.8, 0.6], "c": [0, 1]}
    >>> encode = lambda texts, is_query: np.array([vectors[t] for t in texts], dtype="float32")
    >>> miner = NegativeMiner(encode, num_negatives=1)
    >>> miner.fill([QARecord("q", "a")], ["a", "b", "c"])[0].negatives
    ('b',)
    >>> bm25 = NegativeMiner(None, num_negatives=1, source="bm25")
    >>> bm25.fill([QARecord("Kahve nasıl pişer?", "Cezvede pişer.")],
    ...           ["Cezvede pişer.", "Çay demlenir.", "Kahve Yemen'den gelir."])[0].negatives
    ("Kahve Yemen'den gelir.",)
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import faiss
import numpy as np

from training.analyzer import DEFAULT_ANALYZER, Analyzer
from training.config import NEGATIVE_SOURCES
from training.data import QARecord
from training.lexical import LexicalIndex

# encode(texts, is_query) -> vectors; is_query selects the query instruction.
Encode = Callable[[Sequence[str], bool], np.ndarray]


@dataclass
class FillStats:
    """How the last :meth:`NegativeMiner.fill` found its negatives (for the training log)."""

    mined: int = 0
    below_window: int = 0  # questions that needed candidates ranked past ``range_max``
    random: int = 0  # questions topped up with random training passages


@dataclass
class NegativeMiner:
    encode: Encode | None  # ranks the candidates with source="model"
    num_negatives: int = 3
    range_min: int = 0
    range_max: int = 100
    relative_margin: float = 0.05  # with source="model"
    seed: int = 42
    source: str = "model"  # or "bm25": BM25 ranks the candidates
    analyzer: Analyzer = field(default_factory=lambda: Analyzer.named(DEFAULT_ANALYZER))  # with source="bm25"
    stats: FillStats = field(default_factory=FillStats, init=False)

    def __post_init__(self) -> None:
        if self.source not in NEGATIVE_SOURCES:
            raise ValueError(f"negatives come from {' or '.join(NEGATIVE_SOURCES)}, not {self.source!r}")
        if self.source == "model" and self.encode is None:
            raise ValueError("mining negatives with the model needs its encode function")

    def fill(self, records: Sequence[QARecord], passages: Sequence[str]) -> list[QARecord]:
        """Return ``records`` with negatives topped up to ``num_negatives`` from ``passages``.

        ``passages`` must contain every record's positive (the training passages).
        """
        self.stats = FillStats()
        needy = [r for r in records if len(r.negatives) < self.num_negatives]
        if not needy:
            return list(records)
        passages = list(dict.fromkeys(passages))
        questions = list(dict.fromkeys(r.question for r in needy))
        window_end = min(len(passages), self.range_max)
        if self.source == "model":
            ranking: _Ranking = _ModelRanking(self.encode, questions, passages, window_end, self.relative_margin)
        else:
            ranking = _LexicalRanking(self.analyzer, questions, passages)
        row_of = {q: i for i, q in enumerate(questions)}
        passage_id = {p: i for i, p in enumerate(passages)}
        own_passages: dict[str, set[str]] = {}
        for record in records:
            own_passages.setdefault(record.question, set()).add(record.positive)
        rng = random.Random(self.seed)

        filled = []
        for record in records:
            want = self.num_negatives - len(record.negatives)
            if want <= 0:
                filled.append(record)
                continue
            row = row_of[record.question]
            ceiling = ranking.ceiling(row, passage_id[record.positive])
            excluded = own_passages[record.question] | set(record.negatives)
            window = ranking.ranked(row, window_end)[self.range_min:]
            mined = _below(window, ceiling, passages, excluded, want)
            if len(mined) < want and window_end < len(passages):
                # Rare and per question: the next ranks below the window.
                below = ranking.ranked(row, min(len(passages), 10 * window_end))[window_end:]
                more = _below(below, ceiling, passages, excluded | set(mined), want - len(mined))
                self.stats.below_window += bool(more)
                mined += more
            if len(mined) < want:
                pool = [p for p in passages if p not in excluded and p not in mined]
                extra = rng.sample(pool, min(len(pool), want - len(mined)))
                self.stats.random += bool(extra)
                mined += extra
            self.stats.mined += len(mined)
            filled.append(QARecord(record.question, record.positive, record.negatives + tuple(mined), record.origin))
        ranking.close()
        return filled


class _Ranking(Protocol):
    """The candidates of one question (a row of ``questions``) among the passages, best first."""

    def ranked(self, row: int, depth: int) -> list[tuple[float, int]]:
        """The best ``depth`` (or fewer) ``(score, passage index)`` pairs."""

    def ceiling(self, row: int, positive: int) -> float:
        """Candidates scoring above this are likely answers, never negatives."""

    def close(self) -> None: ...


class _ModelRanking:
    """FAISS inner product of unit vectors; the first ``window`` ranks of every question searched at once."""

    def __init__(self, encode: Encode, questions: list[str], passages: list[str], window: int, margin: float):
        self.passage_vectors = _unit(encode(passages, False))
        self.index = faiss.IndexFlatIP(self.passage_vectors.shape[1])
        self.index.add(self.passage_vectors)
        self.question_vectors = _unit(encode(questions, True))
        self.window = window
        self.margin = margin
        self.scores, self.ids = self.index.search(self.question_vectors, window)

    def ranked(self, row: int, depth: int) -> list[tuple[float, int]]:
        if depth <= self.window:
            return list(zip(self.scores[row, :depth].tolist(), self.ids[row, :depth].tolist()))
        scores, ids = self.index.search(self.question_vectors[row:row + 1], depth)
        return list(zip(scores[0].tolist(), ids[0].tolist()))

    def ceiling(self, row: int, positive: int) -> float:
        return float(self.question_vectors[row] @ self.passage_vectors[positive]) * (1.0 - self.margin)

    def close(self) -> None:
        pass


class _LexicalRanking:
    """BM25 over an in-memory FTS5 index of the passages; no ceiling (see the module docstring)."""

    def __init__(self, analyzer: Analyzer, questions: list[str], passages: list[str]):
        self.questions = questions
        self.index = LexicalIndex.open(":memory:", analyzer)
        self.index.add_many(enumerate(passages))

    def ranked(self, row: int, depth: int) -> list[tuple[float, int]]:
        return [(score, key) for key, score in self.index.search(self.questions[row], depth).hits]

    def ceiling(self, row: int, positive: int) -> float:
        return float("inf")

    def close(self) -> None:
        self.index.connection.close()


def _below(ranked, ceiling: float, passages: Sequence[str], excluded: set[str], count: int) -> list[str]:
    """The first ``count`` ranked passages scoring at most ``ceiling`` and not in ``excluded``."""
    taken: list[str] = []
    for score, passage_index in ranked:
        if passage_index < 0 or score > ceiling:  # -1: FAISS had fewer results than asked
            continue
        candidate = passages[passage_index]  # passages are unique, so a ranking never repeats one
        if candidate not in excluded:
            taken.append(candidate)
            if len(taken) == count:
                break
    return taken


def _unit(vectors: np.ndarray) -> np.ndarray:
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    faiss.normalize_L2(vectors)
    return vectors
