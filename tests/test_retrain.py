"""`python -m retrain`: the promotion gate promotes a fair candidate, rejects a worse one,
and rollback returns to the previous version. Real training, real export, real ONNX evaluation."""

from __future__ import annotations

import json
import random
import subprocess
import sys

import pytest

from export.bundle import latest_version, open_bundle
from export.cli import main as export_cli
from retrain.cli import main as retrain_cli
from tests.conftest import EXAMPLES, ROOT
from training.data import load_qa_data
from training.split import split_by_passage

# The int8 variant's own gate is tested in test_export.py; here fp32 keeps the test fast and exact.
FAST = ["--epochs", "1", "--max_seq_length", "48", "--batch_size", "16", "--variants", "onnx", "--variant", "onnx"]


def write_jsonl(path, records):
    with open(path, "w", encoding="utf-8") as out:
        for question, answer in records:
            out.write(json.dumps({"question": question, "answer": answer}, ensure_ascii=False) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """v0001 trained from the base model on the example data; a fixed evaluation set held out."""
    root = tmp_path_factory.mktemp("retrain")
    records = load_qa_data([EXAMPLES / "example_qa_data.json"]).records
    split = split_by_passage(records, 0.75, seed=3)
    eval_file = write_jsonl(root / "fixed_eval.jsonl", [(r.question, r.positive) for r in split.eval])
    reg = root / "registry"
    code = retrain_cli(["--registry", str(reg), "--name", "qa", "--data",
                       str(EXAMPLES / "example_qa_data.json"), "--eval_data", eval_file,
                       "--base_model", "sentence-transformers/all-MiniLM-L6-v2", *FAST])
    assert code == 0
    return reg, eval_file, split


def report(reg, version):
    return json.loads((reg / "qa" / "reports" / f"{version}.json").read_text())


def test_first_version_is_published_and_never_trained_on_eval_passages(registry):
    reg, _, split = registry
    assert latest_version(reg, "qa") == "v0001"
    first = report(reg, "v0001")
    assert first["promoted"] and first["current"] is None
    assert first["training"]["excluded_eval_passage_pairs"] == len(split.eval)
    manifest = open_bundle(reg, "qa").manifest
    assert manifest["torch"]  # weights to continue from
    # The hybrid search's α travels with the published bundle, chosen on the fixed evaluation set.
    questions = len({r.question for r in split.eval})
    assert manifest["fusion"]["chosen_on"] == f"eval data: fixed_eval.jsonl ({questions} questions)"
    assert 0.0 <= manifest["fusion"]["alpha"] <= 1.0 and len(manifest["fusion"]["mrr@10_by_alpha"]) == 11
    assert first["fusion"] == manifest["fusion"]


def test_feedback_candidate_passes_worse_candidate_is_rejected_and_rollback_works(registry, tmp_path):
    reg, eval_file, split = registry
    # Feedback: users' own wordings of questions about training passages.
    feedback = write_jsonl(tmp_path / "feedback.jsonl",
                           [(f"Şunu merak ediyorum: {r.question}", r.positive) for r in split.train[:20]])
    assert retrain_cli(["--registry", str(reg), "--name", "qa", "--data",
                       str(EXAMPLES / "example_qa_data.json"), "--feedback", feedback, "--eval_data", eval_file,
                       "--tolerance", "0.02", *FAST]) == 0
    second = report(reg, "v0002")
    assert second["promoted"] and second["current"] == "v0001"
    assert second["training"]["started_from"].endswith("v0001/torch")
    assert latest_version(reg, "qa") == "v0002"

    # A deliberately worse candidate: every question paired with a wrong (shuffled) answer, trained hard.
    train = list(split.train)
    answers = [r.positive for r in train]
    random.Random(0).shuffle(answers)
    shuffled = write_jsonl(tmp_path / "shuffled.jsonl", [(r.question, a) for r, a in zip(train, answers)])
    assert retrain_cli(["--registry", str(reg), "--name", "qa", "--data", shuffled,
                       "--eval_data", eval_file, "--from", "current", "--epochs", "4", "--learning_rate", "3e-4",
                       "--warmup_steps", "0", "--max_seq_length", "48", "--tolerance", "0.01",
                       "--variants", "onnx", "--variant", "onnx"]) == 0
    third = report(reg, "v0003")
    assert not third["promoted"], third["reason"]
    assert third["metrics"]["candidate"]["mrr@10"] < third["metrics"]["current"]["mrr@10"] - 0.01
    assert latest_version(reg, "qa") == "v0002"  # the service stays on v0002

    assert export_cli(["rollback", "--registry", str(reg), "--name", "qa"]) == 0
    assert latest_version(reg, "qa") == "v0001"


def test_retrain_without_eval_data_or_base_is_a_clear_error(tmp_path, capsys):
    code = retrain_cli(["--registry", str(tmp_path), "--name", "qa", "--data",
                       str(EXAMPLES / "example_qa_data.json"), "--eval_data", str(tmp_path / "missing.jsonl")])
    assert code == 1
    assert "missing.jsonl: file not found" in capsys.readouterr().err


def test_export_retrain_is_an_alias_of_python_m_retrain(tmp_path):
    """Old invocations (``python -m export retrain``: CronJobs, scripts) run the retrain stage unchanged."""
    missing = str(tmp_path / "missing.jsonl")
    args = ["--registry", str(tmp_path), "--name", "qa", "--data", str(EXAMPLES / "example_qa_data.json"),
            "--eval_data", missing]
    for command in (["retrain"], ["export", "retrain"]):
        proc = subprocess.run([sys.executable, "-m", *command, *args], cwd=ROOT, capture_output=True, text=True,
                              timeout=120)
        assert (proc.returncode, proc.stdout) == (1, ""), proc.stderr
        assert proc.stderr.strip() == f"error: --eval_data: {missing}: file not found"
    proc = subprocess.run([sys.executable, "-m", "export", "retrain", "--help"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.startswith("usage: python -m retrain")
    assert "--feedback_url" in proc.stdout and "--tolerance" in proc.stdout


def test_feedback_url_fetches_and_explains_http_failures(tmp_path, monkeypatch):
    import http.server
    import threading

    from retrain.pipeline import RetrainError, fetch_feedback

    rows = '{"question": "q", "positive": "p", "negatives": ["n"]}\n'

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's naming
            authorised = self.headers.get("Authorization") == "Bearer admin-key"
            status, body = (200, rows if self.path == "/feedback/export" else "") if authorised else (401, "{}")
            self.send_response(status)
            self.end_headers()
            self.wfile.write(body.encode())

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}"
    try:
        monkeypatch.delenv("QAEMBED_ADMIN_API_KEY", raising=False)
        with pytest.raises(RetrainError, match="HTTP 401.*QAEMBED_ADMIN_API_KEY"):
            fetch_feedback(url + "/feedback/export", tmp_path / "f.jsonl", log=lambda _: None)
        monkeypatch.setenv("QAEMBED_ADMIN_API_KEY", "admin-key")
        assert fetch_feedback(url + "/feedback/export", tmp_path / "f.jsonl", log=lambda _: None) == [
            str(tmp_path / "f.jsonl")]
        assert load_qa_data([tmp_path / "f.jsonl"]).records[0].negatives == ("n",)
        assert fetch_feedback(url + "/none-yet", tmp_path / "g.jsonl", log=lambda _: None) == []
    finally:
        server.shutdown()
        server.server_close()  # refused at once (a listening socket nobody serves would hang until the timeout)
    with pytest.raises(RetrainError, match="feedback from http://127.0.0.1:"):
        fetch_feedback(url + "/feedback/export", tmp_path / "h.jsonl", log=lambda _: None)
