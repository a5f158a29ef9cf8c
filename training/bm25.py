"""BM25 from in-memory postings, scoring exactly as SQLite FTS5's ``bm25()`` does over the same terms.

FTS5 (:mod:`training.lexical`) is the durable lexical index, but its ``bm25()`` is an auxiliary function called
once per matching row: a query OR-ing a common Turkish stem matches most of a 100k-document corpus, and ranking
it took 250-880 ms on 2 cores, 5x one FAISS search. :class:`Bm25Postings` keeps the same statistics as
numpy postings and ranks a query in a few vectorised operations per term, with FTS5's formula and constants
(``fts5_aux.c``): for each distinct query term ``t`` matching document ``d``::

    idf(t)   = log((N - df + 0.5) / (df + 0.5)), or 1e-6 where that is <= 0
    score(d) = sum_t idf(t) * tf * (k1 + 1) / (tf + k1 * (1 - b + b * len(d) / avgdl)),  k1 = 1.2, b = 0.75

with ``N`` the live documents, ``df`` those containing ``t``, ``len(d)`` its number of terms and ``avgdl``
the mean of those. A document matches when it holds any query term (OR); ties go to the key added first,
as FTS5's go to the lower rowid. So a ranking here is FTS5's ranking (tests/test_lexical.py compares them).

Layout: a base segment (postings per term as one CSC-like array pair) and a delta of postings added since it
was built; replacing or removing a document marks its slot dead. When the delta or the dead slots grow past a
quarter of the base, both are merged into a new base. What each term adds to its documents' scores is kept
from one query to the next until a write changes the statistics (up to :data:`CACHE_POSTINGS` postings).
Thread-safe: one lock, held for a write or a query.

Example::

    >>> from training.bm25 import Bm25Postings
    >>> index = Bm25Postings()
    >>> index.add_many([("a", ["osmanl", "padiş"]), ("b", ["kahve", "nasıl", "yapıl"]), ("c", ["kahve"])])
    >>> [key for key, _ in index.search(["kahve", "yok"], k=10)]
    ['c', 'b']
    >>> index.remove("c"); [key for key, _ in index.search(["kahve"], k=10)]
    ['b']
"""

from __future__ import annotations

import math
import threading
from collections import Counter
from collections.abc import Hashable, Iterable, Sequence

import numpy as np

K1, B = 1.2, 0.75  # FTS5's bm25() defaults
MIN_IDF = 1e-6  # FTS5's floor for a term in half the documents or more
BULK = 100_000  # postings added in one call above which they go straight into a new base
CACHE_POSTINGS = 1_000_000  # scored postings kept between writes (16 MB)


class Bm25Postings:
    """Documents as analysed terms under hashable keys; :meth:`search` ranks them by BM25 (see the module)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._vocabulary: dict[str, int] = {}
        self._keys: list[Hashable] = []  # slot → key (dead slots keep theirs until a merge)
        self._slot: dict[Hashable, int] = {}  # key → its live slot
        self._lengths = np.zeros(0, np.float64)  # slot → number of terms
        self._live = np.zeros(0, bool)
        self._tokens = 0  # terms in live documents
        # base: the postings of term t are slots[indptr[t]:indptr[t + 1]], with their term frequencies
        self._indptr = np.zeros(1, np.int64)
        self._slots = np.zeros(0, np.int32)
        self._tfs = np.zeros(0, np.float32)
        self._delta: dict[int, tuple[list[int], list[int]]] = {}  # term → (slots, tfs) added since the merge
        self._delta_postings = 0
        self._writes = 0  # changes since the start: a term's cached weights hold for one value
        self._cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._cache_postings, self._cached_at = 0, 0

    def __len__(self) -> int:
        return len(self._slot)

    def add_many(self, items: Iterable[tuple[Hashable, Sequence[str]]]) -> None:
        """Index each key's terms, replacing what the key held; the last of a repeated key wins."""
        with self._lock:
            self._writes += 1
            added: tuple[list[int], list[int], list[int]] = ([], [], [])  # terms, slots, tfs
            for key, terms in items:
                self._drop(key)
                self._add(key, terms, added)
            if len(added[0]) > BULK:  # e.g. a start loading every document: straight into the base
                self._merge(added)
            else:
                for t, slot, tf in zip(*added, strict=True):
                    slots, tfs = self._delta.setdefault(t, ([], []))
                    slots.append(slot)
                    tfs.append(tf)
                self._delta_postings += len(added[0])
                self._maybe_merge()

    def remove(self, key: Hashable) -> None:
        """Drop ``key`` (nothing happens when it is not indexed)."""
        with self._lock:
            self._writes += 1
            self._drop(key)
            self._maybe_merge()

    def search(self, terms: Sequence[str], k: int) -> list[tuple[Hashable, float]]:
        """The ``k`` best ``(key, score)`` for the OR of ``terms`` (each counted once), best first."""
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        with self._lock:
            n = len(self._slot)
            if n == 0:
                return []
            weighted = [self._weights(term, n) for term in dict.fromkeys(terms)]
            if not weighted:
                return []
            scores = np.bincount(np.concatenate([slots for slots, _ in weighted]),  # summed in term order
                                 np.concatenate([weights for _, weights in weighted]), minlength=len(self._keys))
            found = np.flatnonzero(scores)  # the matching slots: each term adds at least MIN_IDF * tf / (...) > 0
            if len(found) > k:  # the k best, and every slot tied with the k-th (ties go to the earlier slot)
                kth = np.partition(scores[found], len(found) - k)[len(found) - k]
                found = found[scores[found] >= kth]
            order = found[np.lexsort((found, -scores[found]))][:k]
            return list(zip(map(self._keys.__getitem__, order.tolist()), scores[order].tolist(), strict=True))

    # ------------------------------------------------------------------ internals (lock held)
    def _weights(self, term: str, n: int) -> tuple[np.ndarray, np.ndarray]:
        """``term``'s live slots and what it adds to each one's score, cached until the next write: queries repeat
        their common terms, whose long postings are most of a query's cost."""
        if self._cached_at != self._writes:
            self._cache, self._cache_postings, self._cached_at = {}, 0, self._writes
        cached = self._cache.get(term)
        if cached is not None:
            return cached
        slots, tfs = self._postings(term)
        idf = math.log((n - len(slots) + 0.5) / (len(slots) + 0.5)) if len(slots) else 0.0
        norm = K1 * (1.0 - B + B * self._lengths[slots] / (self._tokens / n))
        weights = max(idf, MIN_IDF) * (tfs * (K1 + 1.0)) / (tfs + norm)
        if self._cache_postings + len(slots) <= CACHE_POSTINGS:
            self._cache[term] = (slots, weights)
            self._cache_postings += len(slots)
        return slots, weights

    def _postings(self, term: str) -> tuple[np.ndarray, np.ndarray]:
        """The live slots holding ``term`` and its frequency in each."""
        t = self._vocabulary.get(term)
        parts = []
        if t is not None and t + 1 < len(self._indptr):
            start, stop = self._indptr[t], self._indptr[t + 1]
            parts.append((self._slots[start:stop], self._tfs[start:stop]))
        if t in self._delta:
            parts.append((np.asarray(self._delta[t][0], np.int64), np.asarray(self._delta[t][1], np.float64)))
        if not parts:
            return np.zeros(0, np.int64), np.zeros(0, np.float64)
        slots, tfs = parts[0] if len(parts) == 1 else map(np.concatenate, zip(*parts, strict=True))
        live = self._live[slots]
        return slots[live], tfs[live].astype(np.float64)

    def _add(self, key: Hashable, terms: Sequence[str], added: tuple[list[int], list[int], list[int]]) -> None:
        slot = len(self._keys)
        self._keys.append(key)
        self._slot[key] = slot
        if slot >= len(self._live):  # grow by doubling
            size = max(1024, 2 * len(self._live))
            self._live = np.concatenate([self._live, np.zeros(size - len(self._live), bool)])
            self._lengths = np.concatenate([self._lengths, np.zeros(size - len(self._lengths))])
        self._live[slot] = True
        self._lengths[slot] = len(terms)
        self._tokens += len(terms)
        counts = Counter(terms)
        vocabulary = self._vocabulary
        new = set(counts).difference(vocabulary)  # C loops: a bulk load is mostly these lines
        vocabulary.update(zip(new, range(len(vocabulary), len(vocabulary) + len(new))))
        added[0].extend(map(vocabulary.__getitem__, counts))
        added[1].extend([slot] * len(counts))
        added[2].extend(counts.values())

    def _drop(self, key: Hashable) -> None:
        slot = self._slot.pop(key, None)
        if slot is not None:
            self._live[slot] = False
            self._tokens -= int(self._lengths[slot])

    def _maybe_merge(self) -> None:
        dead = len(self._keys) - len(self._slot)
        quarter = max(10_000, len(self._slots) // 4)
        if self._delta_postings > quarter or dead > max(1_000, len(self._keys) // 4):
            self._merge()

    def _merge(self, added: tuple[list[int], list[int], list[int]] | None = None) -> None:
        """One base from the base, the delta and ``added`` postings, without dead slots (live slots renumbered in
        order)."""
        delta = [(np.full(len(s), t, np.int64), np.asarray(s, np.int64), np.asarray(f, np.float32))
                 for t, (s, f) in self._delta.items()]
        if added:
            delta.append((np.asarray(added[0], np.int64), np.asarray(added[1], np.int64),
                          np.asarray(added[2], np.float32)))
        base_terms = np.repeat(np.arange(len(self._indptr) - 1), np.diff(self._indptr))
        terms = np.concatenate([base_terms, *(d[0] for d in delta)])
        slots = np.concatenate([self._slots.astype(np.int64), *(d[1] for d in delta)])
        tfs = np.concatenate([self._tfs, *(d[2] for d in delta)])
        keep = self._live[slots]
        terms, slots, tfs = terms[keep], slots[keep], tfs[keep]
        live_slots = np.flatnonzero(self._live[:len(self._keys)])
        renumber = np.full(len(self._keys), -1, np.int64)
        renumber[live_slots] = np.arange(len(live_slots))
        order = np.lexsort((renumber[slots], terms))
        self._slots = renumber[slots][order].astype(np.int32)
        self._tfs = tfs[order].astype(np.float32)
        self._indptr = np.concatenate([[0], np.cumsum(np.bincount(terms, minlength=len(self._vocabulary)))])
        self._keys = [self._keys[slot] for slot in live_slots]
        self._slot = {key: slot for slot, key in enumerate(self._keys)}
        self._lengths = self._lengths[live_slots].copy()
        self._live = np.ones(len(live_slots), bool)
        self._delta, self._delta_postings = {}, 0
