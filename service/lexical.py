"""Lexical (BM25) search beside the dense index: the one interface every storage mode answers.

A :class:`LexicalSource` ranks *documents by id* for one query text with BM25 over the deployment's
analyzer (:mod:`training.analyzer`). It is independent of the model: the same analysed terms serve every
model version, so a reload re-embeds vectors but never re-indexes words. Each storage mode supplies one
(``Storage.lexical_for(collection)``):

* local (``--data_dir``): the FTS5 index in the data directory's SQLite store (written in the same
  transaction as the document), read through a connection of its own;
* in memory: an FTS5 index in a private in-memory SQLite database, fed by the same writes;
* read-only index bundle: the bundle's ``lexical.sqlite3``, opened read-only;
* Milvus: Milvus's own BM25 function over the analysed terms.

Contract: :meth:`LexicalSource.search` returns at most ``k`` ``(document id, BM25 score)`` pairs, best first
(higher is better), and the query's analysed terms; no terms (only punctuation) means no hits, never an
error. User text is only ever words to look up: FTS5/Milvus query syntax in it is never interpreted. A hit
may name a document the serving collection no longer (or not yet) holds: the caller drops it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass


@dataclass(frozen=True)
class LexicalHits:
    """The best documents of one query, ``(document id, score)``, best first, and its analysed terms."""

    hits: list[tuple[str, float]]
    terms: tuple[str, ...]

    @property
    def empty_query(self) -> bool:
        """Nothing was left to search after analysis: lexical search has nothing to say about this query."""
        return not self.terms


class LexicalSource(ABC):
    """BM25 over the documents of one storage mode; see the module docstring for the contract."""

    @abstractmethod
    def search(self, query: str, k: int) -> LexicalHits: ...

    @abstractmethod
    def info(self) -> dict:
        """What ``/info`` shows under ``search.lexical``: at least ``engine`` and ``analyzer`` (a description)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""
