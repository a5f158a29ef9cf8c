"""The write-ahead log store: replay, snapshots, torn and failed writes."""

from __future__ import annotations

import errno
import os

import numpy as np
import pytest

from service.documents import Document
from service.store import DurableStore, StoreError
from tests.conftest import FailingLog


def test_store_replays_wal_and_snapshots_atomically(tmp_path):
    store = DurableStore(tmp_path)
    assert store.recover().docs == {}
    store.open_log()
    v = np.eye(3, dtype=np.float32)
    store.append_upsert([Document("a", "A", {"k": 1}), Document("b", "B", {})], v[:2], "v1")
    store.append_delete(["a"])
    store.append_upsert([Document("c", "C", {})], v[2:], "v1")
    seq = store.rotate()
    store.write_snapshot(seq, [Document("b", "B", {}), Document("c", "C", {})], v[1:], "m", "v1")
    store.append_upsert([Document("d", "D", {})], v[:1], "v2")
    store.close()
    (tmp_path / "snapshots" / ".tmp-leftover").mkdir()  # a snapshot cut by a crash
    state = DurableStore(tmp_path).recover()
    assert list(state.docs) == ["b", "c", "d"]
    assert state.embedded["d"][1] == "v2" and state.embedded["b"][1] == "v1"
    np.testing.assert_array_equal(state.embedded["c"][0], v[2])
    assert state.seq == 4 and state.snapshot_seq == 3 and state.replayed == 1
    assert not (tmp_path / "snapshots" / ".tmp-leftover").exists()
    assert len(list((tmp_path / "wal").glob("*.log"))) == 1  # covered segments removed


VECTOR = np.ones((1, 2), np.float32)


def store_holding_a(tmp_path) -> DurableStore:
    """An open store whose log holds one acknowledged upsert, document "a" (seq 1)."""
    store = DurableStore(tmp_path)
    store.recover()
    store.open_log()
    assert store.append_upsert([Document("a", "A", {})], VECTOR, "v1") == 1
    return store


def test_store_cuts_a_torn_tail_but_refuses_corruption_in_the_middle(tmp_path):
    store_holding_a(tmp_path).close()
    (segment,) = (tmp_path / "wal").glob("*.log")
    good = segment.stat().st_size
    with open(segment, "ab") as f:
        f.write(b"\x40\x00\x00\x00garbage")  # a frame cut by kill -9
    state = DurableStore(tmp_path).recover()
    assert list(state.docs) == ["a"] and state.truncated_bytes > 0 and segment.stat().st_size == good
    # damage inside a segment that is followed by another one: refuse rather than lose data silently
    data = bytearray(segment.read_bytes())
    data[10] ^= 0xFF
    segment.write_bytes(bytes(data))
    (tmp_path / "wal" / f"{99:020d}.log").write_bytes(b"")
    with pytest.raises(StoreError, match="corrupt"):
        DurableStore(tmp_path).recover()


def test_store_cuts_a_zero_filled_tail(tmp_path):
    """What a power cut can leave: zeros after the last frame (length 0 passes a CRC check)."""
    store_holding_a(tmp_path).close()
    (segment,) = (tmp_path / "wal").glob("*.log")
    with open(segment, "ab") as f:
        f.write(b"\x00" * 64)
    state = DurableStore(tmp_path).recover()
    assert list(state.docs) == ["a"] and state.truncated_bytes == 64


@pytest.mark.parametrize("error", [errno.ENOSPC, errno.EIO], ids=["disk_full", "io_error"])
def test_a_failed_append_loses_no_later_acknowledged_write(tmp_path, error):
    """A half-written frame left in the log would cut every later (acknowledged) record at the next
    start. Disk full: the frame is cut and later writes go on; an I/O error: writes are refused
    (and /health fails) until a restart recovers from the disk."""
    store = store_holding_a(tmp_path)
    store._file = FailingLog(store._file, error)
    with pytest.raises(StoreError, match=os.strerror(error)):
        store.append_upsert([Document("b", "B", {})], VECTOR, "v1")
    if error == errno.ENOSPC:
        assert store.broken is None
        assert store.append_upsert([Document("c", "C", {})], VECTOR, "v1") == 2
        acknowledged = ["a", "c"]
    else:
        assert store.broken
        with pytest.raises(StoreError, match="refuses writes until a restart"):
            store.append_upsert([Document("c", "C", {})], VECTOR, "v1")
        acknowledged = ["a"]
    store.close()
    state = DurableStore(tmp_path).recover()
    assert list(state.docs) == acknowledged and state.truncated_bytes == 0


def test_a_torn_frame_that_a_new_segment_follows_is_cut_not_fatal(tmp_path):
    """A failed append whose cut also failed leaves half a frame, then a snapshot's rotate starts a new
    segment: the torn record was never acknowledged (the next segment starts at its seq), so recovery and
    feedback reads cut it instead of refusing to start."""
    store = store_holding_a(tmp_path)
    (first,) = (tmp_path / "wal").glob("*.log")
    with open(first, "ab") as f:
        f.write(b"\x40\x00\x00\x00half a frame")
    store.rotate()
    store.append_upsert([Document("c", "C", {})], VECTOR, "v1")
    store.append_feedback({"query": "c?", "label": "positive"})
    store.close()
    assert [r["query"] for r in DurableStore(tmp_path).read_feedback()] == ["c?"]
    state = DurableStore(tmp_path).recover()
    assert list(state.docs) == ["a", "c"] and state.truncated_bytes > 0 and state.seq == 3


