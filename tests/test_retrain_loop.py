"""The retraining loop end to end (issue 6): a real ``python -m service`` process serves v1 with the
example documents; users' feedback is posted and exported; ``python -m retrain`` trains on it
and promotes v2; the service notices the new LATEST and swaps to v2 while a client keeps sending
/search and /embed requests (zero failures); a deliberately worse candidate is rejected and the
service stays on v2; a broken bundle in LATEST is refused and counted; rollback returns to v1.

Real training and export (fp32 ONNX only, 48 tokens, 1 epoch: see tests/test_retrain.py for why
int8 is not gated on tiny evaluation sets). Every wait is bounded.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from export.bundle import latest_version, list_versions, open_bundle
from export.cli import main as export_cli
from retrain.cli import main as retrain_cli
from service.corpus import corpus_id
from tests.conftest import EXAMPLES, ROOT
from tests.test_retrain import FAST, write_jsonl
from tests.test_service_durability import ServiceProcess
from training.data import load_qa_data
from training.split import split_by_passage

DATA = str(EXAMPLES / "example_qa_data.json")
KEYS = {"QAEMBED_API_KEY": "data-key", "QAEMBED_ADMIN_API_KEY": "admin-key"}
DATA_AUTH = {"Authorization": "Bearer data-key"}
ADMIN_AUTH = {"Authorization": "Bearer admin-key"}
POLL_S = 0.5  # the service's --reload_interval


def wait_for(what: str, check, timeout: float = 120.0, every: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise TimeoutError(f"{what} within {timeout:.0f}s")


def retrain(reg: Path, *args: str) -> dict:
    t0 = time.monotonic()
    assert retrain_cli(["--registry", str(reg), "--name", "qa", *args]) == 0
    versions = list_versions(reg, "qa")
    report = json.loads((reg / "qa" / "reports" / f"{versions[-1]}.json").read_text())
    print(f"retrain {versions[-1]}: {time.monotonic() - t0:.0f}s, {report['reason']}")
    return report


def metric(c: httpx.Client, name: str) -> float:
    for line in c.get("/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


class Traffic(threading.Thread):
    """A client sending /search and /embed back to back, recording every outcome with its time."""

    def __init__(self, url: str, queries: list[str]) -> None:
        super().__init__(daemon=True)
        self.url, self.queries = url, queries
        self.stop = threading.Event()
        self.outcomes: list[tuple[float, str, object]] = []  # (time, route, status or error)

    def run(self) -> None:
        with httpx.Client(base_url=self.url, headers=DATA_AUTH, timeout=30) as c:
            i = 0
            while not self.stop.is_set():
                query = self.queries[i % len(self.queries)]
                route, body = (("/search", {"query": query, "top_k": 3}) if i % 2 == 0
                               else ("/embed", {"inputs": [query], "prompt_name": "query"}))
                try:
                    r = c.post(route, json=body)
                    ok = r.status_code == 200 and (route != "/search" or len(r.json()["results"]) == 3)
                    self.outcomes.append((time.time(), route, r.status_code if ok else f"{r.status_code} {r.text}"))
                except httpx.HTTPError as exc:
                    self.outcomes.append((time.time(), route, repr(exc)))
                i += 1
                time.sleep(0.05)  # leave the CPU cores to training and re-embedding

    def failures(self) -> list:
        return [o for o in self.outcomes if o[2] != 200]


@pytest.fixture(scope="module")
def loop(tmp_path_factory):
    """v0001 published from the base model; a fixed evaluation set held out of training."""
    root = tmp_path_factory.mktemp("loop")
    records = load_qa_data([DATA]).records
    split = split_by_passage(records, 0.75, seed=3)
    eval_file = write_jsonl(root / "fixed_eval.jsonl", [(r.question, r.positive) for r in split.eval])
    reg = root / "registry"
    first = retrain(reg, "--data", DATA, "--eval_data", eval_file,
                    "--base_model", "sentence-transformers/all-MiniLM-L6-v2", *FAST)
    assert first["promoted"] and latest_version(reg, "qa") == "v0001"
    return root, reg, eval_file, split


def test_feedback_retrain_swap_reject_rollback(loop):
    root, reg, eval_file, split = loop
    svc = ServiceProcess(reg, "qa", root / "state", "--corpus", DATA, "--variant", "onnx",
                         "--reload_interval", str(POLL_S), env=KEYS)
    try:
        svc.wait_ready(timeout=180).close()
        c = httpx.Client(base_url=svc.url, headers=DATA_AUTH, timeout=60)
        admin = httpx.Client(base_url=svc.url, headers=ADMIN_AUTH, timeout=60)
        assert c.get("/info").json()["model"]["version"] == "v0001"
        assert c.get("/info").json()["latest_watch"]["interval_s"] == POLL_S

        # ---- feedback: users ask in their own words, see the top 3, choose the right answer
        users = [(f"Şunu merak ediyorum: {r.question}", r.positive) for r in split.train[:20]]
        for query, answer in users:
            shown = [h["id"] for h in c.post("/search", json={"query": query, "top_k": 3}).json()["results"]]
            r = c.post("/feedback", json={"query": query, "document_id": corpus_id(answer), "shown_ids": shown})
            assert r.status_code == 200, r.text
        wrong_answer = next(r.positive for r in split.train if r.positive != users[0][1])
        wrong = corpus_id(wrong_answer)
        assert c.post("/feedback", json={"query": users[0][0], "document_id": wrong,
                                         "label": "negative"}).status_code == 200
        expect_error(c.post("/feedback", json={"query": "q", "document_id": "nope"}), 404)
        expect_error(c.post("/feedback", json={"query": "q", "document_id": wrong, "shown_ids": ["nope"]}), 422)
        expect_error(c.post("/feedback", json={"query": "q", "document_id": wrong, "label": "meh"}), 422)
        expect_error(c.post("/feedback", json={"query": " ", "document_id": wrong}), 422)
        expect_error(c.post("/feedback", json={"query": "q", "document_id": 7}), 422)
        expect_error(c.post("/feedback", content=b"{", headers={"Content-Type": "application/json"}), 400)
        expect_error(httpx.post(svc.url + "/feedback", json={"query": "q", "document_id": wrong}), 401)
        expect_error(c.get("/feedback/export"), 401)  # users' queries: the admin key only
        assert metric(c, 'qaembed_feedback_total{label="positive"}') == len(users)
        assert metric(c, 'qaembed_feedback_total{label="negative"}') == 1

        # ---- export: over HTTP and from the data directory (server running) give the same file
        exported = admin.get("/feedback/export")
        assert exported.status_code == 200 and exported.headers["x-feedback-rows"] == str(len(users))
        feedback = root / "feedback.jsonl"
        feedback.write_text(exported.text, encoding="utf-8")
        cli_out = root / "feedback-cli.jsonl"
        run = subprocess.run([sys.executable, "-m", "service", "export-feedback", "--data_dir", str(root / "state"),
                              "--out", str(cli_out)], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, run.stderr
        assert cli_out.read_text(encoding="utf-8") == exported.text
        rows = load_qa_data([feedback]).records
        assert len(rows) == len(users) and sum(len(r.negatives) for r in rows) >= len(users)
        assert wrong_answer in rows[0].negatives  # the explicit negative joined its query

        # ---- v2: trained on data + feedback, promoted; the service swaps under continuous traffic
        traffic = Traffic(svc.url, [q for q, _ in users])
        traffic.start()
        # As the CronJob does it: feedback straight from the service, the admin key from the environment.
        os.environ["QAEMBED_ADMIN_API_KEY"] = KEYS["QAEMBED_ADMIN_API_KEY"]
        try:
            second = retrain(reg, "--data", DATA, "--feedback_url", svc.url + "/feedback/export",
                             "--eval_data", eval_file, "--tolerance", "0.05", *FAST)  # the gate: tests/test_retrain.py
        finally:
            del os.environ["QAEMBED_ADMIN_API_KEY"]
        assert "qaembed-feedback-" in second["training"]["sources"][-1]  # the fetched file, not the one above
        assert second["promoted"] and second["candidate"] == "v0002", second["reason"]
        wait_for("the service to serve v0002", lambda: c.get("/info").json()["model"]["version"] == "v0002")
        reload = admin.get("/admin/reload").json()
        assert reload["state"] == "done" and reload["to"] == "v0002" and reload["documents"] == 32
        wait_for("traffic after the swap", lambda: any(t > reload["finished_at"] + 1 for t, _, _ in traffic.outcomes))
        traffic.stop.set()
        traffic.join(30)
        during = [o for o in traffic.outcomes if reload["started_at"] <= o[0] <= reload["finished_at"]]
        print(f"traffic: {len(traffic.outcomes)} requests, {len(during)} during the "
              f"{reload['finished_at'] - reload['started_at']:.1f}s reload")
        assert not traffic.failures(), traffic.failures()[:5]
        assert len(during) >= 2 and len(traffic.outcomes) > 20
        assert metric(c, 'qaembed_reloads_total{result="done"}') == 1
        assert admin.get("/feedback/export").text == exported.text  # the reload's snapshot kept the feedback

        # ---- a worse candidate (shuffled answers, trained hard) is rejected: the service stays on v2
        train = list(split.train)
        answers = [r.positive for r in train]
        random.Random(0).shuffle(answers)
        shuffled = write_jsonl(root / "shuffled.jsonl", [(r.question, a) for r, a in zip(train, answers)])
        third = retrain(reg, "--data", shuffled, "--eval_data", eval_file, "--from", "current", "--epochs", "4",
                        "--learning_rate", "3e-4", "--warmup_steps", "0", "--max_seq_length", "48",
                        "--tolerance", "0.01", "--variants", "onnx", "--variant", "onnx")
        assert not third["promoted"] and third["candidate"] == "v0003", third["reason"]
        time.sleep(4 * POLL_S)
        assert c.get("/info").json()["model"]["version"] == "v0002"

        # ---- rollback: LATEST back to v1, the service follows
        assert export_cli(["rollback", "--registry", str(reg), "--name", "qa"]) == 0
        wait_for("the service to serve v0001", lambda: c.get("/info").json()["model"]["version"] == "v0001")

        # ---- a broken bundle in LATEST: refused, counted, the old one keeps serving, not retried
        shutil.copytree(reg / "qa" / "v0002", reg / "qa" / "v0004")
        with open(reg / "qa" / "v0004" / open_bundle(reg, "qa", "v0002").manifest["tokenizer"], "a") as f:
            f.write(" ")
        (reg / "qa" / "LATEST").write_text("v0004\n")
        wait_for("the failed reload to be counted", lambda: metric(c, 'qaembed_reloads_total{result="failed"}') == 1)
        time.sleep(4 * POLL_S)
        assert metric(c, 'qaembed_reloads_total{result="failed"}') == 1  # not retried every poll
        info = c.get("/info").json()
        assert info["model"]["version"] == "v0001" and "BundleError" in info["reload"]["error"]
        assert c.post("/search", json={"query": users[0][0]}).status_code == 200
    finally:
        svc.close()


def expect_error(r: httpx.Response, status: int) -> None:
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == status
