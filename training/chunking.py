"""Long passages as overlapping token windows, and a passage's score as its best window's.

A model reads at most ``max_seq_length`` tokens; a longer passage embedded whole is silently cut to its
beginning (74 % of the shared Turkish passages were). Instead the passage is split into windows of at most
``window`` content tokens (``max_seq_length`` less the special tokens), each starting ``stride`` tokens after
the previous one, the last one ending at the passage's end; every window is embedded, and the passage scores
as its best window. Windows are character spans of the original text (from the tokenizer's offsets), so a
window is embedded as ``text[start:end]`` by whatever encoder runs (sentence-transformers in training, the
ONNX runtime in the export gates and the service) and a search hit can say where in the passage it matched.

This module is the one place windows are cut and scored: training's evaluation, the export quality gate, the
retrain promotion gate and the service all call it, so their numbers predict ``/search``.

Example::

    >>> offsets = [(0, 3), (4, 7), (8, 11), (12, 15), (16, 19)]   # five 3-letter words
    >>> token_windows(offsets, window=2, stride=2)
    [(0, 7), (8, 15), (12, 19)]
    >>> token_windows(offsets, window=8, stride=4)                # fits: one window, the whole passage
    [(0, 19)]
    >>> import numpy as np
    >>> best_per_owner(np.array([[0.1, 0.9, 0.3]]), owners=np.array([0, 0, 1]), n_owners=2)
    array([[0.9, 0.3]], dtype=float32)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

Span = tuple[int, int]  # [start, end) character offsets in the passage
# texts → per text, the character offsets of its content tokens (untruncated, no special tokens)
OffsetsOf = Callable[[Sequence[str]], list[list[Span]]]


def default_stride(window: int) -> int:
    """Half a window: every token is seen by some window with at least a quarter window of context each side."""
    return max(1, window // 2)


def token_windows(offsets: Sequence[Span], window: int, stride: int) -> list[Span]:
    """Character spans of the windows over a passage whose content tokens have ``offsets`` (no special tokens).

    A passage of at most ``window`` tokens is one window; an empty one has none. Windows start every
    ``stride`` tokens; the last starts ``window`` tokens before the end, so every token is in a window. A window
    never cuts a word: its start moves forward to the next word's first token and its end back to a word's last
    (a word: tokens with no gap between their offsets), unless the window holds no word boundary at all; so a
    window's text tokenizes into the same tokens again, and at most ``window`` of them.
    """
    if window < 1 or stride < 1:
        raise ValueError(f"window and stride must be at least 1, got {window} and {stride}")
    n = len(offsets)
    if n == 0:
        return []
    if n <= window:
        return [(offsets[0][0], offsets[-1][1])]
    word_start = [i == 0 or offsets[i][0] > offsets[i - 1][1] for i in range(n)] + [True]
    starts = list(range(0, n - window, stride))
    starts.append(n - window)
    spans: list[Span] = []
    for nominal in starts:
        start = next((i for i in range(nominal, min(nominal + window, n)) if word_start[i]), nominal)
        end = min(nominal + window, n)  # exclusive token index
        end = next((j for j in range(end, start, -1) if word_start[j]), end)
        span = (offsets[start][0], offsets[end - 1][1])
        if not spans or span != spans[-1]:
            spans.append(span)
    return spans


def best_per_owner(scores: np.ndarray, owners: np.ndarray, n_owners: int) -> np.ndarray:
    """``scores[q, w]`` of windows → ``[q, n_owners]``: each owner's (passage's) best window score.

    Owners without windows score ``-inf``.
    """
    scores = np.asarray(scores, dtype=np.float32)
    best = np.full((scores.shape[0], n_owners), -np.inf, dtype=np.float32)
    for query in range(scores.shape[0]):
        np.maximum.at(best[query], owners, scores[query])
    return best


@dataclass(frozen=True)
class Chunking:
    """How passages are cut: windows of ``window`` content tokens every ``stride`` tokens; ``stride`` 0 is off
    (a passage is embedded whole, i.e. truncated to ``max_seq_length`` by the model)."""

    window: int
    stride: int

    @classmethod
    def for_model(cls, max_seq_length: int, special_tokens: int, stride: int | None = None) -> Chunking:
        """``stride`` None: :func:`default_stride`; 0: off."""
        window = max(1, int(max_seq_length) - int(special_tokens))
        stride = default_stride(window) if stride is None else int(stride)
        if stride < 0:
            raise ValueError(f"chunk stride must be >= 0 (0 = no chunking), got {stride}")
        return cls(window, stride)

    @property
    def enabled(self) -> bool:
        return self.stride > 0

    def describe(self) -> dict:
        """What metrics.json, manifests and ``/info`` record: ``{"window", "stride"}`` (stride 0 = off)."""
        return {"window": self.window, "stride": self.stride}

    def split(self, texts: Sequence[str], offsets_of: OffsetsOf) -> Windows:
        """The windows of ``texts`` (offsets computed only when chunking is on)."""
        if not self.enabled:
            return Windows.whole(texts)
        return split_windows(texts, offsets_of(texts), self.window, self.stride)


@dataclass(frozen=True)
class Windows:
    """The windows of a batch of passages, in passage order: ``texts[i]`` is window ``i``, a piece of passage
    ``owners[i]`` at ``spans[i]``; ``spans[i]`` is None where the passage is one window (embedded whole, as
    it would be without chunking). Every passage has at least one window."""

    texts: list[str]
    owners: np.ndarray  # int64 [windows]
    spans: list[Span | None]
    count: int  # passages

    @classmethod
    def whole(cls, texts: Sequence[str]) -> Windows:
        return cls(list(texts), np.arange(len(texts), dtype=np.int64), [None] * len(texts), len(texts))


def split_windows(texts: Sequence[str], offsets: Sequence[Sequence[Span]], window: int, stride: int) -> Windows:
    """:func:`token_windows` of every text; a text of one window (or none: empty) stays whole, span None."""
    pieces: list[str] = []
    owners: list[int] = []
    spans: list[Span | None] = []
    for owner, (text, token_offsets) in enumerate(zip(texts, offsets, strict=True)):
        cut = token_windows(token_offsets, window, stride)
        if len(cut) <= 1:
            pieces.append(text)
            owners.append(owner)
            spans.append(None)
            continue
        for start, end in cut:
            pieces.append(text[start:end])
            owners.append(owner)
            spans.append((start, end))
    return Windows(pieces, np.asarray(owners, dtype=np.int64), spans, len(texts))


@dataclass(frozen=True)
class WindowVectors:
    """Unit vectors of passages' windows (row ``i`` of ``vectors`` is window ``i``, of passage ``owners[i]``).

    What a chunking passage encoder returns; :func:`training.metrics.similarity` scores a passage as
    :meth:`best` of its windows, as the service's search does.
    """

    vectors: np.ndarray  # float32 [windows, dim]
    owners: np.ndarray  # int64 [windows]
    spans: list[Span | None]
    count: int  # passages

    @classmethod
    def one_each(cls, vectors: np.ndarray) -> WindowVectors:
        """One (whole) window per passage: the unchunked case."""
        vectors = np.asarray(vectors, dtype=np.float32)
        return cls(vectors, np.arange(len(vectors), dtype=np.int64), [None] * len(vectors), len(vectors))

    @classmethod
    def of_documents(cls, count: int, dim: int, vectors: np.ndarray, owners: np.ndarray | None = None,
                     spans: Sequence[Span | None] | None = None) -> WindowVectors:
        """The rows of ``count`` documents as a collection's ``upsert`` takes them (``owners`` None: one row each,
        ``spans`` None: whole texts); checks that every document has at least one row, in order."""
        vectors = np.asarray(vectors, dtype=np.float32).reshape(-1, dim)
        owners = np.arange(count, dtype=np.int64) if owners is None else np.asarray(owners, dtype=np.int64)
        spans = [None] * len(vectors) if spans is None else list(spans)
        if not (len(vectors) == len(owners) == len(spans)) or (
                count and (np.any(np.diff(owners) < 0) or set(owners.tolist()) != set(range(count)))):
            raise ValueError(f"{len(vectors)} vectors, {len(owners)} owners and {len(spans)} spans do not cover "
                             f"{count} documents in order")
        return cls(vectors, owners, spans, count)

    def select(self, keep: Sequence[int]) -> WindowVectors:
        """The rows of the passages ``keep`` (indices in order), owners renumbered 0..len(keep)-1."""
        if len(keep) == self.count:
            return self
        chosen = np.flatnonzero(np.isin(self.owners, np.asarray(keep, dtype=np.int64)))
        renumber = {old: new for new, old in enumerate(keep)}
        return WindowVectors(self.vectors[chosen], np.asarray([renumber[int(o)] for o in self.owners[chosen]],
                                                              dtype=np.int64), [self.spans[i] for i in chosen],
                             len(keep))

    def best(self, queries: np.ndarray) -> np.ndarray:
        """``[queries, passages]``: each passage's best window score (inner product) per query row."""
        return best_per_owner(np.asarray(queries, dtype=np.float32) @ self.vectors.T, self.owners, self.count)

    def rows_of(self, passage: int) -> np.ndarray:
        return np.flatnonzero(self.owners == passage)


def chunked_encoder(encode: Callable[[Sequence[str]], np.ndarray], offsets_of: OffsetsOf,
                    chunking: Chunking) -> Callable[[Sequence[str]], WindowVectors]:
    """A passage encoder that embeds every window of every passage (``encode`` embeds plain passages)."""

    def encode_passages(texts: Sequence[str]) -> WindowVectors:
        windows = chunking.split(list(texts), offsets_of)
        vectors = np.asarray(encode(windows.texts), dtype=np.float32) if windows.texts else np.empty((0, 0))
        return WindowVectors(vectors, windows.owners, windows.spans, windows.count)

    encode_passages.chunking = chunking  # type: ignore[attr-defined]
    return encode_passages
