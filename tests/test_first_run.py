"""First run (issue 16 items 10-12): the demo's port choice, the bundled model by its hub name in every command,
a warm-up that fits the run."""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT
from training.config import TrainingConfig, plan_warmup
from training.data import QARecord

_spec = importlib.util.spec_from_file_location("pick_port", ROOT / "scripts" / "pick_port.py")
pick_port = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(pick_port)


def listener(host: str) -> socket.socket:
    sock = socket.socket()
    sock.bind((host, 0))
    sock.listen()
    return sock


def run_pick_port(*args: str) -> subprocess.CompletedProcess:
    """The helper as scripts/demo.sh runs it."""
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "pick_port.py"), *args], capture_output=True,
                          text=True, timeout=60)


@pytest.mark.parametrize("host", ["127.0.0.1", "0.0.0.0"])
def test_the_demo_serves_on_the_next_free_port_when_its_port_is_taken(host):
    with listener(host) as other:  # another server on the demo's port, on loopback or on every interface
        taken = other.getsockname()[1]
        assert not pick_port.is_free(taken)
        chosen = run_pick_port(str(taken))
        assert chosen.returncode == 0 and int(chosen.stdout) > taken, chosen.stderr
        assert chosen.stderr == f"port {taken} is taken by another program: using {int(chosen.stdout)} instead\n"
        exact = run_pick_port(str(taken), "--exact")  # PORT=... given: that port or a clear stop
        assert (exact.returncode, exact.stdout) == (1, "")
        assert exact.stderr == f"error: port {taken} on 127.0.0.1 is taken by another program: stop it or choose " \
                               "another PORT=...\n"
    free = run_pick_port(str(taken), "--exact")  # the other server is gone: the port asked for, silently
    assert (free.returncode, free.stdout, free.stderr) == (0, f"{taken}\n", "")


def test_the_bundled_model_exports_offline_by_its_hub_name(tmp_path):
    """`python -m training` takes sentence-transformers/all-MiniLM-L6-v2 offline; `python -m export` must too, and
    say what its gates decided without the tracer's and onnxruntime's noise."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "export", "--model_dir", "sentence-transformers/all-MiniLM-L6-v2",
                           "--registry", str(tmp_path), "--name", "minilm", "--threads", "1"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    *_, verdict, fusion, path = proc.stdout.splitlines()
    assert Path(path) == tmp_path / "minilm" / "v0001" and (Path(path) / "model.onnx").is_file()
    assert fusion == "fusion: none recorded (no metrics.json fusion, no --eval_data): the service uses its default α"
    assert verdict.startswith("gates passed: parity (onnx 1.0000, onnx-optimized 1.0000, int8 0.9")
    assert "TracerWarning" not in proc.stderr and "pre-processing" not in proc.stderr, proc.stderr
    assert verdict.endswith("quality not checked (no --eval_data)")
    manifest = json.loads((Path(path) / "manifest.json").read_text())
    assert manifest["dimension"] == 384 and manifest["pooling"] == "mean"


def test_the_default_warmup_is_capped_at_a_tenth_of_the_run_and_an_explicit_one_is_kept_with_a_warning():
    assert plan_warmup(None, 37) == (3, "warm-up capped at 3 steps, 10 % of the run's 37 training steps (the "
                                        "default is 100; set --warmup_steps to choose)")
    assert plan_warmup(None, 1000) == (100, None) and plan_warmup(None, 5) == (0, plan_warmup(None, 5).note)
    assert plan_warmup(3, 37) == (3, None) and plan_warmup(0, 5) == (0, None)
    assert plan_warmup(10, 37) == (10, "warning: --warmup_steps 10 is over 10 % of the run's 37 training steps: its "
                                       "first 10 steps train below --learning_rate (kept, as given)")
    assert plan_warmup(100, 37).note.endswith("the learning rate never reaches --learning_rate (kept, as given)")


@pytest.mark.parametrize("requested, steps, note", [
    (None, 5, "warm-up capped at 5 steps, 10 % of the run's 50 training steps"),
    (20, 20, "warning: --warmup_steps 20 is over 10 % of the run's 50 training steps"),
])
def test_the_trainer_gets_the_planned_warmup(requested, steps, note, tmp_path, minilm_path, capsys):
    from training.finetune import build_trainer
    from training.models import load_base_model

    records = [QARecord(f"soru {i}?", f"cevap {i}.") for i in range(20)]  # batch 4: 5 steps an epoch, 10 epochs
    config = TrainingConfig(epochs=10, batch_size=4, warmup_steps=requested, hard_negatives=False)
    trainer = build_trainer(load_base_model(str(minilm_path)), records, None, config, tmp_path / "ckpt")
    assert trainer.args.warmup_steps == steps
    assert note in capsys.readouterr().out  # the log says so
