"""A BM25 lexical index over SQLite FTS5: integer keys → analysed text, ranked by FTS5's ``bm25()``.

The :class:`~training.analyzer.Analyzer` does all the language work: a document is stored as its terms joined by
spaces, and FTS5's ``unicode61`` tokenizer (diacritics kept) only splits them again on the spaces, so the index
and every query see the analyzer's terms and nothing else. A query is the OR of its analysed terms, each quoted:
user text can never use FTS5 syntax (``"``, ``*``, ``NEAR``, ``AND``, ``-``, ``:``, parentheses), it is only
ever words to look up.

Keys are integers (SQLite rowids): the evaluation uses passage indices, a store its documents' rowids, so a
delete is one rowid lookup. The index works on a connection it is given (the table and an analyzer record
beside it are created on first use), and its writes join that connection's current transaction: whoever owns
the connection commits, e.g. a document and its index entry together. :meth:`LexicalIndex.open` makes a
connection of its own, in memory (evaluation) or on a file.

The analyzer that built an index is recorded in ``<table>_meta``; opening the index with another raises
:class:`~training.analyzer.AnalyzerError` instead of answering queries analysed differently from its documents.

Example::

    >>> from training.lexical import LexicalIndex
    >>> index = LexicalIndex.open()
    >>> index.add_many([(0, "Osmanlı padişahları"), (1, "Kahve nasıl yapılır?")])
    >>> index.search("Padişahlar kimdir?", k=10).keys
    [0]
    >>> index.search("?!", k=10).empty_query
    True
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from training.analyzer import DEFAULT_ANALYZER, Analyzer

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class LexicalResult:
    """The best keys of one query with their BM25 scores (higher is better), best first."""

    hits: list[tuple[int, float]]
    terms: tuple[str, ...]  # the query's analysed terms, each once

    @property
    def keys(self) -> list[int]:
        return [key for key, _ in self.hits]

    @property
    def empty_query(self) -> bool:
        """True when nothing was left to search after analysis (only punctuation): no hits, by design."""
        return not self.terms


def query_terms(analyzer: Analyzer, query: str) -> tuple[str, ...]:
    """The analysed terms of a query, each once, in order: what :func:`match_expression` looks up."""
    return tuple(dict.fromkeys(analyzer.terms(query)))


def match_expression(terms: Iterable[str]) -> str:
    """The FTS5 MATCH expression for ``terms``: their OR, every term quoted (a quote inside doubled), so it is a
    string to FTS5, never an operator (``AND``, ``NEAR``, ``-``), a prefix (``*``), a column (``:``) or a group."""
    return " OR ".join('"' + term.replace('"', '""') + '"' for term in terms)


def ranked_sql(table: str) -> str:
    """``(rowid, score)`` of the best ``?`` (LIMIT) rows of ``table`` matching ``?`` (a :func:`match_expression`),
    best first, ties by rowid: one statement, so a reader wrapping it (a join to its documents) reads one
    consistent snapshot."""
    if not _IDENTIFIER.fullmatch(table):
        raise ValueError(f"table name {table!r} is not a plain SQL identifier")
    return (f"SELECT rowid, -bm25({table}) AS score FROM {table} WHERE {table} MATCH ? "
            "ORDER BY score DESC, rowid LIMIT ?")


class LexicalIndex:
    """BM25 over one FTS5 table of ``connection``; see the module docstring for keys and transactions."""

    def __init__(self, connection: sqlite3.Connection, analyzer: Analyzer, table: str = "lexical"):
        if not _IDENTIFIER.fullmatch(table):
            raise ValueError(f"table name {table!r} is not a plain SQL identifier")
        self.connection = connection
        self.analyzer = analyzer
        self.table = table
        self._create_or_check()

    @classmethod
    def open(cls, path: str | Path = ":memory:", analyzer: Analyzer | None = None,
             table: str = "lexical") -> LexicalIndex:
        """An index on a connection of its own: ``:memory:`` (the default) or a database file."""
        return cls(sqlite3.connect(str(path)), analyzer or Analyzer.named(DEFAULT_ANALYZER), table)

    def add(self, key: int, text: str) -> None:
        """Index ``text`` under ``key``, replacing what ``key`` held."""
        self.add_many([(key, text)])

    def add_many(self, items: Iterable[tuple[int, str]]) -> None:
        rows = [(int(key), " ".join(self.analyzer.terms(text))) for key, text in items]
        self.connection.executemany(f"DELETE FROM {self.table} WHERE rowid = ?", [(key,) for key, _ in rows])
        self.connection.executemany(f"INSERT INTO {self.table}(rowid, terms) VALUES (?, ?)", rows)

    def remove(self, key: int) -> None:
        """Drop ``key`` (nothing happens when it is not indexed)."""
        self.connection.execute(f"DELETE FROM {self.table} WHERE rowid = ?", (int(key),))

    def __len__(self) -> int:
        return self.connection.execute(f"SELECT count(*) FROM {self.table}").fetchone()[0]

    def search(self, query: str, k: int) -> LexicalResult:
        """The ``k`` best keys for ``query``: any of its terms matches (OR), ``bm25()`` ranks, ties by key."""
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        terms = query_terms(self.analyzer, query)
        if not terms:
            return LexicalResult([], terms)
        rows = self.connection.execute(ranked_sql(self.table), (match_expression(terms), k)).fetchall()
        return LexicalResult([(key, float(score)) for key, score in rows], terms)

    def _create_or_check(self) -> None:
        meta = f"{self.table}_meta"
        self.connection.execute(f"CREATE TABLE IF NOT EXISTS {meta} (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        row = self.connection.execute(f"SELECT value FROM {meta} WHERE key = 'analyzer'").fetchone()
        if row is not None:
            self.analyzer.check_same(json.loads(row[0]))
        else:
            self.connection.execute(f"INSERT INTO {meta}(key, value) VALUES ('analyzer', ?)",
                                    (json.dumps(self.analyzer.describe(), sort_keys=True),))
        # remove_diacritics 0: the analyzer decides what is one term (ş and s stay two letters in Turkish).
        self.connection.execute(f"CREATE VIRTUAL TABLE IF NOT EXISTS {self.table} USING "
                                f"fts5(terms, tokenize = 'unicode61 remove_diacritics 0')")
