"""The SQLite store (service/store.py): documents, vectors, lexical index and feedback in one transaction per
write; failed writes, crashes and torn logs; the analyzer fixed per data directory; the migration of a data
directory the previous release (write-ahead log + snapshots) wrote."""

from __future__ import annotations

import errno
import shutil
import sqlite3
import subprocess
import sys

import numpy as np
import pytest

from service.documents import Document
from service.store import DATABASE, DocumentStore, StoreError, WriteFailed
from tests.conftest import ROOT, FailingDatabase
from training.analyzer import Analyzer
from training.lexical import LexicalIndex

LEGACY = ROOT / "tests" / "data" / "wal_datadir"  # written by the WAL store of git 9909e80 (see its README)
VECTOR = np.ones((1, 2), np.float32)


def opened(path, analyzer: str = "tr") -> DocumentStore:
    store = DocumentStore(path, Analyzer.named(analyzer))
    store.open()
    return store


def lexical_keys(path, query: str) -> list[str]:
    """The ids whose lexical index entries match ``query``, read through a connection of its own."""
    con = sqlite3.connect(path / DATABASE)
    try:
        rowids = LexicalIndex(con, Analyzer.named("tr")).search(query, k=10).keys
        return [con.execute("SELECT id FROM documents WHERE rowid = ?", (r,)).fetchone()[0] for r in rowids]
    finally:
        con.close()


def test_documents_vectors_and_feedback_survive_a_restart_in_write_order(tmp_path):
    store = opened(tmp_path)
    v = np.arange(8, dtype=np.float32).reshape(4, 2)
    store.upsert([Document("a", "Ankara başkent", {"k": 1}), Document("b", "İstanbul liman", {})], v[:2], "v1")
    store.upsert([Document("c", "İzmir körfez", {})], v[2:3], "v1")
    store.upsert([Document("a", "Ankara İç Anadolu'da", {"k": 2})], v[3:], "v2")  # moves to the end
    store.delete(["b", "missing"])
    store.add_feedback({"query": "başkent?", "label": "positive"})
    store.close()
    con = sqlite3.connect(tmp_path / DATABASE)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    con.close()
    again = DocumentStore(tmp_path)
    state = again.open()
    assert list(state.docs) == ["c", "a"] and state.docs["a"] == Document("a", "Ankara İç Anadolu'da", {"k": 2})
    assert state.embedded["a"][1] == "v2" and state.embedded["c"][1] == "v1"
    np.testing.assert_array_equal(state.embedded["a"][0], v[3])
    assert [r["query"] for r in again.read_feedback()] == ["başkent?"] and not state.migrated
    assert lexical_keys(tmp_path, "Anadolu") == ["a"] and lexical_keys(tmp_path, "İstanbul") == []
    assert lexical_keys(tmp_path, "ankara") == ["a"]  # the replaced text's entry went with it
    # stale: another model version, or another layout (dimension, chunking) than the serving model's
    assert again.stale_vectors("v2") == 1 and again.stale_vectors("v2", "dim=3 window=8 stride=4") == 2
    assert again.save_vectors([Document("c", "")], np.full((1, 2), 9, np.float32), "v2") == 1
    assert again.stale_vectors("v2") == 0
    again.close()


@pytest.mark.parametrize("error", [errno.ENOSPC, errno.EIO], ids=["disk_full", "io_error"])
def test_a_failed_commit_keeps_nothing_of_its_write(tmp_path, error):
    """A commit that fails rolls the document, its vector and its index entries back. Disk full: later writes
    go on; an I/O error: writes are refused (and /health fails) until a restart recovers from the disk."""
    store = opened(tmp_path)
    store.upsert([Document("a", "elma", {})], VECTOR, "v1")
    store._connection = FailingDatabase(store._connection, error)
    with pytest.raises(WriteFailed, match=FailingDatabase.SQLITE[error][1]):
        store.upsert([Document("b", "armut", {})], VECTOR, "v1")
    if error == errno.ENOSPC:
        assert store.broken is None
        store.upsert([Document("c", "kiraz", {})], VECTOR, "v1")
        acknowledged = ["a", "c"]
    else:
        assert store.broken
        with pytest.raises(WriteFailed, match="refuses writes until a restart"):
            store.add_feedback({"query": "q"})
        acknowledged = ["a"]
    store.close()
    assert list(DocumentStore(tmp_path).open().docs) == acknowledged
    assert lexical_keys(tmp_path, "armut") == []


def test_a_really_full_database_fails_the_write_and_the_next_one_goes_on(tmp_path):
    """SQLite's own SQLITE_FULL (its page limit stands in for the disk): the transaction fails whole."""
    store = opened(tmp_path)
    store.upsert([Document("a", "elma", {})], VECTOR, "v1")
    con = store._connection
    con.execute(f"PRAGMA max_page_count = {con.execute('PRAGMA page_count').fetchone()[0]}")
    big = [Document(f"b{i}", "uzun metin " * 400, {}) for i in range(20)]
    with pytest.raises(WriteFailed, match="full"):
        store.upsert(big, np.ones((20, 2), np.float32), "v1")
    assert store.broken is None
    con.execute("PRAGMA max_page_count = 1073741823")  # the disk has room again
    store.upsert([Document("c", "kiraz", {})], VECTOR, "v1")
    store.close()
    assert list(DocumentStore(tmp_path).open().docs) == ["a", "c"]


def test_a_torn_log_tail_left_by_a_crash_loses_nothing_committed(tmp_path):
    """What kill -9 or a power cut leaves: the database and SQLite's log as they were, a torn frame at the
    log's end. Every committed write is recovered; the torn frame is ignored."""
    store = opened(tmp_path / "live")
    store.upsert([Document("a", "elma", {})], VECTOR, "v1")
    store.add_feedback({"query": "q1"})
    crashed = tmp_path / "crashed"
    crashed.mkdir()
    for name in (DATABASE, DATABASE + "-wal"):  # copied while open: the files a crash would leave
        shutil.copy(tmp_path / "live" / name, crashed / name)
    assert (crashed / (DATABASE + "-wal")).stat().st_size > 0  # the commits are in SQLite's log, not yet the file
    with open(crashed / (DATABASE + "-wal"), "ab") as f:
        f.write(b"\x37\x7f\x06\x82" + b"torn frame" * 50)
    store.close()
    recovered = DocumentStore(crashed)
    assert list(recovered.open().docs) == ["a"] and [r["query"] for r in recovered.read_feedback()] == ["q1"]
    recovered.close()


KILLED_WRITER = """
import sys, numpy as np
from service.documents import Document
from service.store import DocumentStore
store = DocumentStore(sys.argv[1]); store.open()
for n in range(100000):
    store.upsert([Document(f"d{n}", f"belge {n}", {"n": n})], np.full((1, 2), n, np.float32), "v1")
    print(n, flush=True)   # acknowledged
"""


def test_kill9_in_the_middle_of_writes_loses_no_acknowledged_one(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE,
                            text=True, env={"PYTHONPATH": str(ROOT), "PATH": ""})
    acknowledged = -1
    for line in proc.stdout:
        acknowledged = int(line)
        if acknowledged >= 50:
            break
    proc.kill()
    proc.wait(10)
    state = DocumentStore(tmp_path).open()
    assert acknowledged >= 50 and len(state.docs) >= acknowledged + 1
    assert list(state.docs)[: acknowledged + 1] == [f"d{n}" for n in range(acknowledged + 1)]
    assert state.embedded[f"d{acknowledged}"][0].tolist() == [acknowledged, acknowledged]


def test_a_restart_with_another_analyzer_is_refused(tmp_path):
    opened(tmp_path, "tr").close()
    with pytest.raises(StoreError, match="analyzer.*--analyzer"):
        opened(tmp_path, "en")
    opened(tmp_path, "tr").close()


def test_a_data_directory_of_the_previous_release_is_migrated_once_and_kept_aside(tmp_path):
    data = tmp_path / "data"
    shutil.copytree(LEGACY, data)
    store = DocumentStore(data)
    state = store.open()
    # the previous release's recovery: snapshot (a, b, c at seq 3), then delete b, upsert d and a, a torn tail
    assert state.migrated and list(state.docs) == ["c", "d", "a"]
    assert state.docs["a"] == Document("a", "Ankara başkenttir.", {"lang": "tr", "v": 2})
    assert {k: v for k, (_, v) in state.embedded.items()} == {"c": "v0001", "d": "v0002", "a": "v0002"}
    np.testing.assert_allclose(state.embedded["d"][0], [0.6, 0.7], rtol=1e-6)
    assert [r["query"] for r in store.read_feedback()] == ["başkent?", "kahve"]
    store.close()
    assert lexical_keys(data, "kahve") == ["d"]
    (aside,) = data.glob("wal-store.migrated-*")
    assert sorted(p.name for p in aside.iterdir()) == ["CURRENT", "snapshots", "wal"]
    assert not any((data / name).exists() for name in ("CURRENT", "snapshots", "wal"))
    again = DocumentStore(data)
    assert not again.open().migrated
    again.close()
    # a start cut between the migration's commit and the move: the next one moves, and imports nothing twice
    shutil.rmtree(aside)
    shutil.copytree(LEGACY, data, dirs_exist_ok=True)
    third = DocumentStore(data)
    state = third.open()
    assert not state.migrated and list(state.docs) == ["c", "d", "a"] and len(third.read_feedback()) == 2
    third.close()
    assert not (data / "wal").exists()


def test_a_corrupt_log_in_the_previous_release_stops_the_migration(tmp_path):
    data = tmp_path / "data"
    shutil.copytree(LEGACY, data)
    (segment,) = (data / "wal").glob("*.log")
    damaged = bytearray(segment.read_bytes())
    damaged[10] ^= 0xFF
    segment.write_bytes(bytes(damaged))
    (data / "wal" / f"{99:020d}.log").write_bytes(b"")  # a later segment: the damage may hide acknowledged records
    with pytest.raises(StoreError, match="corrupt record"):
        DocumentStore(data).open()
    assert (data / "wal").is_dir()  # nothing moved
