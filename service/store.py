"""Durable document state: one SQLite database in the data directory, ``kill -9`` safe.

``<data_dir>/qaembed.sqlite3`` (stdlib :mod:`sqlite3`, WAL journal mode, ``synchronous=FULL``) holds::

    documents   id, text, metadata (JSON), vector (float32 blob: one row per window of a long document,
                :mod:`training.chunking`), spans (JSON [[start, end], ...] of the windows; NULL: one vector for
                the whole text), layout (dimension and chunking the vectors were cut with, see
                ``EmbeddingModel.layout``) + the model version that embedded it
    lexical     the documents' BM25 index (:class:`training.lexical.LexicalIndex`, FTS5, keyed by rowid),
                analysed by the deployment's analyzer, whose description is stored beside it
    feedback    relevance feedback records (JSON), in the order they were stored
    store_meta  format version; where the previous release's files went when they were migrated

* Every write (a document upsert or delete with its lexical index entries and vectors, a feedback record) is
  one transaction, committed (and so fsync-ed) before it is acknowledged. SQLite's own log makes a commit
  atomic: a crash at any point leaves the database as it was before or after it, never in between.
* A write that fails rolls back whole and is reported as :class:`WriteFailed`. A full disk may free up (and
  a reader's moment of SQLite locking passes), so later writes are tried; after any other error (an I/O
  error above all: the page cache can no longer be trusted) the store refuses writes
  (:attr:`DocumentStore.broken`) until a restart recovers from the disk.
* The analyzer is fixed when the database is created: opening it with another one raises :class:`StoreError`
  naming both (an index analysed one way answers queries analysed another way wrongly and silently).
* A data directory written by the previous release (write-ahead log + snapshots, :mod:`service.wal`) is
  migrated at the first start, in one transaction; its files are then moved into ``wal-store.migrated-<time>/``
  (kept for a rollback, never deleted).
* One writer per directory: the server's storage takes the directory's lock (:mod:`service.storage.lock`)
  before it opens the store, and SQLite's own locking refuses a second writer too. Readers
  (:meth:`DocumentStore.reader`, e.g. ``python -m service export-feedback``) open the database read-only.

Example::

    >>> import numpy as np, tempfile
    >>> from service.documents import Document
    >>> from service.store import DocumentStore
    >>> d = tempfile.mkdtemp()
    >>> store = DocumentStore(d); _ = store.open()
    >>> store.upsert([Document("a", "Ankara başkenttir")], np.ones((1, 2), np.float32), "v1")
    >>> store.add_feedback({"query": "a?", "label": "positive"})
    >>> store.close(); state = DocumentStore(d).open()
    >>> state.docs["a"].text, state.embedded["a"][1]
    ('Ankara başkenttir', 'v1')
    >>> [r["query"] for r in DocumentStore.reader(d).read_feedback()]
    ['a?']
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from training.analyzer import DEFAULT_ANALYZER, Analyzer, AnalyzerError
from training.chunking import WindowVectors
from training.lexical import LexicalIndex

from .documents import Document
from .wal import LegacyCorrupt, has_legacy, move_aside, read_legacy

log = logging.getLogger("service.store")

DATABASE = "qaembed.sqlite3"
FORMAT = 2  # 2: several vectors per document (windows), spans and layout columns; 1 is migrated in place
_STALE = "(model_version != ? OR layout != ?)"  # vectors the serving model (and its chunking) did not compute
# SQLITE_BUSY, SQLITE_LOCKED, SQLITE_FULL: another connection held the database too long, or the disk was full;
# both may pass, unlike an I/O error (the primary code is the low byte of SQLite's extended one)
_TRANSIENT = {5, 6, 13}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS store_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS documents (
    rowid INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, text TEXT NOT NULL, metadata TEXT NOT NULL,
    vector BLOB NOT NULL, model_version TEXT NOT NULL, spans TEXT, layout TEXT NOT NULL DEFAULT '');
CREATE TABLE IF NOT EXISTS feedback (seq INTEGER PRIMARY KEY, record TEXT NOT NULL);
"""


def _upgrade(con: sqlite3.Connection) -> None:
    """Format 1 (one vector per document) → 2: the spans and layout columns (NULL: one whole-text vector; ''
    layout: cut before chunking, which the storage checks against the model at start). Idempotent."""
    columns = {row[1] for row in con.execute("PRAGMA table_info(documents)")}
    if "spans" not in columns:
        con.execute("ALTER TABLE documents ADD COLUMN spans TEXT")
    if "layout" not in columns:
        con.execute("ALTER TABLE documents ADD COLUMN layout TEXT NOT NULL DEFAULT ''")
    con.execute("UPDATE store_meta SET value = ? WHERE key = 'format' AND value != ?", (str(FORMAT), str(FORMAT)))


def _pack(rows: WindowVectors, doc: int) -> tuple[bytes, str | None]:
    """Document ``doc``'s vectors as one float32 blob (windows × dimension) and its spans as JSON (None: one
    whole-text vector)."""
    mine = np.flatnonzero(rows.owners == doc)
    spans = [rows.spans[i] for i in mine]
    blob = np.ascontiguousarray(rows.vectors[mine], dtype="<f4").tobytes()
    return blob, None if spans == [None] else json.dumps([list(s) for s in spans])


class StoreError(RuntimeError):
    """The data directory is unusable (corrupt, written by another analyzer, not a data directory)."""


class WriteFailed(StoreError):
    """A write could not be made durable (disk full, I/O error): it was not acknowledged, nothing of it kept."""


@dataclass
class RecoveredState:
    """What a store holds at start: documents in write order, and their vectors."""

    docs: dict[str, Document] = field(default_factory=dict)
    # id → (vectors, flat: windows × dimension float32, the model version that computed them), for every document
    embedded: dict[str, tuple[np.ndarray, str]] = field(default_factory=dict)
    # id → (layout the vectors were cut with, "" before format 2; spans of the windows, None: one whole vector)
    windows: dict[str, tuple[str, list | None]] = field(default_factory=dict)
    migrated: bool = False  # the previous release's files were migrated by this start


class DocumentStore:
    """The SQLite database of one data directory. Thread-safe: one connection, used under a lock."""

    def __init__(self, data_dir: str | Path, analyzer: Analyzer | None = None) -> None:
        self.dir = Path(data_dir)
        self.path = self.dir / DATABASE
        self.analyzer = analyzer or Analyzer.named(DEFAULT_ANALYZER)
        self.broken: str | None = None  # why writes are refused until a restart
        self._lock = threading.Lock()
        self._connection: sqlite3.Connection | None = None
        self._lexical: LexicalIndex | None = None

    @classmethod
    def reader(cls, data_dir: str | Path) -> DocumentStore:
        """A read-only store (for :meth:`read_feedback`) on a data directory a server may be writing to."""
        store = cls(data_dir)
        if not store.path.exists():
            raise StoreError(f"{data_dir} is not a service data directory (no {DATABASE})")
        store._connection = sqlite3.connect(f"{store.path.resolve().as_uri()}?mode=ro", uri=True,
                                            check_same_thread=False)
        return store

    # ------------------------------------------------------------------ opening
    def open(self) -> RecoveredState:
        """Open (create) the database, migrate the previous release's files if there are any, and return
        every document with its vector. Raises :class:`StoreError` for another analyzer or a corrupt log."""
        self.dir.mkdir(parents=True, exist_ok=True)
        # autocommit: transactions are this class's own BEGIN IMMEDIATE ... COMMIT
        con = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False, timeout=5)
        try:
            if con.execute("PRAGMA journal_mode=WAL").fetchone()[0] != "wal":
                raise StoreError(f"{self.path}: SQLite cannot use its write-ahead log here")
            con.execute("PRAGMA synchronous=FULL")
            con.executescript(_SCHEMA)
            try:
                self._lexical = LexicalIndex(con, self.analyzer)
            except AnalyzerError as exc:
                raise StoreError(f"{self.path}: {exc}. The analyzer is fixed when a data directory is created: "
                                 f"start with the stored one (--analyzer), or index into a new --data_dir") from None
            except sqlite3.OperationalError as exc:  # "database is locked": another process writes here
                raise StoreError(f"{self.path} is in use by another process: {exc}") from None
            _upgrade(con)
            con.execute("INSERT OR IGNORE INTO store_meta VALUES ('format', ?)", (str(FORMAT),))
        except BaseException:
            con.close()
            raise
        self._connection = con
        try:
            migrated = self._migrate() if has_legacy(self.dir) else False
        except BaseException:
            self.close()
            raise
        state = RecoveredState(migrated=migrated)
        for doc_id, text, metadata, vector, version, spans, layout in con.execute(
                "SELECT id, text, metadata, vector, model_version, spans, layout FROM documents ORDER BY rowid"):
            state.docs[doc_id] = Document(doc_id, text, json.loads(metadata))
            state.embedded[doc_id] = (np.frombuffer(vector, dtype="<f4"), version)
            state.windows[doc_id] = (layout, None if spans is None else [tuple(s) for s in json.loads(spans)])
        return state

    def _migrate(self) -> bool:
        """Bring the previous release's files in (once: a start cut between the commit and the move only
        finishes the move), then move them aside. Returns whether anything was migrated."""
        done = self._connection.execute("SELECT value FROM store_meta WHERE key = 'migrated_seq'").fetchone()
        if done is None:
            try:
                legacy = read_legacy(self.dir)
            except LegacyCorrupt as exc:
                raise StoreError(f"cannot migrate {self.dir}: {exc}") from None
            with self._transaction() as con:
                con.execute("DELETE FROM feedback")
                for doc in legacy.docs.values():
                    self._put(con, [doc], np.stack([legacy.embedded[doc.id][0]]), legacy.embedded[doc.id][1])
                con.executemany("INSERT INTO feedback(record) VALUES (?)",
                                [(json.dumps(r, ensure_ascii=False),) for r in legacy.feedback])
                con.execute("INSERT INTO store_meta VALUES ('migrated_seq', ?)", (str(legacy.seq),))
            log.info("migrated the write-ahead log store in %s into SQLite: %d documents, %d feedback (seq %d)",
                     self.dir, len(legacy.docs), len(legacy.feedback), legacy.seq)
        aside = move_aside(self.dir)
        log.info("the previous release's files are kept in %s (for a rollback; delete them when not needed)", aside)
        return done is None

    # ------------------------------------------------------------------ writing
    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One transaction, committed when the block ends; any failure rolls all of it back (WriteFailed)."""
        with self._lock:
            if self._connection is None:
                raise StoreError("the store is not open")
            if self.broken:
                raise WriteFailed(f"the store refuses writes until a restart: {self.broken}")
            con = self._connection
            try:
                con.execute("BEGIN IMMEDIATE")
                yield con
                con.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback(con)
                if (getattr(exc, "sqlite_errorcode", 0) & 0xFF) not in _TRANSIENT:
                    self.broken = f"{exc}"
                log.error("store write failed: %s%s", exc, " (writes refused until restart)" if self.broken else "")
                raise WriteFailed(f"{self.path.name}: {exc}") from None
            except BaseException:
                self._rollback(con)
                raise

    @staticmethod
    def _rollback(con: sqlite3.Connection) -> None:
        try:
            if con.in_transaction:
                con.execute("ROLLBACK")
        except sqlite3.Error as exc:  # SQLite rolls back itself at the next open
            log.error("rollback failed: %s", exc)

    def _put(self, con: sqlite3.Connection, docs: Sequence[Document], vectors: np.ndarray, version: str,
             rows: WindowVectors | None = None, layout: str = "") -> None:
        """Insert or replace ``docs`` (a replaced one moves to the end of the write order) with their index entries;
        ``rows``: the windows' vectors (owners index ``docs``), else ``vectors`` has one row per document."""
        rows = rows or WindowVectors.one_each(vectors)
        for doc in docs:
            old = con.execute("SELECT rowid FROM documents WHERE id = ?", (doc.id,)).fetchone()
            if old is not None:
                self._lexical.remove(old[0])
                con.execute("DELETE FROM documents WHERE rowid = ?", old)
        lexical = []
        for i, doc in enumerate(docs):
            blob, spans = _pack(rows, i)
            cursor = con.execute(
                "INSERT INTO documents(id, text, metadata, vector, model_version, spans, layout) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (doc.id, doc.text, json.dumps(dict(doc.metadata), ensure_ascii=False), blob, version, spans, layout))
            lexical.append((cursor.lastrowid, doc.text))
        self._lexical.add_many(lexical)

    def upsert(self, docs: Sequence[Document], vectors: np.ndarray, model_version: str,
               rows: WindowVectors | None = None, layout: str = "") -> None:
        """Durably store ``docs`` with their vectors (embedded by ``model_version``; ``rows``: several per document,
        cut as ``layout`` says) and lexical index entries."""
        with self._transaction() as con:
            self._put(con, docs, vectors, model_version, rows, layout)

    def delete(self, ids: Iterable[str]) -> None:
        """Durably remove ``ids`` (unknown ones are ignored) and their lexical index entries."""
        with self._transaction() as con:
            for doc_id in ids:
                row = con.execute("SELECT rowid FROM documents WHERE id = ?", (doc_id,)).fetchone()
                if row is not None:
                    self._lexical.remove(row[0])
                    con.execute("DELETE FROM documents WHERE rowid = ?", row)

    def save_vectors(self, docs: Sequence[Document], vectors: np.ndarray, model_version: str,
                     rows: WindowVectors | None = None, layout: str = "") -> int:
        """Store ``model_version``'s vectors of ``docs`` (``rows``: windows, cut as ``layout`` says) where another
        model's (or another layout's) are stored, after a re-embedding: a later start then re-embeds nothing; a
        document changed or deleted meanwhile keeps what it has. Returns how many were replaced."""
        rows = rows or WindowVectors.one_each(vectors)
        with self._transaction() as con:
            return sum(con.execute(
                f"UPDATE documents SET vector = ?, spans = ?, model_version = ?, layout = ? WHERE id = ? AND {_STALE}",
                (*_pack(rows, i), model_version, layout, d.id, model_version, layout)).rowcount
                for i, d in enumerate(docs))

    def stale_vectors(self, model_version: str, layout: str = "") -> int:
        """How many documents' stored vectors another model version (or layout: dimension, chunking) computed."""
        with self._lock:
            return self._connection.execute(f"SELECT count(*) FROM documents WHERE {_STALE}",
                                            (model_version, layout)).fetchone()[0]

    def add_feedback(self, record: Mapping) -> None:
        """Durably store one feedback record (any JSON object)."""
        with self._transaction() as con:
            con.execute("INSERT INTO feedback(record) VALUES (?)", (json.dumps(dict(record), ensure_ascii=False),))

    # ------------------------------------------------------------------ reading
    def lexical_terms(self) -> list[tuple[str, str]]:
        """``(document id, its analysed terms joined by spaces)`` of every document, in rowid order: what the FTS5
        index holds, for the in-memory postings searches rank with (:mod:`service.storage.memory_lexical`)."""
        with self._lock:
            return self._connection.execute(
                "SELECT d.id, l.terms FROM lexical AS l JOIN documents AS d ON d.rowid = l.rowid ORDER BY l.rowid"
            ).fetchall()

    def read_feedback(self) -> list[dict]:
        """Every feedback record, oldest first (a read transaction: only committed records)."""
        with self._lock:
            rows = self._connection.execute("SELECT record FROM feedback ORDER BY seq").fetchall()
        return [json.loads(record) for record, in rows]

    def close(self) -> None:
        with self._lock:
            if self._connection is not None:
                try:
                    self._connection.close()  # the last connection checkpoints SQLite's log into the file
                except sqlite3.Error as exc:
                    log.error("closing %s: %s", self.path, exc)
                self._connection = None
