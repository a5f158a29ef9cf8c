"""The lexical index of a read-only index bundle: ``lexical.sqlite3``, written at build, read-only when served.

``python -m service build-index`` (:mod:`service.index_bundle`) writes :func:`save_lexical` beside the FAISS
files: one SQLite database with

    lexical, lexical_meta   the BM25 index of :class:`training.lexical.LexicalIndex` (FTS5, keyed by row
                            number), with the analyzer that built it recorded in ``lexical_meta``
    document_ids            row number → document id (``documents.jsonl``'s ids)

The registry lists and hashes it like every other file of the bundle, and the manifest's ``index`` section says
``"lexical": {"file", "analyzer", "documents"}``. A replica opens it read-only and immutable
(:class:`BundleLexical`): queries are analysed by the analyzer the bundle records, whatever ``--analyzer`` says,
since that is what its terms were made with.

A bundle published by the previous release has no ``lexical.sqlite3``: it still serves dense search, and its
source is a :class:`MissingLexical` whose :meth:`~MissingLexical.search` raises :class:`LexicalUnavailable`
(422, saying to rebuild the bundle) and whose ``info()`` says why (``available: false``).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path

from training.analyzer import Analyzer
from training.lexical import LexicalIndex

from ..documents import Document
from ..errors import Unprocessable
from ..lexical import LexicalHits, LexicalSource

LEXICAL_FILE = "lexical.sqlite3"


class LexicalUnavailable(Unprocessable):
    """Lexical search asked of a collection that has no lexical index (an index bundle of the previous release)."""


def save_lexical(docs: Sequence[Document], folder: Path, analyzer: Analyzer) -> dict:
    """Write the BM25 index of ``docs`` into ``folder/lexical.sqlite3``; returns the manifest's ``lexical`` facts."""
    path = folder / LEXICAL_FILE
    connection = sqlite3.connect(path)
    try:
        with connection:  # one transaction: the index, its analyzer record and the id mapping
            index = LexicalIndex(connection, analyzer)
            connection.execute("CREATE TABLE document_ids (row INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE)")
            connection.executemany("INSERT INTO document_ids (row, id) VALUES (?, ?)",
                                   ((row, doc.id) for row, doc in enumerate(docs)))
            index.add_many((row, doc.text) for row, doc in enumerate(docs))
        connection.execute("VACUUM")
    finally:
        connection.close()
    return {"file": LEXICAL_FILE, "analyzer": analyzer.describe(), "documents": len(docs)}


class BundleLexical(LexicalSource):
    """BM25 over a bundle's ``lexical.sqlite3``, read-only; a connection per searching thread."""

    def __init__(self, path: Path, facts: dict) -> None:
        self.path = path
        self.analyzer = Analyzer.from_description(facts["analyzer"])
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._index()  # fails now, not at the first query, when the file is not what the manifest says

    def _index(self) -> LexicalIndex:
        index = getattr(self._local, "index", None)
        if index is None:
            # immutable: a published bundle never changes, so SQLite takes no locks and writes nothing beside it
            connection = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro&immutable=1", uri=True,
                                         check_same_thread=False)
            with self._lock:
                self._connections.append(connection)
            index = self._local.index = LexicalIndex(connection, self.analyzer)
        return index

    def search(self, query: str, k: int) -> LexicalHits:
        index = self._index()
        result = index.search(query, k)
        if not result.hits:
            return LexicalHits([], result.terms)
        rows = [row for row, _ in result.hits]
        ids = dict(index.connection.execute(
            f"SELECT row, id FROM document_ids WHERE row IN ({', '.join('?' * len(rows))})", rows).fetchall())
        return LexicalHits([(ids[row], score) for row, score in result.hits if row in ids], result.terms)

    def info(self) -> dict:
        return {"engine": "sqlite fts5 (index bundle, read-only)", "analyzer": self.analyzer.describe(),
                "available": True}

    def close(self) -> None:
        with self._lock:
            connections, self._connections = self._connections, []
        for connection in connections:
            connection.close()


class MissingLexical(LexicalSource):
    """The lexical source of an index bundle without ``lexical.sqlite3`` (published by the previous release)."""

    def __init__(self, bundle: str) -> None:
        self.note = (f"index bundle {bundle} has no lexical index (published by an earlier release): dense search "
                     "only; rebuild it with python -m service build-index for lexical and hybrid search")

    def search(self, query: str, k: int) -> LexicalHits:
        raise LexicalUnavailable(self.note)

    def info(self) -> dict:
        return {"engine": None, "analyzer": None, "available": False, "note": self.note}
