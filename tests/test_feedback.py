"""Feedback storage and export, without a model: the SQLite store keeps feedback like documents,
reads it back without writing, and the export loads as training data. The HTTP side runs in
tests/test_retrain_loop.py against a real server."""

from __future__ import annotations

import os
import shutil
import sqlite3
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
from service.store import DATABASE, DocumentStore
from tests.conftest import ROOT
from training.data import load_qa_data

DOC = Document("d", "text")


def fb(query: str, doc: str, shown: list[str] = (), label: str = "positive") -> dict:
    return make_record(query, (doc, f"text of {doc}"), [(s, f"text of {s}") for s in shown], label)


def test_feedback_survives_restarts_and_is_read_without_writing(tmp_path):
    store = DocumentStore(tmp_path)
    store.open()
    store.upsert([DOC], np.ones((1, 2), np.float32), "v1")
    for i in range(3):
        store.add_feedback(fb(f"q{i}", "d"))
    files = [tmp_path / DATABASE, tmp_path / (DATABASE + "-wal")]
    before = [f.read_bytes() for f in files]
    reader = DocumentStore.reader(tmp_path)  # another process's view, while the writer is open
    assert [r["query"] for r in reader.read_feedback()] == ["q0", "q1", "q2"]
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        reader._connection.execute("DELETE FROM feedback")
    reader.close()
    assert [f.read_bytes() for f in files] == before  # the reader wrote nothing
    store.add_feedback(fb("q3", "d"))
    store.close()
    again = DocumentStore(tmp_path)
    again.open()
    assert [r["query"] for r in again.read_feedback()] == ["q0", "q1", "q2", "q3"]
    again.close()


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
    store = DocumentStore(tmp_path / "data")
    store.open()
    store.add_feedback(fb("Nasıl?", "a", ["b"]))
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
    store.close()
    # a directory the previous release wrote, not migrated yet (no server started on it since): read as it is
    shutil.copytree(ROOT / "tests" / "data" / "wal_datadir", tmp_path / "old")
    old = subprocess.run([sys.executable, "-m", "service", "export-feedback", "--data_dir", str(tmp_path / "old"),
                          "--out", str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert old.returncode == 0, old.stderr
    assert [r.question for r in load_qa_data([out]).records] == ["başkent?"]  # kahve's label is negative
    assert (tmp_path / "old" / "wal").is_dir() and not (tmp_path / "old" / DATABASE).exists()


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
