"""The lexical search of the FAISS modes: BM25 postings in memory (:class:`training.bm25.Bm25Postings`).

Where the words are kept durably is the storage mode's business: the data directory's SQLite store writes a
document's FTS5 entry in the transaction that stores it (:mod:`service.store`); an index bundle carries its
``lexical.sqlite3`` (:mod:`.bundle_lexical`); the in-memory mode keeps nothing. Queries are not ranked by FTS5's
``bm25()``, which is called once per matching row (250-880 ms a query at 100k documents, where a common stem
matches most of them), but by postings loaded from those terms at start (:meth:`MemoryLexical.load`) and fed
every acknowledged write after (:meth:`MemoryLexical.upsert`, :meth:`MemoryLexical.delete`): the same scores
(FTS5's formula and constants over the same terms), a few milliseconds a query.

The index is model-independent: a reload re-embeds vectors but keeps it. Thread-safe (the postings' lock).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from training.analyzer import Analyzer
from training.bm25 import Bm25Postings
from training.lexical import query_terms

from ..documents import Document
from ..lexical import LexicalHits, LexicalSource


class MemoryLexical(LexicalSource):
    """BM25 over documents by id; see the module docstring. ``kept``: where the terms are durable (for ``/info``)."""

    def __init__(self, analyzer: Analyzer, kept: str = "nowhere (in memory)") -> None:
        self.analyzer = analyzer
        self.kept = kept
        self._postings = Bm25Postings()

    def load(self, documents: Iterable[tuple[str, str]]) -> None:
        """Index ``(document id, analysed terms joined by spaces)`` pairs, as the FTS5 tables hold them."""
        self._postings.add_many((doc_id, terms.split()) for doc_id, terms in documents)

    def upsert(self, docs: Sequence[Document]) -> None:
        """Index ``docs`` (replacing what their ids held); the last of a repeated id wins."""
        self._postings.add_many((doc.id, self.analyzer.terms(doc.text)) for doc in docs)

    def delete(self, ids: Iterable[str]) -> None:
        for doc_id in ids:
            self._postings.remove(doc_id)

    def search(self, query: str, k: int) -> LexicalHits:
        terms = query_terms(self.analyzer, query)
        return LexicalHits(self._postings.search(terms, k) if terms else [], terms)

    def info(self) -> dict:
        return {"engine": "bm25 postings", "formula": "sqlite fts5 bm25()", "analyzer": self.analyzer.describe(),
                "terms_kept": self.kept, "documents": len(self._postings)}
