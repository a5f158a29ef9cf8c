"""The previous release's data directory (write-ahead log + snapshots), read once to migrate it into SQLite.

Releases before the SQLite store (:mod:`service.store`) kept a data directory as::

    CURRENT                      name of the live snapshot
    snapshots/<seq>-<id>/        meta.json, documents.jsonl, vectors.npy, feedback.jsonl (sha256 in meta.json)
    wal/<first seq, 20 digits>.log    frames, one per record: u32 length, u32 crc32 (little-endian), JSON payload

A record is a JSON object with its sequence number ``seq`` (``op``: upsert, delete, feedback); a segment holds
consecutive records from its first seq on. :func:`read_legacy` reads all of it without writing anything: the
live snapshot (checked against its sha256), then the records after it. A torn frame ending a segment was never
acknowledged and is skipped; a bad frame that can hide acknowledged records (the next segment does not start
right after the last good record) stops the read with :class:`LegacyCorrupt`. :func:`move_aside` then moves
those files into one folder, kept so a rollback to the previous release can move them back.

Example::

    >>> from pathlib import Path
    >>> state = read_legacy(Path("tests/data/wal_datadir"))
    >>> list(state.docs), state.embedded["a"][1], [r["query"] for r in state.feedback]
    (['c', 'd', 'a'], 'v0002', ['başkent?', 'kahve'])
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import struct
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from export.fsutil import fsync_dir

from .documents import Document

log = logging.getLogger("service.store")

LEGACY_FILES = ("CURRENT", "snapshots", "wal")  # what the previous release wrote into a data directory
_HEADER = struct.Struct("<II")


class LegacyCorrupt(RuntimeError):
    """The previous release's files are damaged where acknowledged writes may be lost."""


@dataclass
class LegacyState:
    """What the previous release's data directory held: documents in write order, their vectors, feedback."""

    docs: dict[str, Document] = field(default_factory=dict)
    embedded: dict[str, tuple[np.ndarray, str]] = field(default_factory=dict)  # id → (vector, model version)
    feedback: list[dict] = field(default_factory=list)
    seq: int = 0  # the last record applied

    def put(self, doc: Document, vector: np.ndarray, model_version: str) -> None:
        self.docs.pop(doc.id, None)  # an upsert moves the document to the end of the write order
        self.docs[doc.id] = doc
        self.embedded[doc.id] = (vector, model_version)

    def drop(self, doc_id: str) -> None:
        self.docs.pop(doc_id, None)
        self.embedded.pop(doc_id, None)


def has_legacy(data_dir: Path) -> bool:
    return any((data_dir / name).exists() for name in LEGACY_FILES)


def read_legacy(data_dir: Path) -> LegacyState:
    """The state the previous release would have recovered from ``data_dir`` (nothing is written)."""
    state = LegacyState()
    current = data_dir / "CURRENT"
    if current.exists():
        _load_snapshot(data_dir / "snapshots" / current.read_text().strip(), state)
    segments = sorted((int(p.stem), p) for p in (data_dir / "wal").glob("*.log") if p.stem.isdigit())
    for (start, path), following in zip(segments, [s for s, _ in segments[1:]] + [None], strict=True):
        data = path.read_bytes()
        records, offset = _read_frames(data)
        for record in records:
            if record["seq"] > state.seq:
                _apply(record, state)
                state.seq = record["seq"]
        if offset < len(data):
            last_good = records[-1]["seq"] if records else start - 1
            if following is not None and following != last_good + 1:
                raise LegacyCorrupt(f"{path}: corrupt record at byte {offset} in the middle of the log")
            log.warning("%s: skipping a torn record at the end (%d bytes, never acknowledged)", path,
                        len(data) - offset)
    return state


def move_aside(data_dir: Path) -> Path:
    """Move the previous release's files into ``data_dir/wal-store.migrated-<time>/``; returns that folder."""
    aside = data_dir / f"wal-store.migrated-{time.strftime('%Y%m%dT%H%M%S')}"
    aside.mkdir()
    for name in LEGACY_FILES:
        if (data_dir / name).exists():
            os.rename(data_dir / name, aside / name)
    fsync_dir(data_dir)
    return aside


def _load_snapshot(path: Path, state: LegacyState) -> None:
    try:
        meta = json.loads((path / "meta.json").read_text())
    except (OSError, ValueError) as exc:
        raise LegacyCorrupt(f"snapshot {path} is unreadable: {exc}") from None
    for name, digest in meta["sha256"].items():
        if hashlib.sha256((path / name).read_bytes()).hexdigest() != digest:
            raise LegacyCorrupt(f"snapshot {path}: {name} fails its sha256 check")
    vectors = np.load(path / "vectors.npy", allow_pickle=False)
    with open(path / "documents.jsonl", encoding="utf-8") as f:
        for row, line in enumerate(f):
            state.put(Document.from_json(json.loads(line)), vectors[row], meta.get("model_version", ""))
    if (path / "feedback.jsonl").exists():
        with open(path / "feedback.jsonl", encoding="utf-8") as f:
            state.feedback.extend(json.loads(line) for line in f)
    state.seq = int(meta["seq"])


def _read_frames(data: bytes) -> tuple[list[dict], int]:
    """Records up to the first torn or corrupt frame, and the byte offset it starts at."""
    records, offset = [], 0
    while offset + _HEADER.size <= len(data):
        length, crc = _HEADER.unpack_from(data, offset)
        payload = data[offset + _HEADER.size: offset + _HEADER.size + length]
        # length 0 passes the CRC (crc32 of nothing is 0) but was never written: a zero-filled tail
        if length == 0 or len(payload) != length or zlib.crc32(payload) != crc:
            break
        try:
            records.append(json.loads(payload))
        except ValueError:
            break
        offset += _HEADER.size + length
    return records, offset


def _apply(record: dict, state: LegacyState) -> None:
    if record["op"] == "upsert":
        vectors = np.frombuffer(base64.b64decode(record["vectors"]), dtype="<f4").reshape(-1, record["dim"])
        for row, doc in enumerate(record["docs"]):
            state.put(Document.from_json(doc), vectors[row], record["model"])
    elif record["op"] == "delete":
        for doc_id in record["ids"]:
            state.drop(doc_id)
    elif record["op"] == "feedback":
        state.feedback.append(record["feedback"])
    else:
        raise LegacyCorrupt(f"unknown WAL operation {record['op']!r}")
