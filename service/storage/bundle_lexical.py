"""The lexical index of a read-only index bundle: ``lexical.sqlite3``, written at build, read-only when served.

``python -m service build-index`` (:mod:`service.index_bundle`) writes :func:`save_lexical` beside the FAISS
files: one SQLite database with

    lexical, lexical_meta   the BM25 index of :class:`training.lexical.LexicalIndex` (FTS5, keyed by row
                            number), with the analyzer that built it recorded in ``lexical_meta``
    document_ids            row number → document id (``documents.jsonl``'s ids)

The registry lists and hashes it like every other file of the bundle, and the manifest's ``index`` section says
``"lexical": {"file", "analyzer", "documents"}``. A replica reads it once, read-only, into in-memory postings
(:class:`BundleLexical`, :mod:`.memory_lexical`): queries are analysed by the analyzer the bundle records,
whatever ``--analyzer`` says, since that is what its terms were made with.

A bundle published by the previous release has no ``lexical.sqlite3``: it still serves dense search, and its
source is a :class:`MissingLexical` whose :meth:`~MissingLexical.search` raises :class:`LexicalUnavailable`
(422, saying to rebuild the bundle) and whose ``info()`` says why (``available: false``).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path

from training.analyzer import Analyzer
from training.lexical import LexicalIndex

from ..documents import Document
from ..errors import Unprocessable
from ..lexical import LexicalHits, LexicalSource
from .memory_lexical import MemoryLexical

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


class BundleLexical(MemoryLexical):
    """BM25 over a bundle's ``lexical.sqlite3``: its terms loaded into postings once (the file is read-only,
    immutable: SQLite takes no locks and writes nothing beside it), queries analysed by the bundle's analyzer."""

    def __init__(self, path: Path, facts: dict) -> None:
        super().__init__(Analyzer.from_description(facts["analyzer"]), kept=f"index bundle file {path.name}")
        connection = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro&immutable=1", uri=True)
        try:
            LexicalIndex(connection, self.analyzer)  # the file is what the manifest says: its analyzer recorded
            self.load(connection.execute("SELECT d.id, l.terms FROM lexical AS l JOIN document_ids AS d "
                                         "ON d.row = l.rowid ORDER BY l.rowid"))
        finally:
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
