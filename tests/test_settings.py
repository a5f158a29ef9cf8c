"""Settings: flags over environment over defaults, validation."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest

from service.settings import ENV_PREFIX, TABLE_BEGIN, TABLE_END, Settings, SettingsError, unknown_variables

ROOT = Path(__file__).resolve().parents[1]


def test_settings_flags_over_env_over_defaults():
    env = {"QAEMBED_PORT": "9001", "QAEMBED_API_KEY": "k-secret1, k-secret2", "QAEMBED_MAX_WAIT_MS": "5",
           "QAEMBED_REGISTRY": "/r", "QAEMBED_NAME": "qa"}
    s = Settings.from_sources(["--port", "9002"], env={**env, "QAEMBED_INFERENCE_WORKERS": "3"})
    assert s.inference_workers == 3
    assert s.port == 9002 and s.max_wait_ms == 5.0 and s.api_key == ("k-secret1", "k-secret2")
    assert s.registry == Path("/r") and s.name == "qa" and s.host == "127.0.0.1"
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.port = 1  # type: ignore[misc]
    assert "k-secret" not in repr(s) and s.public()["api_key"] is True


@pytest.mark.parametrize("env", [{"QAEMBED_PORT": "x"}, {"QAEMBED_MAX_INPUTS": "0"},
                                 {"QAEMBED_INDEX": "nope"}, {"QAEMBED_MAX_INPUTS": "5000"},
                                 {"QAEMBED_INFERENCE_WORKERS": "-1"}])
def test_settings_reject_bad_values(env):
    with pytest.raises(SettingsError):
        Settings.from_sources([], env=env)


def test_settings_require_model():
    with pytest.raises(SettingsError, match="--registry"):
        Settings.from_sources([], env={}).require_model()


def test_a_variable_that_is_no_setting_is_named_with_the_closest_one():
    env = {"QAEMBED_API_KEYS": "k-secret", "QAEMBED_PORT": "9000", "QAEMBED_ZZQX": "1", "OTHER_API_KEYS": "x"}
    assert unknown_variables(env) == ["QAEMBED_API_KEYS is not a setting (did you mean QAEMBED_API_KEY?)",
                                      "QAEMBED_ZZQX is not a setting"]
    assert Settings.from_sources([], env=env).port == 9000  # without --strict_env: built, the caller warns
    for argv, strict_env in ((["--strict_env"], {}), ([], {"QAEMBED_STRICT_ENV": "true"})):
        with pytest.raises(SettingsError, match=r"QAEMBED_API_KEYS is not a setting \(did you mean QAEMBED_API_KEY\?"):
            Settings.from_sources(argv, env={**env, **strict_env})
    assert Settings.from_sources(["--strict_env", "false"], env=env).strict_env is False
    assert Settings.from_sources(["--strict_env"], env={"QAEMBED_PORT": "9000"}).strict_env is True


def run_service(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    """``python -m service`` on an empty registry (its start fails at the model, after the settings)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("QAEMBED_")}
    return subprocess.run([sys.executable, "-m", "service", "--registry", str(tmp_path), "--name", "none",
                           "--port", "0"], env={**clean, **env}, capture_output=True, text=True, timeout=120,
                          cwd=ROOT)


def test_the_service_warns_about_a_misspelt_variable_and_with_strict_env_refuses_to_start(tmp_path):
    warned = run_service(tmp_path, QAEMBED_API_KEYS="k-secret")
    assert warned.returncode == 1, warned.stderr  # started, then no model in the registry
    assert "QAEMBED_API_KEYS is not a setting (did you mean QAEMBED_API_KEY?); it is ignored" in warned.stderr
    assert "settings other than the defaults: registry=" in warned.stderr and "Settings(" not in warned.stderr
    refused = run_service(tmp_path, QAEMBED_API_KEYS="k-secret", QAEMBED_STRICT_ENV="1")
    assert refused.returncode == 2 and refused.stderr.startswith("error: QAEMBED_API_KEYS is not a setting (did you "
                                                                 "mean QAEMBED_API_KEY?)"), refused.stderr
    assert "k-secret" not in warned.stderr + refused.stderr


def test_operations_doc_lists_every_setting_as_the_code_defines_it():
    table = Settings.table()
    doc = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    assert f"{TABLE_BEGIN}\n{table}{TABLE_END}" in doc, "docs/operations.md is out of date: run `make settings-table`"
    rows = [line.split(" | ") for line in table.splitlines()[2:]]
    flags = [row[0].strip("|` -") for row in rows]
    assert sorted(flags) == sorted(f.name for f in dataclasses.fields(Settings))
    assert [row[1].strip("`") for row in rows] == [ENV_PREFIX + flag.upper() for flag in flags]
    assert all(row[3].strip(" |") for row in rows), "every setting needs a help text: its meaning in the table"
    assert "| `--port` | `QAEMBED_PORT` | `8000` | listen port |" in table
