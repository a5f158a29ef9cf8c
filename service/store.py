"""Durable document state: atomic snapshots plus a write-ahead log (WAL), ``kill -9`` safe.

Layout of the data directory::

    CURRENT                      name of the live snapshot (replaced atomically)
    snapshots/<seq>-<id>/        meta.json, documents.jsonl, vectors.npy, feedback.jsonl (sha256 in meta.json)
    wal/<first seq>.log          frames: u32 length, u32 crc32, JSON payload (:mod:`service.wal`)

* Every write (document upsert/delete, relevance feedback) is appended to the WAL and ``fsync``-ed
  before it is acknowledged.
* Feedback is append-only: a snapshot carries all of it (the previous snapshot's ``feedback.jsonl``
  plus the feedback logged since), so only the feedback since the last snapshot is held in memory.
  :meth:`DurableStore.read_feedback` reads it all back without writing anything, so it is safe
  while a server owns the directory.
* A snapshot is written into a temporary folder, fsync-ed, renamed, and only then made live by
  atomically replacing ``CURRENT``; WAL segments it covers are deleted afterwards. A crash at any
  point leaves either the old or the new snapshot live, plus the WAL records after it.
* At start the live snapshot is verified (sha256) and the WAL replayed; a torn frame at the end of
  the last segment (a write cut by the crash, never acknowledged) is cut off, and so is one ending an
  earlier segment when the next segment starts right after it (an append that failed, never acknowledged).
  A bad frame that could hide acknowledged records stops the start with an error instead.
* An append that fails (disk full, I/O error) is cut back out of the log and reported; after an I/O
  error the log refuses writes (``broken``) until a restart recovers from the disk.
* Vectors travel with the documents and record the model version that computed them, so a restart
  with the same model re-embeds nothing.
* One writer per directory: the server's storage takes the directory's lock before it opens a store
  here (:mod:`service.storage.lock`); readers (``create=False``) need none.

Example::

    >>> import numpy as np, tempfile
    >>> from service.documents import Document
    >>> from service.store import DurableStore
    >>> d = tempfile.mkdtemp()
    >>> store = DurableStore(d); state = store.recover(); store.open_log()
    >>> store.append_upsert([Document("a", "alpha")], np.ones((1, 2), np.float32), "v1")
    1
    >>> store.close(); state = DurableStore(d).recover()
    >>> state.docs["a"].text, state.embedded["a"][1], state.seq
    ('alpha', 'v1', 1)
    >>> store = DurableStore(d); _ = store.recover(); store.open_log()
    >>> store.append_feedback({"query": "a?", "label": "positive"})
    2
    >>> store.close(); [r["query"] for r in DurableStore(d).read_feedback()]
    ['a?']
"""

from __future__ import annotations

import base64
import errno
import json
import logging
import os
import shutil
import threading
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from export.bundle import sha256_file
from export.fsutil import fsync_dir, write_durably

from .documents import Document
from .wal import encode_frame, hides_records, read_frames, segment_chain, segment_path, segments

log = logging.getLogger("service.store")

FORMAT = 1
FEEDBACK = "feedback.jsonl"


class StoreError(RuntimeError):
    """The data directory is unusable (corrupt snapshot or log in the middle)."""


class WriteFailed(StoreError):
    """A write could not be made durable (disk full, I/O error): it was not acknowledged."""


class _SnapshotMoved(Exception):
    """A new snapshot went live while reading; read again."""


@dataclass
class RecoveredState:
    docs: dict[str, Document] = field(default_factory=dict)  # insertion order = first write order
    # id → (vector, the model version that computed it), for every document in docs
    embedded: dict[str, tuple[np.ndarray, str]] = field(default_factory=dict)
    seq: int = 0  # last sequence number applied
    snapshot_seq: int = 0
    replayed: int = 0  # WAL records applied after the snapshot
    truncated_bytes: int = 0  # torn tail cut off the log
    feedback: list[tuple[int, dict]] = field(default_factory=list)  # (seq, record) logged after the snapshot

    def put(self, doc: Document, vector: np.ndarray, model_version: str) -> None:
        self.docs.pop(doc.id, None)  # re-insert: keep write order
        self.docs[doc.id] = doc
        self.embedded[doc.id] = (vector, model_version)

    def drop(self, doc_id: str) -> None:
        self.docs.pop(doc_id, None)
        self.embedded.pop(doc_id, None)


class DurableStore:
    """WAL + snapshots in one directory. Thread-safe; appends are serialised by an internal lock."""

    def __init__(self, data_dir: str | Path, fsync: bool = True, create: bool = True) -> None:
        self.dir = Path(data_dir)
        self.fsync = fsync
        self.snap_dir = self.dir / "snapshots"
        self.wal_dir = self.dir / "wal"
        for d in (self.dir, self.snap_dir, self.wal_dir) if create else ():  # readers create nothing
            d.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._file = None
        self.broken: str | None = None  # why the log refuses writes until a restart recovers it
        self.seq = 0
        self.records_since_snapshot = 0
        self._live: Path | None = None  # the live snapshot folder
        self._live_seq = 0
        self._feedback_tail: list[tuple[int, dict]] = []  # feedback logged after the live snapshot
        # one snapshot at a time, and no in-process feedback read while one swaps files
        self._snapshot_lock = threading.Lock()

    # ------------------------------------------------------------------ recovery
    def recover(self) -> RecoveredState:
        """Load the live snapshot and replay the WAL after it."""
        state = RecoveredState()
        self._live, self._live_seq = None, 0
        for leftover in self.snap_dir.glob(".tmp-*"):
            shutil.rmtree(leftover, ignore_errors=True)
        current = self.dir / "CURRENT"
        if current.exists():
            name = current.read_text().strip()
            self._load_snapshot(self.snap_dir / name, state)
        for start, path, next_start in segment_chain(self.wal_dir):
            self._replay(path, state, start, next_start)
        self.seq = state.seq
        self.records_since_snapshot = state.replayed
        self._feedback_tail = list(state.feedback)
        return state

    def _load_snapshot(self, path: Path, state: RecoveredState) -> None:
        try:
            meta = json.loads((path / "meta.json").read_text())
        except (OSError, ValueError) as exc:
            raise StoreError(f"snapshot {path} is unreadable: {exc}") from None
        for fname, digest in meta["sha256"].items():  # feedback.jsonl only in snapshots that have it
            if sha256_file(path / fname) != digest:
                raise StoreError(f"snapshot {path}: {fname} fails its sha256 check")
        vectors = np.load(path / "vectors.npy", allow_pickle=False)
        version = meta.get("model_version", "")
        with open(path / "documents.jsonl", encoding="utf-8") as f:
            for row, line in enumerate(f):
                state.put(Document.from_json(json.loads(line)), vectors[row], version)
        state.seq = state.snapshot_seq = int(meta["seq"])
        self._live, self._live_seq = path, state.seq

    def _replay(self, path: Path, state: RecoveredState, start: int, next_start: int | None) -> None:
        data = path.read_bytes()
        records, offset = read_frames(data)
        for record in records:
            if record["seq"] <= state.seq:
                continue
            self._apply(record, state)
            state.seq = record["seq"]
            state.replayed += 1
        if offset < len(data):
            if hides_records(records, start, next_start):
                raise StoreError(f"{path}: corrupt record at byte {offset} in the middle of the log")
            log.warning("%s: cutting a torn record off the end of the log (%d bytes, never acknowledged)",
                        path, len(data) - offset)
            state.truncated_bytes += len(data) - offset
            with open(path, "r+b") as f:
                f.truncate(offset)
                f.flush()
                os.fsync(f.fileno())

    @staticmethod
    def _apply(record: dict, state: RecoveredState) -> None:
        if record["op"] == "upsert":
            dim = record["dim"]
            vectors = np.frombuffer(base64.b64decode(record["vectors"]), dtype="<f4").reshape(-1, dim)
            for row, d in enumerate(record["docs"]):
                state.put(Document.from_json(d), vectors[row], record["model"])
        elif record["op"] == "delete":
            for doc_id in record["ids"]:
                state.drop(doc_id)
        elif record["op"] == "feedback":
            state.feedback.append((record["seq"], record["feedback"]))
        else:
            raise StoreError(f"unknown WAL operation {record['op']!r}")

    # ------------------------------------------------------------------ writing
    def open_log(self) -> None:
        """Start a fresh WAL segment after the recovered state (never append to a torn file)."""
        with self._lock:
            self._open_segment(self.seq + 1)

    def _open_segment(self, first_seq: int) -> None:
        if self._file is not None:
            self._file.close()
        self._file = open(segment_path(self.wal_dir, first_seq), "ab")
        if self.fsync:
            fsync_dir(self.wal_dir)

    def _append(self, record: dict) -> int:
        with self._lock:
            if self._file is None:
                raise StoreError("the write-ahead log is not open")
            if self.broken:
                raise WriteFailed(f"the write-ahead log refuses writes until a restart: {self.broken}")
            record["seq"] = self.seq + 1
            start = self._file.tell()
            try:
                self._file.write(encode_frame(record))
                self._file.flush()
                if self.fsync:
                    os.fsync(self._file.fileno())
            except OSError as exc:
                self._undo_partial_write(start, exc)
                raise WriteFailed(f"write-ahead log: {exc}") from None
            self.seq += 1
            self.records_since_snapshot += 1
            if record["op"] == "feedback":  # until a snapshot carries it
                self._feedback_tail.append((self.seq, record["feedback"]))
            return self.seq

    def _undo_partial_write(self, start: int, exc: OSError) -> None:
        """Cut what a failed append left in the log. Records acknowledged after a partial frame would be
        cut with it at the next start (recovery stops at the first bad frame), so if the cut fails, or
        fsync failed (the page cache can no longer be trusted, as PostgreSQL learnt), the log refuses
        every later write: /health fails and a restart recovers from what is on disk."""
        path = self._file.name
        try:  # drop the buffered writer with whatever it still holds, then cut the file itself
            self._file.close()
        except OSError:
            pass
        try:
            with open(path, "r+b") as f:
                f.truncate(start)
                os.fsync(f.fileno())
            self._file = open(path, "ab")
        except OSError as cut:
            self.broken = f"{exc}; cutting the failed record also failed: {cut}"
        else:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):  # a full disk may free up; an I/O error won't
                self.broken = str(exc)
        log.error("write-ahead log append failed: %s%s", exc, " (writes refused until restart)" if self.broken else "")

    def append_upsert(self, docs: Sequence[Document], vectors: np.ndarray, model_version: str) -> int:
        """Durably record an upsert; returns its sequence number once it is on disk."""
        vectors = np.ascontiguousarray(vectors, dtype="<f4")
        return self._append({"op": "upsert", "model": model_version, "dim": int(vectors.shape[1]),
                             "docs": [d.to_json() for d in docs],
                             "vectors": base64.b64encode(vectors.tobytes()).decode()})

    def append_delete(self, ids: Iterable[str]) -> int:
        return self._append({"op": "delete", "ids": list(ids)})

    def append_feedback(self, feedback: Mapping) -> int:
        """Durably record one feedback record (any JSON object); returns its sequence number."""
        return self._append({"op": "feedback", "feedback": dict(feedback)})

    # ------------------------------------------------------------------ reading feedback
    def read_feedback(self, attempts: int = 20) -> list[dict]:
        """Every feedback record, oldest first, without writing anything: safe on a directory that a
        running server (this process or another) is writing to. A record being written and not yet
        acknowledged is left out."""
        for attempt in range(attempts):
            try:
                with self._snapshot_lock:
                    return self._read_feedback_once()
            except (FileNotFoundError, _SnapshotMoved):  # another process swapped snapshots meanwhile
                if attempt == attempts - 1:
                    raise StoreError(f"{self.dir}: snapshots kept changing while reading feedback") from None
                time.sleep(0.05)
        return []  # unreachable

    def _read_feedback_once(self) -> list[dict]:
        current = self.dir / "CURRENT"
        live = current.read_text().strip() if current.exists() else None
        out: list[dict] = []
        seq = 0
        if live is not None:
            snap = self.snap_dir / live
            meta = json.loads((snap / "meta.json").read_text())
            seq = int(meta["seq"])
            if FEEDBACK in meta["sha256"]:
                with open(snap / FEEDBACK, encoding="utf-8") as f:
                    out.extend(json.loads(line) for line in f)
        for start, path, next_start in segment_chain(self.wal_dir):
            data = path.read_bytes()
            records, offset = read_frames(data)
            if offset < len(data) and hides_records(records, start, next_start):
                raise StoreError(f"{path}: corrupt record at byte {offset} in the middle of the log")
            for record in records:
                if record["seq"] > seq and record["op"] == "feedback":
                    out.append(record["feedback"])
        # segments are deleted only after CURRENT moves: unchanged CURRENT means we saw them all
        if (current.read_text().strip() if current.exists() else None) != live:
            raise _SnapshotMoved
        return out

    def rotate(self) -> int:
        """Start a new WAL segment; returns the last sequence number the old segments hold."""
        with self._lock:
            seq = self.seq
            self._open_segment(seq + 1)
            self.records_since_snapshot = 0
            return seq

    def write_snapshot(self, seq: int, docs: Sequence[Document], vectors: np.ndarray, model_name: str,
                       model_version: str) -> Path | None:
        """Atomically make (docs, vectors) at ``seq`` plus all feedback up to ``seq`` the live
        snapshot, then drop what it covers. ``None`` when a snapshot after ``seq`` is live already
        (making an older one live would lose the log records in between)."""
        with self._snapshot_lock:
            if self._live is not None and seq < self._live_seq:
                log.info("snapshot at seq %d skipped: seq %d is live", seq, self._live_seq)
                return None
            final = self._write_snapshot(seq, docs, vectors, model_name, model_version)
            with self._lock:
                self._feedback_tail = [(s, f) for s, f in self._feedback_tail if s > seq]
            return final

    def _write_snapshot(self, seq: int, docs: Sequence[Document], vectors: np.ndarray, model_name: str,
                        model_version: str) -> Path:
        tmp = self.snap_dir / f".tmp-{uuid.uuid4().hex}"
        tmp.mkdir()
        with open(tmp / "documents.jsonl", "w", encoding="utf-8") as f:
            for d in docs:
                f.write(json.dumps(d.to_json(), ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        with open(tmp / "vectors.npy", "wb") as f:
            np.save(f, np.ascontiguousarray(vectors, dtype="<f4"), allow_pickle=False)
            f.flush()
            os.fsync(f.fileno())
        feedback_count = self._write_feedback(tmp / FEEDBACK, seq)
        meta = {"format": FORMAT, "seq": seq, "count": len(docs), "feedback": feedback_count,
                "model_name": model_name, "model_version": model_version,
                "dimension": int(vectors.shape[1]) if len(vectors) else None,
                "sha256": {n: sha256_file(tmp / n) for n in ("documents.jsonl", "vectors.npy", FEEDBACK)}}
        write_durably(tmp / "meta.json", json.dumps(meta, indent=1))
        final = self.snap_dir / f"{seq:020d}-{uuid.uuid4().hex[:8]}"
        os.rename(tmp, final)
        fsync_dir(self.snap_dir)
        write_durably(self.dir / "CURRENT", final.name)
        self._live, self._live_seq = final, seq
        # the new snapshot is live: older snapshots and covered WAL segments can go
        for old in self.snap_dir.iterdir():
            if old != final and not old.name.startswith(".tmp-"):
                shutil.rmtree(old, ignore_errors=True)
        found = segments(self.wal_dir)
        for (_, path), (next_start, _) in zip(found, found[1:], strict=False):
            if next_start - 1 <= seq:
                path.unlink(missing_ok=True)
        log.info("snapshot at seq %d: %d documents, %d feedback (model %s)", seq, len(docs), feedback_count,
                 model_version)
        return final

    def _write_feedback(self, path: Path, seq: int) -> int:
        """The live snapshot's feedback followed by the feedback logged after it, up to ``seq``."""
        with self._lock:
            tail = [f for s, f in self._feedback_tail if s <= seq]
        count = 0
        with open(path, "w", encoding="utf-8") as out:
            previous = self._live / FEEDBACK if self._live is not None else None
            if previous is not None and previous.exists():
                with open(previous, encoding="utf-8") as f:
                    for line in f:
                        out.write(line)
                        count += 1
            for record in tail:
                out.write(json.dumps(record, ensure_ascii=False) + "\n")
                count += 1
            out.flush()
            os.fsync(out.fileno())
        return count

    def close(self) -> None:
        with self._lock:
            if self._file is not None and not self._file.closed:  # closed: a failed append could not reopen it
                self._file.flush()
                if self.fsync:
                    os.fsync(self._file.fileno())
                self._file.close()
            self._file = None
