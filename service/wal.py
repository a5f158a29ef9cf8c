"""The write-ahead log's files: numbered segments of checksummed frames (what :mod:`service.store` appends).

Layout and format (unchanged since the first data directory; existing ones must keep recovering)::

    wal/<first seq, 20 digits>.log    frames, one per record: u32 length, u32 crc32 (little-endian), JSON payload

A record is a JSON object with its sequence number ``seq``; a segment holds consecutive records from
its first seq on. Reading stops at the first torn or corrupt frame: whether that frame may hide
acknowledged records is :func:`hides_records`' call, made from where the next segment starts.

Example::

    >>> frames = encode_frame({"op": "delete", "ids": ["a"], "seq": 1}) + b"\\x05\\x00"   # a torn tail
    >>> records, offset = read_frames(frames)
    >>> [r["seq"] for r in records], offset == len(frames) - 2
    ([1], True)
"""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

_HEADER = struct.Struct("<II")


def encode_frame(record: dict) -> bytes:
    payload = json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode()
    return _HEADER.pack(len(payload), zlib.crc32(payload)) + payload


def read_frames(data: bytes) -> tuple[list[dict], int]:
    """WAL records in ``data`` up to the first torn or corrupt frame, and the byte offset it starts at."""
    records, offset = [], 0
    while offset + _HEADER.size <= len(data):
        length, crc = _HEADER.unpack_from(data, offset)
        payload = data[offset + _HEADER.size: offset + _HEADER.size + length]
        # length 0 passes the CRC (crc32 of nothing is 0) but is never written: a zero-filled tail,
        # as a power cut can leave behind
        if length == 0 or len(payload) != length or zlib.crc32(payload) != crc:
            break
        try:
            records.append(json.loads(payload))
        except ValueError:
            break
        offset += _HEADER.size + length
    return records, offset


def hides_records(records: list[dict], start: int, next_start: int | None) -> bool:
    """Whether a bad frame ending a segment (``start``: its first seq) can hide acknowledged records.

    A torn frame ends the last segment after a crash. It may also end an earlier one: an append that failed
    and could not be cut, then a new segment. That record was never acknowledged, nor its seq used, so the
    next segment starts right after the last good record; any other gap means records were lost."""
    last_good = records[-1]["seq"] if records else start - 1
    return next_start is not None and next_start != last_good + 1


def segment_path(wal_dir: Path, first_seq: int) -> Path:
    return wal_dir / f"{first_seq:020d}.log"


def segments(wal_dir: Path) -> list[tuple[int, Path]]:
    """``(first seq, path)`` of every segment, in order."""
    out = []
    for p in wal_dir.glob("*.log"):
        try:
            out.append((int(p.stem), p))
        except ValueError:
            continue
    return sorted(out)


def segment_chain(wal_dir: Path) -> list[tuple[int, Path, int | None]]:
    """``(first seq, path, first seq of the next segment or None)`` per segment, in order."""
    found = segments(wal_dir)
    nexts = [start for start, _ in found[1:]] + [None]  # one longer than found when there are none
    return [(start, path, following) for (start, path), following in zip(found, nexts, strict=False)]
