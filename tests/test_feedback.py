"""Feedback storage and export, without a model: the WAL/snapshot store keeps feedback like documents,
reads it back without writing, and the export loads as training data. The HTTP side runs in
tests/test_retrain_loop.py against a real server."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from service.auth import KeyChecker
from service.documents import Document
from service.feedback import make_record, to_training, write_jsonl
from service.http.routes import ROUTE_ACCESS
from service.settings import Settings, SettingsError
from service.storage.lock import DataDirLock
from service.store import DurableStore
from tests.conftest import ROOT
from training.data import load_qa_data

DOC = Document("d", "text")


def fb(query: str, doc: str, shown: list[str] = (), label: str = "positive") -> dict:
    return make_record(query, (doc, f"text of {doc}"), [(s, f"text of {s}") for s in shown], label)


def test_feedback_survives_snapshots_restarts_and_a_torn_tail(tmp_path):
    store = DurableStore(tmp_path)
    store.recover()
    store.open_log()
    store.append_upsert([Document("d", "text", {})], np.ones((1, 2), np.float32), "v1")
    for i in range(3):
        store.append_feedback(fb(f"q{i}", "d"))
    seq = store.rotate()
    store.append_feedback(fb("after rotate", "d"))  # logged after the snapshot's seq: stays in the WAL
    store.write_snapshot(seq, [DOC], np.ones((1, 2), np.float32), "m", "v1")
    store.append_feedback(fb("q4", "d"))
    assert [r["query"] for r in store.read_feedback()] == ["q0", "q1", "q2", "after rotate", "q4"]
    # a second snapshot carries the first one's feedback forward
    store.write_snapshot(store.rotate(), [DOC], np.ones((1, 2), np.float32), "m", "v1")
    store.append_feedback(fb("q5", "d"))
    store.close()
    wal = sorted((tmp_path / "wal").glob("*.log"))[-1]
    with open(wal, "ab") as f:
        f.write(b"\x50\x00\x00\x00torn")  # a write cut by kill -9, never acknowledged
    expected = ["q0", "q1", "q2", "after rotate", "q4", "q5"]
    assert [r["query"] for r in DurableStore(tmp_path, create=False).read_feedback()] == expected
    assert wal.stat().st_size > 0 and wal.read_bytes().endswith(b"torn")  # the reader wrote nothing
    again = DurableStore(tmp_path)
    state = again.recover()
    assert list(state.docs) == ["d"] and not wal.read_bytes().endswith(b"torn")
    again.open_log()
    again.write_snapshot(again.rotate(), [DOC], np.ones((1, 2), np.float32), "m", "v1")
    assert [r["query"] for r in again.read_feedback()] == expected


def test_an_older_snapshot_never_replaces_a_newer_one(tmp_path):
    store = DurableStore(tmp_path)
    store.recover()
    store.open_log()
    store.append_feedback(fb("q0", "d"))
    old = store.rotate()
    store.append_feedback(fb("q1", "d"))
    new = store.rotate()
    assert store.write_snapshot(new, [DOC], np.ones((1, 2), np.float32), "m", "v1") is not None
    assert store.write_snapshot(old, [DOC], np.ones((1, 2), np.float32), "m", "v1") is None
    assert [r["query"] for r in store.read_feedback()] == ["q0", "q1"]


def test_training_export_rules_and_it_loads_as_training_data(tmp_path):
    records = [
        fb("Q1", "a", ["a", "b", "c"]),            # chosen a; b, c shown but not chosen
        fb("Q1 ", "a", ["d"]),                      # the same pair again: negatives merged
        fb("Q1", "b"),                              # b is also an answer to Q1: never its negative
        fb("Q1", "e", label="negative"),            # e explicitly wrong for Q1
        fb("Q2", "c"),                              # nothing else shown: a plain pair
        fb("Q3", "a", label="negative"),            # no positive for Q3: skipped
    ]
    rows, stats = to_training(records)
    assert rows == [
        {"question": "Q1", "positive": "text of a", "negatives": ["text of c", "text of d", "text of e"]},
        {"question": "Q1", "positive": "text of b", "negatives": ["text of e"]},
        {"question": "Q2", "answer": "text of c"},
    ]
    assert stats == {"records": 6, "positive": 4, "negative": 2, "rows": 3, "skipped_negative": 1}
    write_jsonl(rows, tmp_path / "feedback.jsonl")
    data = load_qa_data([tmp_path / "feedback.jsonl"])
    assert [(r.question, len(r.negatives)) for r in data.records] == [("Q1", 3), ("Q1", 1), ("Q2", 0)]


def test_export_feedback_cli(tmp_path):
    store = DurableStore(tmp_path / "data")
    store.recover()
    store.open_log()
    store.append_feedback(fb("Nasıl?", "a", ["b"]))
    out = tmp_path / "fb.jsonl"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with DataDirLock(tmp_path / "data"):  # a server writing there: the export only reads, so it needs no lock
        run = subprocess.run([sys.executable, "-m", "service", "export-feedback", "--data_dir",
                              str(tmp_path / "data"), "--out", str(out)],
                             cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert load_qa_data([out]).records[0].negatives == ("text of b",)
    bad = subprocess.run([sys.executable, "-m", "service", "export-feedback", "--data_dir", str(tmp_path / "none"),
                          "--out", str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "not a service data directory" in bad.stderr
    assert not (tmp_path / "none").exists()


def test_reload_interval_setting_and_export_is_an_admin_route():
    base = ["--registry", "r", "--name", "m"]
    assert Settings.from_sources(base, env={}).latest_poll_s == 30
    assert Settings.from_sources(base, env={"QAEMBED_RELOAD_INTERVAL": "2.5"}).latest_poll_s == 2.5
    assert Settings.from_sources([*base, "--reload_interval", "0"], env={}).latest_poll_s == 0
    assert Settings.from_sources([*base, "--version", "v0001"], env={"QAEMBED_RELOAD_INTERVAL": "5"}).latest_poll_s == 0
    with pytest.raises(SettingsError, match="reload_interval"):
        Settings.from_sources([*base, "--reload_interval", "-1"], env={})
    checker = KeyChecker(api_keys=("data",), admin_keys=("admin",))
    assert checker.check(ROUTE_ACCESS["/feedback"], "Bearer data") is None
    assert checker.check(ROUTE_ACCESS["/feedback/export"], "Bearer data").status == 401
    assert checker.check(ROUTE_ACCESS["/feedback/export"], "Bearer admin") is None
