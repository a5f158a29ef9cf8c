"""Batches that never repeat a text, as full as the data allows, with an exact length.

A passage that appears twice in a batch is scored as an in-batch negative of itself, so a question or
positive passage may appear only once in a batch, and never also as another row's negative. One text may
be the hard negative of several rows (that only weighs it twice as a negative), which keeps batches full
on small data where sentence-transformers' ``NO_DUPLICATES`` (no text twice at all) makes them tiny.
Two more things go wrong with that sampler on FAQ-shaped data, where one answer has many questions:

* it reports ``ceil(rows / batch_size)`` as its length while drawing more, smaller batches, and the
  trainer sizes the epoch by that length: the batches past it are never trained on. On a 930-row
  TQuAD/ENELPI sample (one passage has 106 questions) it drew 106 batches and 59 were trained;
* it fills batches first come, first served, so the rows of the most-asked passages pile up at the end.

This sampler draws from the passages with the most rows left first (random among equals, shuffled
within a passage), so batches stay full as long as the passages allow, and its length is exact. A
passage with more questions than there are batches still ends in batches of one row: with negatives
in the data they keep their signal; without, a one-row batch has nothing to rank against, so those
rows sit the epoch out (the passage's other questions train; a new shuffle each epoch rotates them).

Example::

    >>> from datasets import Dataset
    >>> rows = Dataset.from_dict({"anchor": [f"q{i}" for i in range(8)], "positive": list("aaaabbcd")})
    >>> sampler = PassageBalancedBatchSampler(rows, batch_size=2, drop_last=False, seed=0)
    >>> [sorted(rows[i]["positive"] for i in batch) for batch in sampler]  # passage "a" in every batch
    [['a', 'b'], ['a', 'b'], ['a', 'd'], ['a', 'c']]
    >>> len(sampler)  # exact, so the trainer runs every batch
    4
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Iterator

from datasets import Dataset
from sentence_transformers.base.sampler import DefaultBatchSampler

_TRIES = 8  # rows of one passage tried per batch before it waits: bounds the cost on clash-heavy data


class PassageBalancedBatchSampler(DefaultBatchSampler):
    def __init__(self, dataset: Dataset, batch_size: int, drop_last: bool, valid_label_columns=None,
                 generator=None, seed: int = 0) -> None:
        super().__init__(dataset, batch_size=batch_size, drop_last=drop_last,
                         valid_label_columns=valid_label_columns, generator=generator, seed=seed)
        columns = [dataset[name] for name in dataset.column_names if name not in (valid_label_columns or ())]
        rows = list(zip(*columns))  # training.finetune.to_dataset: anchor, positive, negative_1..K
        self._keys = [frozenset(row[:2]) for row in rows]  # the question and its passage
        self._negatives = [frozenset(row[2:]) for row in rows]
        self._in_batch_only = len(columns) <= 2  # anchor and positive: no negative of its own
        positives = dataset["positive"] if "positive" in dataset.column_names else range(len(dataset))
        groups: dict[object, list[int]] = {}
        for row, passage in enumerate(positives):
            groups.setdefault(passage, []).append(row)
        self._groups = list(groups.values())
        self._cached: tuple[int, list[list[int]]] | None = None

    def __iter__(self) -> Iterator[list[int]]:
        yield from self._batches()

    def __len__(self) -> int:
        return len(self._batches())

    def _batches(self) -> list[list[int]]:
        # Drawn once per epoch (seed + epoch), so __len__ and __iter__ agree and resuming is reproducible.
        if self._cached is None or self._cached[0] != self.epoch:
            self._cached = (self.epoch, self._draw(random.Random(self.seed + self.epoch)))
        return self._cached[1]

    def _fits(self, row: int, keys: set[str], texts: set[str]) -> bool:
        return self._keys[row].isdisjoint(texts) and self._negatives[row].isdisjoint(keys)

    def _draw(self, rng: random.Random) -> list[list[int]]:
        queues = [rng.sample(group, len(group)) for group in self._groups]
        # Heap of (-rows left, tie-break, group): the passage with the most rows left comes first.
        heap = [(-len(q), rng.random(), g) for g, q in enumerate(queues)]
        heapq.heapify(heap)
        batches: list[list[int]] = []
        while heap:
            batch: list[int] = []
            keys: set[str] = set()  # questions and positives in the batch
            texts: set[str] = set()  # every text in the batch
            skipped = []
            while heap and len(batch) < self.batch_size:
                entry = heapq.heappop(heap)
                queue = queues[entry[2]]
                # The passage's rows differ in their negatives: take the first (of a few) that clashes with
                # nothing in the batch; if all do, the passage waits for the next batch.
                fits = next((i for i in range(len(queue) - 1, max(-1, len(queue) - 1 - _TRIES), -1)
                             if self._fits(queue[i], keys, texts)), None)
                if fits is None:
                    skipped.append(entry)
                    continue
                row = queue.pop(fits)
                batch.append(row)
                keys |= self._keys[row]
                texts |= self._keys[row] | self._negatives[row]
                if queue:
                    skipped.append((-len(queue), rng.random(), entry[2]))
            for entry in skipped:
                heapq.heappush(heap, entry)
            batches.append(batch)
        if self._in_batch_only:
            batches = [batch for batch in batches if len(batch) > 1]
        if self.drop_last and batches and len(batches[-1]) < self.batch_size:
            batches.pop()
        return batches
