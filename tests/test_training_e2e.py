"""`python -m training` end to end on the bundled MiniLM: real training, real outputs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import EXAMPLES, ROOT

FAST = ["--model_name", "sentence-transformers/all-MiniLM-L6-v2", "--max_seq_length", "48", "--warmup_steps", "2"]


def run_training(*args, check=True, timeout=600):
    proc = subprocess.run([sys.executable, "-m", "training", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("train") / "model"
    proc = run_training("--data_path", str(EXAMPLES / "example_qa_data.json"), "--output_dir", str(out),
                        "--epochs", "1", "--batch_size", "16", *FAST)
    return out, proc


def test_training_writes_a_loadable_model_with_metrics(trained):
    out, proc = trained
    from sentence_transformers import SentenceTransformer

    metrics = json.loads((out / "metrics.json").read_text())
    for side in ("base", "finetuned"):
        assert set(metrics[side]) == {"accuracy@1", "accuracy@3", "accuracy@10", "mrr@10", "ndcg@10", "recall@10"}
        assert 0.0 < metrics[side]["mrr@10"] <= 1.0
    data = metrics["data"]
    assert data["pairs"] == data["train_pairs"] + data["eval_pairs"] >= 60
    assert data["negatives_per_question"] == 3  # auto-mined by default
    assert metrics["config"]["preset"] == "turkish-bert" and metrics["config"]["learning_rate"] == 2e-5
    # FAST's --warmup_steps 2 is over 10 % of this small run: kept, with a warning in the log and in metrics.json
    assert metrics["training"]["warmup_steps"] == 2 and "warning: --warmup_steps 2 is over 10 %" in proc.stdout
    assert metrics["training"]["warmup_note"].startswith("warning: --warmup_steps 2 is over 10 % of the run's")
    for name in ("README.md", "loss.png", "compare.png", "eval_data.jsonl"):
        assert (out / name).stat().st_size > 0
    assert "mrr@10" in (out / "README.md").read_text()
    assert not Path(f"{out}.partial").exists()
    model = SentenceTransformer(str(out))
    assert model.encode(["Python nedir?"]).shape == (1, 384)
    assert "Split by passage" in proc.stdout and "mrr@10" in proc.stdout


def test_test_only_and_compare_on_the_saved_model(trained):
    out, _ = trained
    proc = run_training("--output_dir", str(out), "--test_only", "--samples", "2")
    assert "Sample questions" in proc.stdout and proc.stdout.count("Q: ") == 2
    proc = run_training("--output_dir", str(out), "--compare", "--data_path", str(EXAMPLES / "example_qa_data.csv"))
    header = next(line for line in proc.stdout.splitlines() if line.startswith("metric"))
    assert header.split() == ["metric", "bm25", "base", "fine-tuned", "hybrid", "gain"]
    assert "84 questions" in proc.stdout


def test_test_only_without_the_base_model_still_reports_the_fine_tuned_one(tmp_path, minilm_path, capsys):
    from training.cli import main

    model = tmp_path / "model"  # a saved model whose base is a hub id that cannot be reached offline
    model.mkdir()
    for item in minilm_path.iterdir():
        (model / item.name).symlink_to(item)
    (model / "metrics.json").write_text(json.dumps({"config": {
        "model_name": "dbmdz/bert-base-turkish-cased", "pooling_mode": "mean", "max_seq_length": 48}}))
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"question": f"Soru {i}?", "answer": f"Cevap {i}."}) + "\n" for i in range(3)))
    assert main(["--output_dir", str(model), "--data_path", str(data), "--test_only", "--samples", "1"]) == 0
    out = capsys.readouterr().out
    note = next(line for line in out.splitlines() if line.startswith("note: the base model is not shown"))
    assert "dbmdz/bert-base-turkish-cased" in note and "sentence-transformers/all-MiniLM-L6-v2" in note
    assert "mrr@10" in out and "Sample questions" in out
    assert main(["--output_dir", str(model), "--data_path", str(data), "--compare"]) == 2  # compare needs the base
    assert "cannot load 'dbmdz/bert-base-turkish-cased'" in capsys.readouterr().err


def test_output_dir_that_is_not_a_model_folder_is_refused_before_anything_runs(tmp_path):
    from training.pipeline import MODEL_FOLDER_FILES, check_output_dir

    models = tmp_path / "models"  # e.g. --output_dir ./models: replacing it would delete every model in it
    (models / "other-model").mkdir(parents=True)
    (models / "other-model" / "model.safetensors").write_bytes(b"weights")
    proc = run_training("--data_path", str(EXAMPLES / "example_qa_data.json"), "--output_dir", str(models), *FAST,
                        check=False)
    assert proc.returncode == 2 and "is not a model folder written by python -m training" in proc.stderr
    assert "Traceback" not in proc.stderr and "Data:" not in proc.stdout  # refused before the model was loaded
    assert (models / "other-model" / "model.safetensors").read_bytes() == b"weights"
    assert not Path(f"{models}.partial").exists()
    previous = tmp_path / "previous"  # a previous run's output may be replaced
    previous.mkdir()
    for name in MODEL_FOLDER_FILES:
        (previous / name).write_text("{}")
    check_output_dir(previous)
    check_output_dir(tmp_path / "new")
    (tmp_path / "empty").mkdir()
    check_output_dir(tmp_path / "empty")


def test_bad_data_fails_fast_and_writes_nothing(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "S", "answer": "C"}\n{"question": "S2"}\n', encoding="utf-8")
    out = tmp_path / "model"
    proc = run_training("--data_path", str(bad), "--output_dir", str(out), check=False)
    assert proc.returncode == 2
    assert f"{bad}:2: missing field 'answer'" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists() and not Path(f"{out}.partial").exists()


def test_unreachable_hub_model_suggests_the_bundled_one(tmp_path):
    proc = run_training("--data_path", str(EXAMPLES / "example_qa_data.json"), "--output_dir", str(tmp_path / "m"),
                        "--preset", "bge", check=False)
    assert proc.returncode == 2
    assert "BAAI/bge-m3" in proc.stderr and "sentence-transformers/all-MiniLM-L6-v2" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_bad_flag_values_are_user_errors(tmp_path):
    proc = run_training("--data_path", str(EXAMPLES / "example_qa_data.json"), "--train_split", "1.5", check=False)
    assert proc.returncode == 2 and "--train_split must be in (0, 1]" in proc.stderr


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--negatives_range_max", "0"], "--negatives_range_max must be at least 1, got 0"),
        (["--negatives_range_min", "-1"], "--negatives_range_min must be at least 0 and below --negatives_range_max"),
        (["--negatives_range_min", "50", "--negatives_range_max", "10"],
         "--negatives_range_min must be at least 0 and below --negatives_range_max 10, got 50"),
        (["--negatives_margin", "-0.1"], "--negatives_margin must be in [0, 1), got -0.1"),
        (["--negatives_margin", "nan"], "--negatives_margin must be in [0, 1), got nan"),
        (["--mini_batch_size", "0"], "--mini_batch_size must be at least 1, got 0"),
    ],
)
def test_bad_mining_and_loss_flags_are_refused_up_front(tmp_path, capsys, flags, message):
    from training.cli import main

    # A missing data file too: the flags are refused before data (let alone a model) is loaded.
    assert main(["--data_path", str(tmp_path / "missing.json"), "--output_dir", str(tmp_path / "m"), *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {message}") and err.count("\n") == 1
    assert not (tmp_path / "m").exists()


def test_interrupted_run_resumes_from_its_checkpoint(tmp_path):
    """bge preset + explicit negatives + cached MNRL, interrupted after epoch 1, then --resume."""
    out = tmp_path / "model"
    args = ["--preset", "bge", "--data_path", str(EXAMPLES / "example_qa_data_with_negatives.json"),
            "--output_dir", str(out), "--epochs", "2", "--batch_size", "8", "--loss", "cached_mnrl",
            "--mini_batch_size", "4", *FAST]
    # A shell without job control starts background jobs with SIGINT ignored, and Python then never turns
    # it into KeyboardInterrupt: give the child the default handler, as a terminal's Ctrl-C would find it.
    proc = subprocess.Popen([sys.executable, "-m", "training", *args], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**os.environ, "HF_HUB_OFFLINE": "1"},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    checkpoints = Path(f"{out}.partial") / "checkpoints"
    deadline = time.monotonic() + 300
    while not list(checkpoints.glob("checkpoint-*/trainer_state.json")):
        assert proc.poll() is None, "training ended before its first checkpoint"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) != 0
    assert not out.exists()
    first = sorted(checkpoints.glob("checkpoint-*"))[0].name

    run_training(*args, "--resume")
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["training"]["resumed_from"] == first
    assert metrics["config"]["pooling_mode"] == "cls"
    assert metrics["data"]["explicit_negatives"] > 0
    prompts = json.loads((out / "config_sentence_transformers.json").read_text())["prompts"]
    assert prompts["query"].startswith("Represent this sentence") and prompts["document"] == ""


def test_two_process_ddp_under_torchrun_trains_and_only_rank_0_writes(tmp_path):
    # Two CPU processes (gloo): the DDP code path as on a multi-GPU node, in-batch negatives gathered
    # across processes. Small batches: this data has 32 passages and a batch never repeats one.
    out = tmp_path / "ddp"
    torchrun = Path(sys.executable).with_name("torchrun")
    proc = subprocess.run(
        [str(torchrun), "--nproc_per_node", "2", "-m", "training", "--model_name", "all-MiniLM-L6-v2",
         "--data_path", str(EXAMPLES / "example_qa_data.json"), "--output_dir", str(out), "--epochs", "1",
         "--batch_size", "4", "--num_negatives", "1", "--warmup_steps", "0", "--max_seq_length", "48"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["training"]["steps"] > 0 and metrics["finetuned"]["mrr@10"] > 0
    assert proc.stdout.count("Model saved to") == 1  # rank 1 trains but never writes
    assert not list(tmp_path.glob("ddp.partial*")) and (out / "model.safetensors").is_file()
