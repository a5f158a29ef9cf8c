"""Split records into train and evaluation sets *by passage*.

All questions of one passage land on the same side, so no evaluation passage is ever trained on
(neither as a positive nor as an explicit negative). Splitting by pair instead would let the model
memorise evaluation passages and inflate every metric.

Example::

    >>> from training.data import QARecord
    >>> from training.split import split_by_passage
    >>> records = [QARecord(f"q{i}", f"p{i % 5}") for i in range(20)]
    >>> split = split_by_passage(records, train_fraction=0.8, seed=42)
    >>> len(split.train), len(split.eval)
    (16, 4)
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from training.data import QARecord


@dataclass(frozen=True)
class Split:
    train: tuple[QARecord, ...]
    eval: tuple[QARecord, ...]
    negatives_removed: int  # explicit train negatives dropped because they are evaluation passages


def split_by_passage(records: Sequence[QARecord], train_fraction: float, seed: int) -> Split:
    """Shuffle passages (seeded) and fill the train side until it holds ``train_fraction`` of the pairs."""
    if not 0.0 < train_fraction <= 1.0:
        raise ValueError(f"train_split must be in (0, 1], got {train_fraction}")
    by_passage: dict[str, list[QARecord]] = {}
    for record in records:
        by_passage.setdefault(record.positive, []).append(record)
    passages = sorted(by_passage)  # sorted first: the split depends on the seed, not on file order
    random.Random(seed).shuffle(passages)

    if train_fraction == 1.0 or len(passages) < 2:
        return Split(tuple(records), (), 0)
    target = train_fraction * len(records)
    train_passages: list[str] = []
    train_count = 0
    for passage in passages[:-1]:  # the last passage always goes to eval: both sides non-empty
        if train_count >= target:
            break
        train_passages.append(passage)
        train_count += len(by_passage[passage])
    train_set = set(train_passages)
    eval_passages = [p for p in passages if p not in train_set]

    train: list[QARecord] = []
    removed = 0
    held_out = set(eval_passages)
    for passage in train_passages:
        for record in by_passage[passage]:
            kept = tuple(n for n in record.negatives if n not in held_out)
            removed += len(record.negatives) - len(kept)
            train.append(QARecord(record.question, record.positive, kept, record.origin))
    eval_records = [record for passage in eval_passages for record in by_passage[passage]]
    return Split(tuple(train), tuple(eval_records), removed)
