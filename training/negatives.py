"""Hard negatives: passages the base model ranks high for a question, but that do not answer it.

Mining works like sentence-transformers' ``mine_hard_negatives`` with a relative margin: for each
question, search the *training* passages with FAISS (inner product on unit vectors), drop the
question's own passage(s), drop candidates scoring within ``relative_margin`` of the positive (they
are likely unlabelled correct answers: false negatives hurt more than they help), and take the
best ``num_negatives`` from the rank window ``[range_min, range_max)``.

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
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import faiss
import numpy as np

from training.data import QARecord

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
    encode: Encode
    num_negatives: int = 3
    range_min: int = 0
    range_max: int = 100
    relative_margin: float = 0.05
    seed: int = 42
    stats: FillStats = field(default_factory=FillStats, init=False)

    def fill(self, records: Sequence[QARecord], passages: Sequence[str]) -> list[QARecord]:
        """Return ``records`` with negatives topped up to ``num_negatives`` from ``passages``.

        ``passages`` must contain every record's positive (the training passages).
        """
        self.stats = FillStats()
        needy = [r for r in records if len(r.negatives) < self.num_negatives]
        if not needy:
            return list(records)
        passages = list(dict.fromkeys(passages))
        passage_vectors = _unit(self.encode(passages, False))
        index = faiss.IndexFlatIP(passage_vectors.shape[1])
        index.add(passage_vectors)
        questions = list(dict.fromkeys(r.question for r in needy))
        question_vectors = _unit(self.encode(questions, True))
        row_of = {q: i for i, q in enumerate(questions)}
        passage_id = {p: i for i, p in enumerate(passages)}
        own_passages: dict[str, set[str]] = {}
        for record in records:
            own_passages.setdefault(record.question, set()).add(record.positive)
        window_end = min(len(passages), self.range_max)
        scores, ids = index.search(question_vectors, window_end)
        rng = random.Random(self.seed)

        filled = []
        for record in records:
            want = self.num_negatives - len(record.negatives)
            if want <= 0:
                filled.append(record)
                continue
            row = row_of[record.question]
            positive_score = float(question_vectors[row] @ passage_vectors[passage_id[record.positive]])
            ceiling = positive_score * (1.0 - self.relative_margin)
            excluded = own_passages[record.question] | set(record.negatives)
            window = zip(scores[row, self.range_min:], ids[row, self.range_min:])
            mined = _below(window, ceiling, passages, excluded, want)
            if len(mined) < want and window_end < len(passages):
                # Rare and per question, so one search each: the next ranks below the window.
                deep_scores, deep_ids = index.search(question_vectors[row:row + 1], min(len(passages), 10 * window_end))
                below = zip(deep_scores[0, window_end:], deep_ids[0, window_end:])
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
        return filled


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
