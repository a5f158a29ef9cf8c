"""Hard negatives: passages the base model ranks high for a question, but that do not answer it.

Mining works like sentence-transformers' ``mine_hard_negatives`` with a relative margin: for each
question, search the *training* passages with FAISS (inner product on unit vectors), drop the
question's own passage(s), drop candidates scoring within ``relative_margin`` of the positive (they
are likely unlabelled correct answers: false negatives hurt more than they help), and take the
best ``num_negatives`` from the rank window ``[range_min, range_max)``.

Explicit negatives in the data come first and are kept as given; mining only tops them up.

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

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import faiss
import numpy as np

from training.data import QARecord

# encode(texts, is_query) -> vectors; is_query selects the query instruction.
Encode = Callable[[Sequence[str], bool], np.ndarray]


@dataclass
class NegativeMiner:
    encode: Encode
    num_negatives: int = 3
    range_min: int = 0
    range_max: int = 100
    relative_margin: float = 0.05

    def fill(self, records: Sequence[QARecord], passages: Sequence[str]) -> list[QARecord]:
        """Return ``records`` with negatives topped up to ``num_negatives`` from ``passages``.

        ``passages`` must contain every record's positive (the training passages).
        """
        needy = [r for r in records if len(r.negatives) < self.num_negatives]
        if not needy:
            return list(records)
        passages = list(dict.fromkeys(passages))
        passage_vectors = _unit(self.encode(passages, False))
        index = faiss.IndexFlatIP(passage_vectors.shape[1])
        index.add(passage_vectors)

        questions = list(dict.fromkeys(r.question for r in needy))
        question_vectors = _unit(self.encode(questions, True))
        depth = min(len(passages), self.range_max)
        scores, ids = index.search(question_vectors, depth)
        row_of = {q: i for i, q in enumerate(questions)}
        passage_id = {p: i for i, p in enumerate(passages)}
        own_passages: dict[str, set[str]] = {}
        for record in records:
            own_passages.setdefault(record.question, set()).add(record.positive)

        filled = []
        for record in records:
            if len(record.negatives) >= self.num_negatives:
                filled.append(record)
                continue
            row = row_of[record.question]
            positive_score = float(question_vectors[row] @ passage_vectors[passage_id[record.positive]])
            ceiling = positive_score * (1.0 - self.relative_margin)
            excluded = own_passages[record.question] | set(record.negatives)
            mined = []
            for rank in range(self.range_min, depth):
                candidate = passages[ids[row, rank]]
                if candidate in excluded or scores[row, rank] > ceiling:
                    continue
                mined.append(candidate)
                if len(record.negatives) + len(mined) == self.num_negatives:
                    break
            filled.append(QARecord(record.question, record.positive, record.negatives + tuple(mined), record.origin))
        return filled


def _unit(vectors: np.ndarray) -> np.ndarray:
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    faiss.normalize_L2(vectors)
    return vectors
