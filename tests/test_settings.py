"""Settings: flags over environment over defaults, validation."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from service.settings import Settings, SettingsError


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
