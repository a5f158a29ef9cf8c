"""The lexical index of the in-memory mode (no ``--data_dir``): FTS5 in a private in-memory SQLite database.

The memory :class:`~service.storage.journal.Journal` feeds it the same writes it is told about (upserts and
deletes, in the order they were acknowledged), so it holds what the store would: the documents' analysed terms,
independent of any model. A reload re-embeds vectors but keeps this index, like a data directory's. Its keys are
integers (:class:`training.lexical.LexicalIndex` ranks rowids), mapped to and from document ids here.

One connection, used under a lock by writers and searching threads alike (an in-memory database is private to
its connection); nothing survives a restart, like the documents themselves.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Sequence

from training.analyzer import Analyzer
from training.lexical import LexicalIndex

from ..documents import Document
from ..lexical import LexicalHits, LexicalSource


class MemoryLexical(LexicalSource):
    """BM25 over the documents written in this process; see the module docstring."""

    def __init__(self, analyzer: Analyzer) -> None:
        self.analyzer = analyzer
        self._index = LexicalIndex(sqlite3.connect(":memory:", check_same_thread=False), analyzer)
        self._lock = threading.Lock()
        self._keys: dict[str, int] = {}  # document id → rowid
        self._ids: dict[int, str] = {}  # rowid → document id
        self._next = 1

    def upsert(self, docs: Sequence[Document]) -> None:
        """Index ``docs`` (replacing what their ids held); the last of a repeated id wins."""
        with self._lock:
            rows = []
            for doc in docs:
                key = self._keys.get(doc.id)
                if key is None:
                    key, self._next = self._next, self._next + 1
                    self._keys[doc.id], self._ids[key] = key, doc.id
                rows.append((key, doc.text))
            last = dict(rows)  # a batch naming an id twice: its last text
            with self._index.connection:
                self._index.add_many(last.items())

    def delete(self, ids: Iterable[str]) -> None:
        with self._lock, self._index.connection:
            for doc_id in ids:
                key = self._keys.pop(doc_id, None)
                if key is not None:
                    del self._ids[key]
                    self._index.remove(key)

    def search(self, query: str, k: int) -> LexicalHits:
        with self._lock:
            result = self._index.search(query, k)
            return LexicalHits([(self._ids[key], score) for key, score in result.hits], result.terms)

    def info(self) -> dict:
        return {"engine": "sqlite-fts5", "analyzer": self.analyzer.describe(), "path": ":memory:",
                "documents": len(self._keys)}

    def close(self) -> None:
        with self._lock:
            self._index.connection.close()
