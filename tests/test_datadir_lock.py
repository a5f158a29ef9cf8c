"""One writer per data directory (service/storage/lock.py): the OS lock, who holds it, and the local
storage mode taking it. Two real servers on one directory: tests/test_service_durability.py."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from service.backends.base import ModelSpec
from service.settings import Settings
from service.storage.factory import open_storage
from service.storage.lock import DataDirLock, DataDirLocked, redacted

ROOT = Path(__file__).resolve().parents[1]

HOLD = ("import sys, time\n"
        "from service.storage.lock import DataDirLock\n"
        "DataDirLock(sys.argv[1]).acquire()\n"
        "print('held', flush=True)\n"
        "time.sleep(300)\n")


def test_a_lock_held_by_another_process_refuses_and_names_it_until_it_dies(tmp_path):
    data = tmp_path / "data"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(data), "--api_key", "hidden"], cwd=ROOT,
                              env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(DataDirLocked) as refused:
            DataDirLock(data).acquire()
        info = refused.value.holder
        assert info["pid"] == holder.pid and info["host"] == socket.gethostname() and info["started"]
        assert info["command"].endswith(f"{data} --api_key ***")
        message = str(refused.value)
        assert str(data / "LOCK") in message and f"pid {holder.pid} " in message and "hidden" not in message
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
    finally:
        holder.kill()
        holder.wait(10)
    assert json.loads((data / "LOCK").read_text())["pid"] == holder.pid  # the dead holder's file is still there
    with DataDirLock(data) as lock:
        assert lock.held and json.loads(lock.path.read_text())["pid"] == os.getpid()


def test_two_locks_in_one_process_conflict_and_release_frees_it(tmp_path):
    first = DataDirLock(tmp_path).acquire()
    assert first.acquire() is first  # taking a held lock again is a no-op, not a conflict with itself
    with pytest.raises(DataDirLocked, match="in use by another process"):
        DataDirLock(tmp_path).acquire()
    first.release()
    first.release()
    assert not first.held
    DataDirLock(tmp_path).acquire().release()


def test_secret_flags_are_blanked_in_the_recorded_command():
    argv = ["python", "-m", "service", "--api_key", "k1", "--admin_api_key=k2", "--milvus_token", "u:p",
            "--milvus_token_file", "/run/token", "--max_batch_tokens", "512", "--data_dir", "d"]
    assert redacted(argv) == ["python", "-m", "service", "--api_key", "***", "--admin_api_key=***",
                              "--milvus_token", "***", "--milvus_token_file", "/run/token",
                              "--max_batch_tokens", "512", "--data_dir", "d"]


def test_the_local_storage_holds_the_data_dir_until_closed(tmp_path):
    settings = Settings.build(registry=tmp_path, name="m", data_dir=tmp_path / "data")
    spec = ModelSpec("m", "v1", tmp_path / "tokenizer.json", 128, 4)
    storage = open_storage(settings, spec, lambda what: None)
    with pytest.raises(DataDirLocked):
        open_storage(settings, spec, lambda what: None)
    storage.close()
    open_storage(settings, spec, lambda what: None).close()
